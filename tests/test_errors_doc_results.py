"""docs/errors.md, "Results files and the report": every row reproduced through the library
(``AuditResult.write``/``report``: the output is ``str(err)`` and the status ``err.exit_code``)
or the CLI.

One tiny audit (a blurring model ``blur.py:Blur`` with ``examples/zero_filled.py:ZeroFilled``
compared, one slice, ``fnaf-rs`` with 2 candidates) is made once, in memory; each scenario
writes it into its own folder ``out`` (in the test's working directory, so the documented names
are the real ones) and breaks what its row describes.
"""

from __future__ import annotations

import errno
import functools
import importlib
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

import mri_audit
from mri_audit.audit.result import AuditResult
from mri_audit.cli import cli
from mri_audit.errors import MriAuditError, write_failure
from tests.errors_doc import SCENARIOS, Outcome, cases, check_row, scenario

ROOT = Path(__file__).resolve().parents[1]
ZERO_FILLED = f"{ROOT}/examples/zero_filled.py:ZeroFilled"
BLUR = """
import torch
class Blur(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
"""
RESULT = "mri_audit.audit.result"


@functools.cache
def _audit() -> AuditResult:
    models = Path(tempfile.mkdtemp(prefix="mri-audit-doc-"))
    try:
        (models / "blur.py").write_text(BLUR)
        return mri_audit.audit(
            f"{models}/blur.py:Blur",
            compare=[ZERO_FILLED],
            max_volumes=1,
            max_slices=1,
            attacks=("fnaf-rs",),
            candidates=2,
        )
    finally:
        shutil.rmtree(models, ignore_errors=True)


def _written(tmp_path: Path) -> Path:
    out = Path("out")
    _audit().write(out)
    return out


def _raised(call, *args, **kwargs) -> Outcome:
    try:
        call(*args, **kwargs)
    except MriAuditError as err:
        return Outcome(err.exit_code, str(err))
    raise AssertionError(f"{call} raised nothing")


def _cli(*args) -> Outcome:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output
    return Outcome(result.exit_code, result.output)


def _results(out: Path, name: str = "results.json") -> dict:
    return json.loads((out / name).read_text())


def _boom(*args, **kwargs):
    raise ValueError("math domain error")


@scenario(
    "`write()` or `report()` into a folder holding another audit (another fingerprint, a map, or result files that name no audit)"  # noqa: E501
)
def _another_audit(tmp_path):
    out = _written(tmp_path)
    _audit().write(out)  # the same audit: written again
    lines = (out / "records.jsonl").read_text().splitlines(keepends=True)
    header = json.loads(lines[0]) | {"audit": "0" * 64}  # now another audit's folder
    (out / "records.jsonl").write_text(json.dumps(header) + "\n" + "".join(lines[1:]))
    (out / "results.json").write_text(json.dumps(_results(out) | {"audit": "0" * 64}))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    outcomes = [_raised(_audit().write, out), _raised(_audit().report, out / "report.html")]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    return outcomes


@scenario("`write(folder, force=True)`, `report(path, force=True)`")
def _force(tmp_path):
    out = Path("out")
    out.mkdir()
    for name in ("results.json", "results.paper.json", "report.paper.html", "map.csv"):
        (out / name).write_text(json.dumps({"schema_version": 2, "kind": "map"}))
    (out / ".report.html.1.tmp").write_text("")
    _audit().write(out, force=True)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["audit_images.npz", "records.csv", "records.jsonl", "report.html"] + [
        "results.json"
    ], names
    assert _results(out)["audit"] == _audit().fingerprint
    return [Outcome(None, "")]


@scenario(
    "an error of mri-audit while writing the final files or rendering the report, after the attacks (a figure or template that fails)"  # noqa: E501
)
def _render_failure(tmp_path):
    out = Path("out")
    with pytest.MonkeyPatch.context() as m:
        m.setattr("mri_audit.report.score_figures.score_histograms", _boom)
        rendering = _raised(_audit().write, out)
        again = _cli("report", out)  # the cause not fixed yet
    assert _results(out)["complete"] is False and not (out / "report.html").exists()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(f"{RESULT}.records_csv_text", _boom)
        writing = _raised(_audit().write, out)  # the same audit: written again
    return [rendering, again, writing]


