"""``--batch-size auto``: sized from free memory on a GPU, fixed on a CPU, kept on resume."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from mri_audit.cli import cli
from mri_audit.data.datasets import SliceDataset, collate
from mri_audit.fnaf.autobatch import MAX_BATCH, batch_from_memory, choose_batch_size, cpu_batch
from mri_audit.models.estimator import Reconstructor
from mri_audit.mri.physics import make_mask_func

NET = """
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c = torch.nn.Conv2d(1, 1, 3, padding=1)
        torch.nn.init.constant_(self.c.weight, 0.05)  # the same model in every process
        torch.nn.init.zeros_(self.c.bias)
    def forward(self, x):
        return x + self.c(x)
"""

MiB = 2**20


def test_batch_from_memory_by_hand():
    # 1 GiB free, half of it planned, 10 MiB a candidate: 51.2 -> 51 -> 48 (multiple of 8).
    assert batch_from_memory(1024 * MiB, 10 * MiB) == 48
    # Gradients: 2/11 slices per candidate at 110 MiB a slice = 20 MiB a candidate: 25.6 -> 24.
    assert batch_from_memory(1024 * MiB, 10 * MiB, per_slice_grad=110 * MiB) == 24
    assert batch_from_memory(1024 * MiB, 100 * MiB) == 5  # below 8: not rounded
    assert batch_from_memory(10 * MiB, 100 * MiB) == 1  # never below one
    assert batch_from_memory(10**13, 1.0) == MAX_BATCH  # never above the cap
    assert batch_from_memory(1024 * MiB, 10 * MiB, fraction=1.0) == 96


def test_cpu_batch_by_image_size(singlecoil_dir):
    assert cpu_batch(160, 160) == 4 and cpu_batch(320, 320) == 1 and cpu_batch(640, 368) == 1
    assert cpu_batch(64, 64) == 16 and cpu_batch(16, 16) == 16  # capped
    ds = SliceDataset(singlecoil_dir, max_slices=1)
    est = Reconstructor(torch.nn.Identity(), target_shape=tuple(ds[0].target.shape))
    probe = collate([ds[0]])
    mask = make_mask_func("random", 4)
    size = choose_batch_size([est], probe, mask, gradient=True)
    assert size == cpu_batch(*probe.kspace.shape[-2:])


def test_measurement_runs_the_engine_at_two_sizes(singlecoil_dir):
    """The GPU measurement's work, on the CPU, with a fake peak-memory reader."""
    from mri_audit.fnaf.autobatch import _measure

    ds = SliceDataset(singlecoil_dir, max_slices=1)
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    est = Reconstructor(model, target_shape=tuple(ds[0].target.shape))
    seen = []

    def fake_peak(device, run):
        run()
        seen.append(len(seen))
        return [1000, 4000, 10_000, 40_000][len(seen) - 1]  # inference 1, 4; gradient 1, 4

    per_candidate, per_slice = _measure(
        est, collate([ds[0]]), make_mask_func("random", 4), gradient=True, peak=fake_peak
    )
    assert len(seen) == 4
    assert per_candidate == pytest.approx(1000) and per_slice == pytest.approx(10_000)
    assert all(p.requires_grad for p in model.parameters())  # restored after the probe


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_batch_fits_in_free_memory(singlecoil_dir):
    ds = SliceDataset(singlecoil_dir, max_slices=1)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.Conv2d(32, 1, 1))
    est = Reconstructor(model.cuda(), target_shape=tuple(ds[0].target.shape), device="cuda")
    mask = make_mask_func("random", 4)
    size = choose_batch_size([est], collate([ds[0]]), mask, gradient=True)
    assert 1 <= size <= MAX_BATCH


def _run(tmp_path, data, *extra):
    (tmp_path / "net.py").write_text(NET)
    args = [
        "run",
        "--model",
        f"{tmp_path}/net.py:Net",
        "--data",
        str(data),
        "--max-slices",
        "2",
        "--candidates",
        "3",
        "--attacks",
        "fnaf-rs",
        "--out",
        str(tmp_path / "audit"),
        "--no-progress",
        "--device",
        "cpu",
        *extra,
    ]
    return CliRunner().invoke(cli, args)


def _config(tmp_path):
    return json.loads((tmp_path / "audit" / "results.json").read_text())["config"]


def test_auto_is_the_default_and_resume_keeps_the_stored_size(tmp_path, singlecoil_dir):
    result = _run(tmp_path, singlecoil_dir)
    assert result.exit_code == 0, result.output
    h, w = SliceDataset(singlecoil_dir)[0].kspace.shape[-2:]
    assert _config(tmp_path)["batch_size"] == cpu_batch(h, w)
    first = pd.read_csv(tmp_path / "audit" / "records.csv")
    # An audit made with another size resumes under auto without a configuration change.
    result = _run(tmp_path, singlecoil_dir, "--batch-size", "3", "--force")
    assert result.exit_code == 0, result.output
    # The size changes speed only: same features and hits, losses equal to float rounding.
    again = pd.read_csv(tmp_path / "audit" / "records.csv")
    floats = again.select_dtypes("float").columns
    pd.testing.assert_frame_equal(again.drop(columns=floats), first.drop(columns=floats))
    pd.testing.assert_frame_equal(again[floats], first[floats], rtol=1e-4, atol=1e-9)
    result = _run(tmp_path, singlecoil_dir, "--resume")
    assert result.exit_code == 0, result.output
    assert _config(tmp_path)["batch_size"] == 3
    assert _run(tmp_path, singlecoil_dir, "--resume", "--batch-size", "auto").exit_code == 0


@pytest.mark.parametrize("value", ["0", "-2", "lots", "1.5"])
def test_bad_batch_size_is_one_line(tmp_path, singlecoil_dir, value):
    result = _run(tmp_path, singlecoil_dir, "--batch-size", value)
    assert result.exit_code == 2
    assert "--batch-size" in result.output and "'auto' or a positive integer" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "audit").exists()
