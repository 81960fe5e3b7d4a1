"""A folder whose volumes have different target sizes, end to end through the CLI.

The model is opened (and dry-run) on the folder's first slice, but every batch must be cropped to
its own target size: a volume's records must equal those of an audit of that volume alone,
whichever volume comes first in the folder (the invariance oracle).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import mri_audit
from mri_audit.cli import cli
from mri_audit.data.phantoms import synth_dataset
from mri_audit.models.entries import ModelEntry
from mri_audit.models.estimator import Reconstructor
from mri_audit.mri.metrics import VolumeMetrics

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODELS = [
    "--model",
    f"{EXAMPLES / 'zero_filled.py'}:ZeroFilled",
    "--compare",
    f"median={EXAMPLES / 'median_filter.py'}:MedianFilter",
]
# Target side -> k-space grid (larger than the target, as fastMRI's readout oversampling).
GRIDS = {32: (64, 40), 48: (96, 56)}
PGD_STEPS = 2
RUN_ARGS = ["--max-slices", "1", "--attacks", "fnaf-rs,fnaf-pgd", "--candidates", "2"]
RUN_ARGS += ["--attack-param", f"fnaf-pgd.steps={PGD_STEPS}"]
QUANTITIES = ("r", "r0", "e", "feature")
NET = """
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c = torch.nn.Conv2d(1, 1, 3, padding=1)
        torch.nn.init.zeros_(self.c.weight)
    def forward(self, x):
        return x + self.c(x)
