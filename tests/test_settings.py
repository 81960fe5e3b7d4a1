"""One validation layer: every setting of every command, a bad value of each kind, through every
entry point (the flag, the ``--config`` key, the library's keyword argument), gets the same
one-line error, and no traceback.

The bad values are made from the catalogue (``mri_audit.settings``) by kind: the wrong type, out
of range, NaN and infinity, and a value where the setting does not apply (it would be silently
ignored). The messages are pinned by hand for the cases the red-team pass found.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner

import mri_audit
from mri_audit.cli import cli
from mri_audit.errors import UsageError
from mri_audit.settings import COMMANDS, RUN, Setting, check_settings, check_value

ROOT = Path(__file__).resolve().parents[1]
MODEL = str(ROOT / "examples" / "zero_filled.py") + ":ZeroFilled"


# Where a setting does not apply: (the other settings, a value of its own that it would ignore).
NOT_APPLICABLE = {
    ("run", "margin"): ({"criterion": "paper"}, 0.2),
    ("run", "min_recovery"): ({}, 0.3),
    ("run", "threshold"): ({"criterion": "recovery"}, 0.01),
    ("run", "ip_epsilon"): ({}, 0.01),
    ("run", "feature_steps"): ({"feature": "disk"}, 5),
    ("run", "feature_size"): ({}, 4.0),
    ("run", "feature_width"): ({"feature": "disk"}, 2.0),
    ("map", "line_width"): ({"shapes": "walk,disk"}, 2.0),
    ("harden", "margin"): ({"criterion": "recovery"}, 0.2),
    ("harden", "report_out"): ({"no_report": True}, "after"),
    ("verify", "nonce"): ({}, "abc"),
    ("verify", "data"): ({}, "data/"),
}


def _bad_values(s: Setting) -> list[tuple[str, object]]:
    """(kind of fault, value) for one setting, native values (TOML and Python can hold them)."""
    out: list[tuple[str, object]] = []
    if s.kind in ("int", "float"):
        out.append(("type", "x"))
        if s.kind == "int":
            out.append(("type", 1.5))
        else:
            out += [("nan", math.nan), ("inf", math.inf)]
        if s.low is not None:
            out.append(("range", s.low - 1 if s.kind == "int" else s.low - 0.5))
        if s.high is not None:
            out.append(("range", s.high + 1))
    elif s.kind == "choice":
        out += [("type", 3), ("range", "nope")]
    elif s.kind == "flag":
        out.append(("type", "yes"))
    elif s.kind == "batch":
        out += [("range", 0), ("type", 2.5)]
    elif s.kind == "steps":
        out += [("range", 0), ("range", "5-2"), ("type", 2.5)]
    elif s.kind == "names":
        out += [("type", 3), ("range", "")]
    else:  # text, path
        out.append(("type", 3))
    return out


def _text(value: object) -> str | None:
    """How the value is written on the command line (None: a flag cannot carry it)."""
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        return None
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return str(value)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return repr(value)


REPLAY_OPTIONS = {("verify", n) for n in ("nonce", "models", "weights", "data")}


def _cases() -> list:
    cases = []
    for command, settings in COMMANDS.items():
        if command == "check":  # no --config; its settings are run's, tested there
            continue
        for s in settings:
            if not s.cli:
                continue
            # verify's replay options apply with --replay only: their bad values are checked
            # beside it.
            needs = {"replay": 1} if (command, s.name) in REPLAY_OPTIONS else {}
            for fault, value in _bad_values(s):
                cases.append(
                    pytest.param(command, s, needs, value, id=f"{command}-{s.name}-{fault}")
                )
            if (command, s.name) in NOT_APPLICABLE:
                others, value = NOT_APPLICABLE[command, s.name]
                cases.append(
                    pytest.param(command, s, others, value, id=f"{command}-{s.name}-inapplicable")
                )
    return cases


def _setting(command: str, name: str) -> Setting:
    return next(s for s in COMMANDS[command] if s.name == name and s.cli)


def _base(command: str, tmp_path: Path) -> list[str]:
    """The least a command needs besides the setting under test."""
    if command in ("report", "verify"):
        return [command, str(tmp_path / "audit")]
    base = [command, "--model", MODEL]
    if command == "harden":
        base += ["--out", str(tmp_path / "robust.pt")]
    if command in ("run", "map"):
        base += ["--out", str(tmp_path / "out")]
    return base


def _expected(command: str, values: dict, *, text: bool) -> str | None:
    """The one line the library's check gives for these values (None: they pass)."""
    required = {"map": {"model": MODEL}, "harden": {"model": MODEL, "out": "robust.pt"}}
    values = {**required.get(command, {}), **values}
    by_dest = {_setting(command, n).dest: v for n, v in values.items()}
    try:
        check_settings(COMMANDS[command], by_dest, by="dest", text=text)
    except UsageError as err:
        return str(err)
    return None


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0][len("Error: ") :]


