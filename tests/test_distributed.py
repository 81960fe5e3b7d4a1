"""Many processes: a 2-process gloo audit equals the single-process one; DDP hardening runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from mri_audit.cli import cli

NET = """
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(4, 1, 3, padding=1)
    def forward(self, x):
        return x + self.b(torch.relu(self.a(x)))
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    (root / "net.py").write_text(NET)
    namespace: dict = {}
    exec(NET, namespace)  # noqa: S102 - test fixture
    torch.manual_seed(0)
    torch.save(namespace["Net"]().state_dict(), root / "net.pt")
    return root


def _torchrun(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "mri_audit",
        *args,
    ]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


@pytest.mark.slow  # end to end, > 15 s on 2 cores
def test_two_process_audit_equals_single_process(model, singlecoil_dir, tmp_path):
    common = [
        "--model",
        f"{model}/net.py:Net",
        "--weights",
        f"{model}/net.pt",
        "--data",
        str(singlecoil_dir),
        "--attacks",
        "fnaf-rs,fnaf-fd,fnaf-pgd",
        "--candidates",
        "4",
        "--no-progress",
    ]
    single = CliRunner().invoke(cli, ["run", *common, "--out", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    proc = _torchrun("run", *common, "--out", str(tmp_path / "two"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one = pd.read_csv(tmp_path / "one" / "records.csv")
    two = pd.read_csv(tmp_path / "two" / "records.csv")
    assert len(one) == 3 * 8
    pd.testing.assert_frame_equal(one, two)
    r1 = json.loads((tmp_path / "one" / "results.json").read_text())
    r2 = json.loads((tmp_path / "two" / "results.json").read_text())
    assert r1["attacks"] == r2["attacks"] and r1["clean"] == r2["clean"]
    assert "2 processes" in r2["device"]
    assert not list((tmp_path / "two").glob("records.rank*.jsonl"))
    lines = [json.loads(x) for x in (tmp_path / "two" / "records.jsonl").read_text().splitlines()]
    kinds = [x["kind"] for x in lines]
    assert kinds[0] == "header" and len(kinds) == 1 + 24 + 1 and kinds[-1] == "time"
    assert {x["audit"] for x in lines} == {lines[0]["audit"]} == {r2["audit"]}
    # The merged journal is chained again: the distributed audit verifies as a whole.
    verified = CliRunner().invoke(cli, ["verify", str(tmp_path / "two")])
    assert verified.exit_code == 0 and verified.output.strip().endswith("VERIFIED"), verified.output


def test_two_process_hardening(model, harden_dir, tmp_path):
    proc = _torchrun(
        "harden",
        "--model",
        f"{model}/net.py:Net",
        "--weights",
        f"{model}/net.pt",
        "--data",
        str(harden_dir),
        "--max-slices",
        "2",
        "--epochs",
        "1",
        "--steps",
        "2",
        "--batch-size",
        "1",
        "--candidates",
        "3",
        "--out",
        str(tmp_path / "robust.pt"),
        "--no-report",
        "--keep-checkpoint",  # read below (a successful run removes it otherwise)
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "kept epoch 1" in proc.stdout
    state = torch.load(tmp_path / "robust.pt", weights_only=True)
    before = torch.load(model / "net.pt", weights_only=True)
    assert set(state) == set(before)
    assert any(not torch.equal(state[k], before[k]) for k in state)
    ckpt = torch.load(tmp_path / "robust.pt.ckpt", weights_only=True)
    assert ckpt["epoch"] == 1 and len(ckpt["history"]) == 1


NOISY = """
import torch
class Noisy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c = torch.nn.Conv2d(1, 1, 3, padding=1)
    def forward(self, x):
        return x + self.c(x) + 0.3 * torch.randn_like(x)
"""


@pytest.mark.slow  # end to end, ~20 s on 2 cores
def test_two_process_stochastic_audit_equals_single_process(singlecoil_dir, tmp_path):
    """A stochastic model's noise is keyed by (seed, volume, slice, sample): the records of a
    2-process audit equal the single-process ones."""
    (tmp_path / "noisy.py").write_text(NOISY)
    common = ["--model", f"{tmp_path}/noisy.py:Noisy", "--data", str(singlecoil_dir)]
    common += ["--max-slices", "2", "--attacks", "fnaf-rs", "--candidates", "3"]
    common += ["--samples", "2", "--no-progress"]
    single = CliRunner().invoke(cli, ["run", *common, "--out", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    proc = _torchrun("run", *common, "--out", str(tmp_path / "two"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one = pd.read_csv(tmp_path / "one" / "records.csv")
    two = pd.read_csv(tmp_path / "two" / "records.csv")
    assert len(one) == 4 and (one["samples"] == 2).all()
    pd.testing.assert_frame_equal(one, two)