"""


def _volume(folder: Path, name: str, size: int, seed: int) -> Path:
    """One single-coil volume ``{name}_0000.h5`` with a ``size`` x ``size`` target."""
    (path,) = synth_dataset(
        folder,
        volumes=1,
        slices=1,
        size=size,
        coils=1,
        kspace_shape=GRIDS[size],
        seed=seed,
        prefix=name,
    )
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """``small_first`` (a: 32², b: 48²), ``large_first`` (a: 48², b: 32²) and, for each of
    their volumes, a folder holding only it (``small_first/a``, ...)."""
    root = tmp_path_factory.mktemp("mixed")
    out = {}
    for order, sizes in (("small_first", (32, 48)), ("large_first", (48, 32))):
        for name, size, seed in zip(("a", "b"), sizes, (21, 22), strict=True):
            path = _volume(root / order, name, size, seed)
            alone = root / f"{order}_{name}"
            alone.mkdir()
            shutil.copy(path, alone / path.name)
            out[f"{order}/{name}"] = alone
        out[order] = root / order
    return out


def _invoke(args: list[str]):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return result


def _by_key(lines: list[dict]) -> dict[tuple, tuple]:
    """Records as ``{(model, attack, volume, slice): (r, r0, e, feature)}``, none an error."""
    records = [r for r in lines if "model" in r]  # (not the header or timing lines)
    errors = [r for r in records if r.get("error") or r["kind"] != "fnaf"]
    assert not errors, errors
    return {
        (r["model"], r["attack"], r["volume"], r["slice"]): tuple(r[q] for q in QUANTITIES)
        for r in records
    }


def _run(data: Path, out: Path) -> dict[tuple, tuple]:
    """``mri-audit run`` on ``data``, every file written (the worst-case panels too)."""
    _invoke(["run", *MODELS, "--data", str(data), *RUN_ARGS, "--out", str(out), "--no-progress"])
    return _by_key([json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()])


def _alone(data: Path) -> dict[tuple, tuple]:
    """The same audit through the library (its CLI's code path, without the report)."""
    result = mri_audit.audit(
        f"{EXAMPLES / 'zero_filled.py'}:ZeroFilled",
        compare=[ModelEntry(f"{EXAMPLES / 'median_filter.py'}:MedianFilter", name="median")],
        data=data,
        max_slices=1,
        attacks=["fnaf-rs", "fnaf-pgd"],
        attack_options={"fnaf-pgd": {"steps": PGD_STEPS}},
        candidates=2,
    )
    return _by_key(result.journal)


@pytest.mark.parametrize("order", ["small_first", "large_first"])
def test_run_audits_each_volume_as_if_alone(folders, order, tmp_path):
    mixed = _run(folders[order], tmp_path / "mixed")
    assert {k[2] for k in mixed} == {"a_0000.h5", "b_0000.h5"}
    assert len(mixed) == 2 * 2 * 2  # models x attacks x volumes (one slice each)
    for name in ("a", "b"):
        assert _alone(folders[f"{order}/{name}"]) == {
            k: v for k, v in mixed.items() if k[2] == f"{name}_0000.h5"
        }


def test_map_runs_on_a_mixed_folder(folders, tmp_path):
    args = ["--shapes", "disk", "--sizes", "disk=1,3", "--contrasts", "1", "--draws", "1"]
    out = tmp_path / "map"
    _invoke(["map", *MODELS, "--data", str(folders["large_first"]), *args, "--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    assert res["complete"] is True


def test_check_scores_each_volume_as_if_alone(folders, monkeypatch):
    """The per-volume metrics ``check`` averages (recorded from :class:`VolumeMetrics`)."""
    seen: list[dict] = []
    compute = VolumeMetrics.compute

    def recording(self):
        out = compute(self)
        seen.append(out)
        return out

    monkeypatch.setattr(VolumeMetrics, "compute", recording)

    def ssim(data: Path) -> dict[str, float]:
        seen.clear()
        _invoke(["check", *MODELS[:2], "--data", str(data), "--max-slices", "1"])
        model = seen[0]  # the model's metrics are summarised first, then zero-filling's
        return {v: m["ssim"] for v, m in model.items()}

    for order in ("small_first", "large_first"):
        mixed = ssim(folders[order])
        assert set(mixed) == {"a_0000.h5", "b_0000.h5"}
        for name in ("a", "b"):
            assert ssim(folders[f"{order}/{name}"]) == {f"{name}_0000.h5": mixed[f"{name}_0000.h5"]}


def test_art_path_crops_to_each_volume(folders):
    """``kspace-pgd`` runs ART's PGD through ``loss_gradient``: cropped to each volume's size."""

    def degradation(data: Path) -> dict[str, tuple]:
        result = mri_audit.audit(
            f"{EXAMPLES / 'median_filter.py'}:MedianFilter",
            data=data,
            max_slices=1,
            attacks=["kspace-pgd"],
            attack_options={"kspace-pgd": {"max_iter": 2}},
        )
        records = [r for r in result.journal if "model" in r]
        assert all(r["kind"] == "degradation" and not r.get("error") for r in records), records
        return {r["volume"]: (r["ssim_clean"], r["ssim_adv"], r["perturbation"]) for r in records}

    mixed = degradation(folders["large_first"])
    assert set(mixed) == {"a_0000.h5", "b_0000.h5"}
    for name in ("a", "b"):
        assert degradation(folders[f"large_first/{name}"]) == {
            f"{name}_0000.h5": mixed[f"{name}_0000.h5"]
        }


def test_cropping_restores_the_default_size():
    est = Reconstructor(torch.nn.Identity(), target_shape=(32, 32))
    kspace = torch.randn(1, 1, 64, 48, dtype=torch.complex64)
    mask = torch.ones(1, 1, 1, 48, dtype=torch.bool)
    with est.cropping((48, 48)):
        assert est.reconstruct(kspace, mask).shape == (1, 48, 48)
    assert est.target_shape == (32, 32) and est.reconstruct(kspace, mask).shape == (1, 32, 32)
    with pytest.raises(RuntimeError), est.cropping((40, 40)):
        raise RuntimeError
    assert est.target_shape == est.operator.crop_shape == (32, 32)
    # ART's numpy API crops to the size of y.
    x = torch.view_as_real(kspace).numpy()
    y = np.zeros((1, 48, 48), np.float32)
    assert est.loss_gradient(x, y).shape == x.shape
    assert np.isfinite(est.compute_loss(x, y))
    assert est.predict(x).shape == (1, 32, 32)


def test_harden_trains_and_validates_on_a_mixed_folder(folders, tmp_path):
    """Training slices of two sizes (one slice per step: a step's slices share a size) and
    validation on a size other than the probe's."""
    data = tmp_path / "data"
    data.mkdir()
    picks = ("small_first/a", "large_first/a", "small_first/b", "large_first/b")
    for i, key in enumerate(picks):  # train: 32², 48²; choose the weights on 48²; report 32²
        (src,) = folders[key].glob("*.h5")
        shutil.copy(src, data / f"v{i}.h5")
    (tmp_path / "net.py").write_text(NET)
    args = ["harden", "--model", f"{tmp_path / 'net.py'}:Net", "--data", str(data)]
    args += ["--epochs", "1", "--steps", "2", "--batch-size", "1", "--candidates", "2"]
    _invoke([*args, "--no-report", "--out", str(tmp_path / "hard.pt")])
    assert (tmp_path / "hard.pt").stat().st_size > 0