@pytest.mark.parametrize("command, setting, others, value", _cases())
def test_bad_value_same_error_from_flag_config_and_api(
    command, setting, others, value, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    native = {**others, setting.name: value}
    expected = _expected(command, native, text=False)
    assert expected is not None and setting.flag in expected and "\n" not in expected
    # 1. the flag (where the command line can carry the value)
    written = {n: v if isinstance(v, bool) else _text(v) for n, v in native.items()}
    if None not in written.values() and not (setting.kind == "flag"):
        from_text = _expected(command, written, text=True)
        if from_text is not None:  # a flag's text: "3" is a fine model spec
            args = []
            for name, text in written.items():
                flag = _setting(command, name)
                args += [flag.flag] if flag.kind == "flag" else [flag.flag, text]
            line = _one_error_line(runner.invoke(cli, [*_base(command, tmp_path), *args]))
            assert line == from_text
            assert from_text.replace("'", "") == expected.replace("'", "")  # quotes aside
    # 2. the config key
    cfg = tmp_path / "c.toml"
    body = [f"{_setting(command, n).key} = {_toml(v)}" for n, v in native.items()]
    cfg.write_text("\n".join(body) + "\n")
    line = _one_error_line(runner.invoke(cli, [*_base(command, tmp_path), "--config", str(cfg)]))
    if line.startswith("config key"):
        assert line.endswith(": " + expected) and str(cfg) in line, (line, expected)
    else:  # each key was fine alone; together they are not (a setting that does not apply)
        assert line == expected
    # 3. the library
    if command == "run" and setting.api and setting.name != "model":
        with pytest.raises(UsageError) as info:
            mri_audit.audit(MODEL, **native)
        assert str(info.value) == expected


def test_fnaf_settings_without_a_fnaf_attack_are_refused(tmp_path):
    with pytest.raises(UsageError, match="--candidates applies to FNAF attacks, but --attacks"):
        mri_audit.audit(MODEL, attacks=("kspace-pgd",), candidates=5, max_volumes=1)
    result = CliRunner().invoke(
        cli, ["run", "--model", MODEL, "--attacks", "kspace-pgd", "--feature", "disk"]
    )
    assert result.exit_code == 2 and "--feature applies to FNAF attacks" in result.output


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_attack_rate": 20}, "--max-attack-rate must be a number in [0, 1] (a fraction"),
        ({"max_attack_rate": 2.0}, "got 2.0"),
        ({"max_attack_rate": math.nan}, "got nan"),
        ({"accel": "4"}, "--accel must be a number >= 1"),
        ({"accel": math.nan}, "--accel must be a number >= 1"),
        ({"max_slices": 0}, "--max-slices must be an integer >= 1, got 0"),
        ({"seed": "x"}, "--seed must be an integer in [0, 4294967295], got 'x'"),
        ({"seed": -1}, "--seed must be an integer in [0, 4294967295], got -1"),
        ({"attacks": ()}, "--attacks must be at least one name"),
        ({"device": 3}, "--device must be a string"),
        ({"out": 3}, "--out must be a path, got 3"),
        ({"progress": "yes"}, "--progress must be true or false"),
    ],
)
def test_the_red_team_cases_are_one_line_usage_errors(kwargs, message):
    """The API cases of issue 24: each a UsageError (exit 2) naming the setting."""
    with pytest.raises(UsageError) as info:
        mri_audit.audit(MODEL, **kwargs)
    assert message in str(info.value) and info.value.exit_code == 2


def test_one_attack_name_as_a_string_is_one_attack():
    assert check_settings(RUN, {"attacks": "fnaf-rs"})["attacks"] == ("fnaf-rs",)
    assert check_settings(RUN, {"attacks": ["fnaf-rs", "fnaf-pgd"]})["attacks"] == (
        "fnaf-rs",
        "fnaf-pgd",
    )


def test_every_setting_is_described():
    """Help, a known kind, a default of its own kind, unique flags per entry point."""
    for command, settings in COMMANDS.items():
        for entry in ("cli", "api"):
            names = [s.flag for s in settings if getattr(s, entry)]
            assert len(names) == len(set(names)), (command, entry)
        for s in settings:
            assert s.help and s.flag.startswith("--"), s
            if s.default is not None:
                check_value(s, s.default, text=True)  # every default passes its own check


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"margin": 1.5},
            "--margin must be a number in (0, 1] (a share of the feature's contrast)",
        ),
        ({"margin": math.nan}, "--margin must be a number in (0, 1]"),
        ({"threshold": -1}, "--threshold must be a number >= 0, got -1"),
        ({"name": "nope"}, "--criterion must be one of 'erasure', 'recovery', 'paper', got 'nope'"),
        ({"out_path": 3}, "--out must be a path, got 3"),
    ],
)
def test_report_keywords_are_checked_like_its_flags(tmp_path, kwargs, message):
    """``reread_audit`` (the library behind `mri-audit report`) takes the same checks, before
    it reads anything (the results file here does not exist)."""
    from mri_audit.audit.reread import reread_audit

    name = kwargs.pop("name", None)
    with pytest.raises(UsageError) as info:
        reread_audit(tmp_path / "missing", name, **kwargs)
    assert message in str(info.value)
