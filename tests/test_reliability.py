"""Interrupted audits: Ctrl-C, a killed process and flaky models lose nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from mri_audit.data.phantoms import synth_dataset

FLAKY = """
import time
import torch
from flaky_helper import fails
class Net(torch.nn.Module):
    '''Fails on about 2% of inputs, the same inputs every run; optionally slow.'''
    def __init__(self, delay=0.0):
        super().__init__()
        self.c = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.delay = delay
        self.calls = 0
    def forward(self, x):
        time.sleep(self.delay)
        self.calls += 1
        if self.calls <= 3:  # the dry run before the audit
            return x + self.c(x)
        for sample in x:
            if fails(sample):
                raise RuntimeError("flaky model failure")
        return x + self.c(x)
"""
# A sibling module the model imports: part of the audit's identity, so a resume checks it too.
FLAKY_HELPER = """
def fails(sample):
    return int(abs(float(sample[0, 10, 10])) * 1e6) % 50 == 17
"""


@pytest.fixture(scope="module")
def flaky(tmp_path_factory):
    root = tmp_path_factory.mktemp("flaky")
    (root / "flaky.py").write_text(FLAKY)
    (root / "flaky_helper.py").write_text(FLAKY_HELPER)
    namespace: dict = {}
    exec(FLAKY_HELPER, namespace)  # noqa: S102 - test fixture
    exec(FLAKY.replace("from flaky_helper import fails", ""), namespace)  # noqa: S102
    torch.manual_seed(0)
    torch.save(namespace["Net"]().state_dict(), root / "w.pt")
    return root


def _cmd(model_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mri_audit",
        "run",
        "--model",
        f"{model_dir}/flaky.py:Net",
        "--weights",
        f"{model_dir}/w.pt",
        "--data",
        str(data),
        "--attacks",
        "fnaf-rs",
        "--candidates",
        "3",
        "--batch-size",
        "6",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow  # end to end, > 15 s on 2 cores
def test_ctrl_c_saves_work_and_says_how_to_resume(flaky, tmp_path):
    data = tmp_path / "data"
    synth_dataset(data, volumes=6, slices=2, size=32, coils=1, seed=1)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _cmd(flaky, data, out, "--model-arg", "delay=0.05"),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job inherits SIGINT ignored, and then Python never raises
        # KeyboardInterrupt: give the child the default disposition, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while _lines(out / "records.jsonl") < 3 and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert _lines(out / "records.jsonl") >= 3
    assert not (out / "results.json").exists()
    done = _run(_cmd(flaky, data, out, "--model-arg", "delay=0.0", "--resume"), timeout=300)
    assert done.returncode == 2 and "--model-arg" in done.stderr  # model args changed
    done = _run(_cmd(flaky, data, out, "--model-arg", "delay=0.05", "--resume"), timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(pd.read_csv(out / "records.csv")) == 12


@pytest.mark.slow
def test_soak_kill_and_resume_equals_uninterrupted(flaky, tmp_path):
    data = tmp_path / "data"
    synth_dataset(data, volumes=50, slices=4, size=32, coils=1, seed=2)
    full = _run(_cmd(flaky, data, tmp_path / "full"), timeout=1200)
    assert full.returncode == 0, full.stderr
    reference = pd.read_csv(tmp_path / "full" / "records.csv")
    assert len(reference) == 200
    failures = reference[reference["kind"] == "error"]
    assert len(failures) >= 1, "the flaky model should fail on some slices"

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(flaky, data, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    stop_at = random.Random(0).randint(20, 150)
    deadline = time.time() + 900
    while _lines(out / "records.jsonl") < stop_at and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not (out / "results.json").exists()
    resumed = _run(_cmd(flaky, data, out, "--resume"), timeout=1200)
    assert resumed.returncode == 0, resumed.stderr
    again = pd.read_csv(out / "records.csv")
    pd.testing.assert_frame_equal(reference, again)
    assert (again["kind"] == "error").sum() == len(failures)
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"][0]["sources"]) == {"flaky.py", "flaky_helper.py"}
    assert results["complete"] is True