@scenario(
    "an error of mri-audit while summarising the records, after the attacks (before any final file)"  # noqa: E501
)
def _summary_failure(tmp_path):
    args = ["--max-volumes", "1", "--max-slices", "1", "--attacks", "fnaf-rs", "--candidates", "2"]
    with pytest.MonkeyPatch.context() as m:
        m.setattr("mri_audit.audit.result.summarize_audit", _boom)
        failed = _cli("run", "--model", ZERO_FILLED, *args, "--out", "out", "--no-progress")
    assert (Path("out") / "records.jsonl").exists() and not (Path("out") / "results.json").exists()
    return [failed]


@scenario("disk full (or another I/O error) writing the final files after the attacks")
def _disk_full(tmp_path):
    out = Path("out")
    real = importlib.import_module(RESULT).atomic_write

    def disk_full(path, data):
        if Path(path).name == "report.html":
            raise write_failure(path, OSError(errno.ENOSPC, "full"), "report.html was not changed")
        return real(path, data)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(f"{RESULT}.atomic_write", disk_full)
        outcome = _raised(_audit().write, out)
    assert _results(out)["complete"] is False
    return [outcome]


@scenario("`mri-audit report AUDIT` (or `run --resume`) once the cause of such a failure is fixed")
def _finished(tmp_path):
    out = Path("out")
    with pytest.MonkeyPatch.context() as m:
        m.setattr("mri_audit.report.score_figures.recovery_scatter", _boom)
        _raised(_audit().write, out)
    records = (out / "records.jsonl").read_bytes()
    done = _cli("report", out)
    assert done.status == 0 and done.output.strip() == str(out / "report.html"), done.output
    assert _results(out)["complete"] is True and "failed" not in _results(out)
    assert (out / "records.jsonl").read_bytes() == records
    return [Outcome(None, done.output)]


@scenario("`report` of an audit whose final files failed before its report")
def _failed_before_report(tmp_path):
    out = Path("out")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(f"{RESULT}.records_csv_text", _boom)
        _raised(_audit().write, out)
    return [_cli("report", out)]


@scenario("a re-read (`report --criterion`) whose report fails")
def _reread_failure(tmp_path):
    out = _written(tmp_path)
    with pytest.MonkeyPatch.context() as m:
        m.setattr("mri_audit.report.score_figures.threshold_curves", _boom)
        outcome = _cli("report", out, "--criterion", "paper")
    assert _results(out, "results.paper.json")["complete"] is False
    return [outcome]


@scenario("`report` of a re-read whose report was not written")
def _incomplete_reread(tmp_path):
    out = _written(tmp_path)
    reread = _results(out) | {"reread_from": "erasure", "complete": False}
    reread["config"] = reread["config"] | {"criterion": "paper"}
    (out / "results.paper.json").write_text(json.dumps(reread))
    return [_cli("report", out / "results.paper.json")]


@scenario(
    "`--criterion paper --threshold 0` (`run` or `report`), and the other ends of the report's thresholds (`--margin 1`, `--min-recovery 1`)"  # noqa: E501
)
def _threshold_ends(tmp_path):
    out = _written(tmp_path)
    outcomes = []
    for criterion, option, value in (
        ("paper", "--threshold", 0),
        ("erasure", "--margin", 1),
        ("recovery", "--min-recovery", 1),
    ):
        outcome = _cli("report", out, "--criterion", criterion, option, value)
        assert outcome.status == 0, outcome.output
        assert _results(out, f"results.{criterion}.json")["complete"] is True
        assert (out / f"report.{criterion}.html").exists()
        outcomes.append(Outcome(None, outcome.output))
    return outcomes


@scenario("a model equal to zero-filling (examples/zero_filled.py:ZeroFilled)")
def _zero_filled(tmp_path):
    warnings = _audit().warnings
    assert not any("ZeroFilled" in w for w in warnings), warnings
    return [Outcome(None, "\n".join(warnings))]


@pytest.mark.parametrize("case", cases(__name__))
def test_documented(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the documented names (out, out/report.html) are the real ones
    check_row(case, SCENARIOS[case](tmp_path))
