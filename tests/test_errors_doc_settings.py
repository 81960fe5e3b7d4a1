"""docs/errors.md, the rows of the validation layer: every example is run here, through the
command line, the ``--config`` file and the library (see :mod:`tests.errors_doc`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import mri_audit
from mri_audit.cli import cli
from mri_audit.errors import MriAuditError
from mri_audit.settings import RUN, check_settings
from tests.errors_doc import SCENARIOS, Outcome, cases, check_row, scenario

MODEL = str(Path(__file__).resolve().parents[1] / "examples" / "zero_filled.py") + ":ZeroFilled"


def _cli(*args: str) -> Outcome:
    result = CliRunner().invoke(cli, list(args), prog_name="mri-audit")
    return Outcome(result.exit_code, result.output)


def _run(*args: str) -> Outcome:
    return _cli("run", "--model", MODEL, "--out", "out", *args)


def _api(**kwargs) -> Outcome:
    model = kwargs.pop("model", MODEL)
    try:
        mri_audit.audit(model, **kwargs)
    except MriAuditError as err:
        return Outcome(err.exit_code, str(err))
    raise AssertionError(f"audit({kwargs}) did not refuse")


def _config(text: str, command: str = "run") -> Outcome:
    Path("audit.toml").write_text(text + "\n")
    extra = ["--out", "robust.pt"] if command == "harden" else []
    return _cli(command, "--model", MODEL, *extra, "--config", "audit.toml")


@scenario(
    "a value of the wrong type, out of range, `nan` or `inf`, for any setting of `run`, `map`, `harden`, `check` or `report`: the same line from the flag, the `--config` key and the library's keyword argument (`mri_audit.audit(..., margin=0)`)"  # noqa: E501
)
def _bad_values(tmp_path):
    flag = _run("--margin", "0")
    api = _api(margin=0)
    cfg = _config("margin = 0")
    assert api.output in flag.output.replace("'0'", "0") and cfg.output.endswith(api.output + "\n")
    return [
        flag,
        _cli("map", "--model", MODEL, "--max-slices", "0"),
        _api(max_slices=0),
        _cli("harden", "--model", MODEL, "--out", "r.pt", "--margin", "0"),
        _cli("check", "--model", MODEL, "--accel", "0"),
        _run("--criterion", "paper", "--threshold", "inf"),
        api,
        cfg,
    ]


@scenario(
    "`--max-attack-rate` as a percentage (`20` for 20%), here or in `mri_audit.audit(max_attack_rate=20)`"  # noqa: E501
)
def _percentage(tmp_path):
    return [_api(max_attack_rate=20), _run("--max-attack-rate", "20")]


@scenario(
    "a setting that would be silently ignored (a threshold of another criterion, a feature size for another shape, `harden --report-out` with `--no-report`, `map --line-width` without line features)"  # noqa: E501
)
def _ignored(tmp_path):
    return [
        _run("--threshold", "0.01"),
        _api(threshold=0.01),
        _run("--feature", "disk", "--feature-width", "2"),
        _cli("harden", "--model", MODEL, "--out", "r.pt", "--report-out", "a", "--no-report"),
        _cli("map", "--model", MODEL, "--shapes", "walk", "--line-width", "2"),
    ]


@scenario(
    "the library's own keyword arguments of the wrong type (`mri_audit.audit(42)`, `compare=3`, `model_args=5`, `attack_options=...`)"  # noqa: E501
)
def _keywords(tmp_path):
    return [
        _api(model=42),
        _api(compare=3),
        _api(model_args=5),
        _api(attacks="fnaf-rs", attack_options={"fnaf-pgd": {"steps": 2}}),
    ]


@scenario("`mri_audit.audit(attacks='fnaf-rs')` (one name as a string)")
def _one_attack(tmp_path):
    return [Outcome(None, repr(check_settings(RUN, {"attacks": "fnaf-rs"})["attacks"]))]


@scenario("`mri_audit.audit(resume=True)` without `out=`")
def _resume(tmp_path):
    return [_api(resume=True)]


@scenario("unknown option of a command, or an option without its value")
def _unknown(tmp_path):
    return [_run("--bogus"), _run("--margin")]


@scenario("`run`/`harden --criterion` unknown")
def _criterion(tmp_path):
    return [
        _run("--criterion", "loudest"),
        _cli("harden", "--model", MODEL, "--out", "r.pt", "--criterion", "loudest"),
    ]


@scenario("`--max-attack-rate` with no FNAF attack in `--attacks`")
def _no_fnaf(tmp_path):
    return [_run("--attacks", "kspace-pgd", "--max-attack-rate", "0.2", "--max-volumes", "1")]


@scenario("`--accel` below 1")
def _accel(tmp_path):
    return [_run("--accel", "0.5")]


@scenario("unknown attack")
def _unknown_attack(tmp_path):
    return [_run("--attacks", "fnaf-nope", "--max-volumes", "1")]


@scenario("bad `--attack-param`")
def _attack_param(tmp_path):
    base = ("--attacks", "fnaf-pgd", "--max-volumes", "1", "--max-slices", "1")
    return [
        _run(*base, "--attack-param", "fnaf-pgd.nope=1"),
        _run(*base, "--attack-param", "fnaf-pgd.steps=-1"),
    ]


@scenario("`--config` unknown key")
def _unknown_key(tmp_path):
    return [_config("nonsense_key = 1")]


@scenario("`--config` wrong type")
def _wrong_type(tmp_path):
    return [_config('candidates = "many"')]


@scenario("`--config` not TOML")
def _not_toml(tmp_path):
    return [_config("accel = = 4")]


@scenario("`--config` value `inf`, `-inf` or `nan` (any numeric key)")
def _config_inf(tmp_path):
    return [_config("threshold = inf"), _config("threshold = -inf"), _config("margin = nan")]


@scenario("`--config` TOML date or time")
def _config_date(tmp_path):
    return [_config("seed = 1979-05-27")]


@scenario("`--config` table or array where one value is expected")
def _config_table(tmp_path):
    Path("audit.toml").write_text('model = ["a.py:X"]\n')
    listed = _cli("run", "--config", "audit.toml")
    Path("audit.toml").write_text("model = {a = 1}\n")
    return [listed, _cli("run", "--config", "audit.toml")]


@scenario("`--config` number of the wrong kind (`seed = 1.5`, `resume = 1`, `out = 3`)")
def _config_kind(tmp_path):
    return [_config("seed = 1.5"), _config("resume = 1"), _config("out = 3")]


@scenario("`--config` with options in a table (`[run]`)")
def _config_section(tmp_path):
    return [_config("[run]\naccel = 8")]


@scenario(
    "`inf` or `nan` for a number option (`--threshold`, `--margin`, `--accel`, `--center-fraction`, `--lr`, ...)"  # noqa: E501
)
def _inf(tmp_path):
    outcomes = [_run("--criterion", "paper", "--threshold", "inf")]
    for flag in ("--margin", "--accel", "--center-fraction"):
        outcomes.append(_run(flag, "nan"))
    outcomes.append(_cli("harden", "--model", MODEL, "--out", "r.pt", "--lr", "inf"))
    return outcomes


@scenario("bad `--batch-size` (or `batch_size` in `--config`)")
def _batch(tmp_path):
    return [_run("--batch-size", "0"), _config("batch_size = 0")]


@scenario("bad `harden --interpolate`")
def _interpolate(tmp_path):
    return [_cli("harden", "--model", MODEL, "--out", "r.pt", "--interpolate", "-1")]


@scenario("`harden --recovery-target` without `--recovery`")
def _recovery_target(tmp_path):
    return [_cli("harden", "--model", MODEL, "--out", "r.pt", "--recovery-target", "data")]


@scenario("`harden` validating with an attack weaker than its training's")
def _weak_validation(tmp_path):
    base = ("harden", "--model", MODEL, "--out", "r.pt")
    return [
        _cli(*base, "--val-steps", "8"),
        _cli(*base, "--candidates", "20", "--val-candidates", "33"),
    ]


@scenario("`report --criterion` unknown")
def _report_criterion(tmp_path):
    return [_cli("report", "audit", "--criterion", "nope")]


@scenario("`report --margin` / `--min-recovery` / `--threshold` out of range")
def _report_range(tmp_path):
    return [
        _cli("report", "audit", "--margin", "1.5"),
        _cli("report", "audit", "--min-recovery", "0"),
        _cli("report", "audit", "--threshold", "-1"),
    ]


@scenario("`report` threshold of another criterion")
def _report_other(tmp_path):
    from tests.report_fixture import build_audit_folder

    folder = build_audit_folder(tmp_path / "audit")
    return [_cli("report", str(folder), "--criterion", "paper", "--margin", "0.2")]


@scenario("`--draws 0`, `--line-width 0`")
def _map_values(tmp_path):
    base = ("map", "--model", MODEL)
    return [_cli(*base, "--draws", "0"), _cli(*base, "--line-width", "0")]


@pytest.mark.parametrize("case", cases(__name__))
def test_documented(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_row(case, SCENARIOS[case](tmp_path))
