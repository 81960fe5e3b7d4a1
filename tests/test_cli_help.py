"""Every option of every command has a help text (`mri-audit COMMAND --help` explains it)."""

from __future__ import annotations

from collections.abc import Iterator

import click
from click.testing import CliRunner

from mri_audit.cli import cli

#: (command path, option) pairs known to lack a help text, to be filled in and removed from here.
KNOWN_WITHOUT_HELP: set[tuple[str, str]] = set()


def _options(command: click.Command, path: str) -> Iterator[tuple[str, click.Option]]:
    """Every visible option of ``command`` and, recursively, of its subcommands."""
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            yield path, param
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _options(sub, f"{path} {name}")


def _without_help() -> set[tuple[str, str]]:
    return {
        (path, max(option.opts, key=len))
        for path, option in _options(cli, "mri-audit")
        if not (option.help or "").strip()
    }


def test_the_walk_reaches_every_command():
    paths = {path for path, _ in _options(cli, "mri-audit")}
    assert {"mri-audit", "mri-audit run", "mri-audit harden", "mri-audit data info"} <= paths
    assert "mri-audit data synth" in paths


def test_every_option_has_a_help_text():
    missing = _without_help()
    new = sorted(missing - KNOWN_WITHOUT_HELP)
    assert not new, f"options without a help text: {new}"
    fixed = sorted(KNOWN_WITHOUT_HELP - missing)
    assert not fixed, f"these have a help text now: remove them from KNOWN_WITHOUT_HELP: {fixed}"


def test_harden_and_data_options_all_have_help():
    missing = {
        pair
        for pair in _without_help()
        if pair[0].startswith(("mri-audit harden", "mri-audit data"))
    }
    assert not missing
    result = CliRunner().invoke(cli, ["harden", "--help"])
    assert result.exit_code == 0
    for option in ("--center-fraction", "--mask", "--epochs", "--lr", "--seed", "--amp"):
        assert option in result.output
    assert "--keep-checkpoint" in result.output
