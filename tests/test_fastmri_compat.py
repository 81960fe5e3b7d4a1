"""fastMRI's own Unet and VarNet, from the installed fastmri package, plug in with no wrapper."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mri_audit.cli import cli

UNET = [
    "--model",
    "fastmri.models:Unet",
    "--model-arg",
    "in_chans=1",
    "--model-arg",
    "out_chans=1",
    "--model-arg",
    "chans=4",
    "--model-arg",
    "num_pool_layers=2",
]
VARNET = [
    "--model",
    "fastmri.models:VarNet",
    "--input",
    "kspace",
    "--model-arg",
    "num_cascades=2",
    "--model-arg",
    "sens_chans=4",
    "--model-arg",
    "sens_pools=2",
    "--model-arg",
    "chans=4",
    "--model-arg",
    "pools=2",
]


@pytest.mark.parametrize("model", [UNET, VARNET], ids=["Unet", "VarNet"])
@pytest.mark.parametrize("coils", ["single", "multi"])
def test_fastmri_classes_check_and_attack(model, coils, fastmri_dirs, tmp_path):
    data = str(getattr(fastmri_dirs, coils))
    runner = CliRunner()
    result = runner.invoke(cli, ["check", *model, "--data", data, "--max-slices", "2"])
    assert result.exit_code == 0, result.output
    assert ("domain      kspace" if model is VARNET else "domain      image") in result.output
    result = runner.invoke(
        cli,
        [
            "run",
            *model,
            "--data",
            data,
            "--max-volumes",
            "1",
            "--max-slices",
            "1",
            "--attacks",
            "fnaf-rs,fnaf-pgd",
            "--candidates",
            "3",
            "--out",
            str(tmp_path / "a"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / "records.csv").exists()
