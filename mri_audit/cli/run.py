"""``mri-audit run``: audit one or more models and write records, results and the report."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from mri_audit.cli.settings import checked, config_option, setting_options
from mri_audit.errors import UsageError
from mri_audit.settings import RUN

logger = logging.getLogger(__name__)

EXIT_ATTACK_RATE = 3
DEFAULT_OUT = "mri-audit-report"
MODELS_KEY = "mri_audit.models"  # the [[models]] tables of --config, in ctx.meta


def _tables() -> dict:
    """``[[models]]`` tables of ``--config``."""
    from mri_audit.models.entries import entries_from_config

    return {"models": entries_from_config}


def _parse_attack_params(values, attacks) -> dict[str, dict]:
    import ast

    out: dict[str, dict] = {}
    for v in values:
        name, _, rest = v.partition(".")
        key, eq, raw = rest.partition("=")
        if not (name and key and eq):
            raise UsageError(f"--attack-param needs ATTACK.KEY=VALUE, got {v!r}")
        if name not in attacks:
            raise UsageError(f"--attack-param {v!r}: {name!r} is not among --attacks")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out.setdefault(name, {})[key.replace("-", "_")] = value
    return out


@click.command("run")
@config_option("run", tables=_tables)
@setting_options(RUN)
def run(**opts) -> None:
    """Audit a reconstruction model for false negatives with FNAF attacks.

    Writes records.jsonl (as it goes), records.csv, results.json and report.html to --out.
    Without --data the built-in synthetic phantoms are used.
    """
    from mri_audit.cli import command_line
    from mri_audit.cli.run_impl import execute
    from mri_audit.models.entries import model_entries

    opts = checked(RUN, opts)
    opts["models"] = model_entries(opts, click.get_current_context().meta.get(MODELS_KEY))
    opts["attacks"] = opts.pop("attack_list")
    opts["attack_options"] = _parse_attack_params(opts.pop("attack_params"), opts["attacks"])
    opts["out"] = Path(opts["out"])
    code = execute(opts, command_line=command_line())
    if code:
        sys.exit(code)
