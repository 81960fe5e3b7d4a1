"""Progress: one bar per model on a terminal, log lines without one."""

from __future__ import annotations

import io
import logging

from mri_audit.audit.progress import Progress
from mri_audit.data.phantoms import synth_dataset
from tests.test_reliability import _cmd, _run, flaky  # noqa: F401 - the fixture is used


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _records(model: str, hits: list[bool]) -> list[dict]:
    return [{"model": model, "attack": "fnaf-rs", "hit": h} for h in hits]


def test_log_lines_every_tenth_and_at_the_end(caplog):
    caplog.set_level(logging.INFO, logger="mri_audit.audit.progress")
    p = Progress(20, ["A", "B"], stream=io.StringIO(), seconds=1e9)
    assert not p.bars and p.log_lines
    for _ in range(10):
        p.update(2, _records("A", [True, False]) + _records("B", [False, False]))
    p.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "mri_audit.audit.progress"]
    assert len(lines) == 10  # every 2 slices (a tenth of 20)
    assert lines[0].startswith("2/20 slices (10%), elapsed") and "left" in lines[0]
    assert lines[-1].startswith("20/20 slices (100%)") and "left" not in lines[-1]
    assert "highest attack rate so far: A 50% (fnaf-rs); B 0% (fnaf-rs)" in lines[-1]


def test_a_terminal_gets_one_bar_per_model(caplog):
    caplog.set_level(logging.INFO, logger="mri_audit.audit.progress")
    stream = _Tty()
    p = Progress(4, ["A", "B", "C"], stream=stream)
    p.update(4, _records("A", [True] * 4))
    p.close()
    assert list(p.bars) == ["A", "B", "C"] and not p.log_lines
    assert "highest attack rate 100% (fnaf-rs)" in stream.getvalue()
    assert not [r for r in caplog.records if r.name == "mri_audit.audit.progress"]


def test_nothing_when_disabled(caplog):
    caplog.set_level(logging.INFO, logger="mri_audit.audit.progress")
    p = Progress(4, ["A"], enabled=False, stream=_Tty())
    p.update(4)
    assert not p.bars and not p.log_lines and not caplog.records


def test_a_run_without_terminal_logs_progress(flaky, tmp_path):  # noqa: F811
    data = tmp_path / "data"
    synth_dataset(data, volumes=2, slices=2, size=32, coils=1, seed=1)
    cmd = [c for c in _cmd(flaky, data, tmp_path / "out") if c != "--no-progress"]
    proc = _run(cmd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if "mri_audit.audit.progress" in ln]
    assert lines and "4/4 slices (100%)" in lines[-1], proc.stderr[-2000:]
    assert "\r" not in proc.stderr  # no bar redrawn into a log file
