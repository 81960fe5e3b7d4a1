"""docs/errors.md, "Stochastic and batch-coupled models": every example run here (see
:mod:`tests.errors_doc`)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.errors_doc import SCENARIOS, Outcome, cases, check_row, cli_outcome, scenario

ZERO_FILLED = str(Path(__file__).resolve().parents[1] / "examples" / "zero_filled.py")
NET = textwrap.dedent("""
    import torch

    class _Base(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

    class Noisy(_Base):
        def forward(self, x):
            return x * self.w + 0.3 * torch.randn_like(x)

    class Coupled(_Base):
        def forward(self, x):
            return x * self.w - 0.5 * (x.mean(0, keepdim=True) - x)

    class Liar(_Base):
        mri_audit_stochastic = True
        def forward(self, x):
            return x * self.w

    class One(_Base):
        def forward(self, x):
            if x.shape[0] > 1:
                raise RuntimeError("batch of one only")
            return x * self.w
""")


def _check(name: str) -> Outcome:
    Path("net.py").write_text(NET)
    return cli_outcome("check", "--model", f"net.py:{name}", "--max-volumes", "1",
                       "--max-slices", "1")  # fmt: skip


@scenario("a stochastic model (posterior sampling, MC dropout, noise from torch's generator)")
def _stochastic(tmp_path):
    out = _check("Noisy")
    assert out.status == 0 and "behaviour   stochastic (8 samples)" in out.output
    args = ["--max-volumes", "1", "--max-slices", "1", "--attacks", "fnaf-rs", "--candidates"]
    run = cli_outcome("run", "--model", "net.py:Noisy", *args, "1", "--out", "out")
    assert run.status == 0, run.output
    return [Outcome(None, out.output), Outcome(None, run.output)]


@scenario("a batch-coupled model (batch statistics)")
def _coupled(tmp_path):
    out = _check("Coupled")
    assert out.status == 0 and "batch-coupled (run one at a time)" in out.output
    return [Outcome(None, out.output)]


@scenario("a declaration the checks contradict (`mri_audit_stochastic`, `mri_audit_batch_coupled`)")
def _liar(tmp_path):
    out = _check("Liar")
    assert out.status == 0
    return [Outcome(None, out.output)]


@scenario("`--samples` when every model is deterministic")
def _samples(tmp_path):
    args = ["run", "--model", f"{ZERO_FILLED}:ZeroFilled", "--samples", "4", "--max-volumes"]
    return [cli_outcome(*args, "1", "--out", "out")]


@scenario("`harden` of a stochastic model")
def _harden(tmp_path):
    Path("net.py").write_text(NET)
    out = cli_outcome("harden", "--model", "net.py:Noisy", "--epochs", "1", "--out", "r.pt")
    assert not Path("r.pt").exists() and not Path("r.pt.ckpt").exists()
    return [out]


@scenario("a model that fails on a batch of two slices")
def _one(tmp_path):
    return [_check("One")]


@pytest.mark.parametrize("case", cases(__name__))
def test_documented(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_row(case, SCENARIOS[case](tmp_path))
