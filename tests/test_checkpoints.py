"""Checkpoints from the field: PyTorch Lightning (fastMRI's ``pl_modules``), DataParallel and
training-script dicts; key prefixes fitted, data-only metadata read safely, code refused."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import pathlib
import pickle
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from mri_audit.cli import cli
from mri_audit.errors import ModelError
from mri_audit.models.checkpoints import DATA_ONLY_GLOBALS, read_checkpoint
from mri_audit.models.loading import load_model, parse_model_args

UNET_ARGS = ["in_chans=1", "out_chans=1", "chans=4", "num_pool_layers=2"]
VARNET_ARGS = ["num_cascades=1", "chans=4", "pools=2", "sens_chans=2", "sens_pools=2"]
TINY = ["--max-volumes", "1", "--max-slices", "1"]
NET = """
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3)
    def forward(self, x):
        return x + self.conv(x).mean()
"""


def _model_args(pairs: list[str]) -> list[str]:
    return [x for pair in pairs for x in ("--model-arg", pair)]


def _lightning_checkpoint(module: nn.Module, path: Path, hparams: dict, **extra) -> Path:
    """Save ``module`` as PyTorch Lightning saves a LightningModule (``save_checkpoint``):
    its ``state_dict`` (keys prefixed by the attribute names), hyper-parameters holding a
    ``pathlib.PosixPath`` and an ``argparse.Namespace``, optimizer and scheduler states."""
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    module.zero_grad()
    sum(p.sum() for p in module.parameters()).backward()
    optimizer.step()  # the optimizer state holds tensors (exp_avg, exp_avg_sq, step)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=40, gamma=0.1)
    checkpoint = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.1.0",
        "state_dict": module.state_dict(),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4}}}},
        "callbacks": {},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
        "hparams_name": "kwargs",
        "hyper_parameters": {
            **hparams,
            "lr": 1e-3,
            "data_path": pathlib.PosixPath("/data/knee"),
            "args": argparse.Namespace(mode="train", default_root_dir=pathlib.Path("logs")),
        },
        **extra,
    }
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def fastmri_models():
    pytest.importorskip("fastmri")
    return pytest.importorskip("fastmri.models")


def _unet_module(fastmri_models) -> nn.Module:
    """fastMRI's ``UnetModule`` as Lightning sees it: the Unet under ``self.unet``."""
    torch.manual_seed(0)
    module = nn.Module()
    module.unet = fastmri_models.Unet(**parse_model_args(UNET_ARGS))
    return module


def _varnet_module(fastmri_models) -> nn.Module:
    """fastMRI's ``VarNetModule``: the VarNet under ``self.varnet`` and an SSIM loss whose
    window buffer ``loss.w`` is saved in the state dict too."""
    import fastmri

    torch.manual_seed(0)
    module = nn.Module()
    module.varnet = fastmri_models.VarNet(**parse_model_args(VARNET_ARGS))
    module.loss = fastmri.SSIMLoss()
    return module


def _assert_same_weights(model: nn.Module, saved: nn.Module) -> None:
    mine, theirs = model.state_dict(), saved.state_dict()
    assert mine.keys() == theirs.keys()
    for key, value in mine.items():
        assert torch.equal(value, theirs[key]), key


def _prefix_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "stripped the key prefix" in r.getMessage()]


def test_fastmri_unet_lightning_checkpoint_check(fastmri_models, tmp_path, caplog):
    module = _unet_module(fastmri_models)
    ckpt = _lightning_checkpoint(module, tmp_path / "unet.ckpt", parse_model_args(UNET_ARGS))
    spec = ["--model", "fastmri.models:Unet", *_model_args(UNET_ARGS)]
    with caplog.at_level(logging.WARNING, logger="mri_audit"):
        result = CliRunner().invoke(cli, ["check", *spec, "--weights", str(ckpt), *TINY])
    assert result.exit_code == 0, result.output
    assert "fastmri.models:Unet (module)" in result.output
    assert _prefix_lines(caplog) == [
        "weights unet.ckpt: stripped the key prefix 'unet.' (a PyTorch Lightning checkpoint) "
        "to fit fastmri.models:Unet"
    ]
    loaded = load_model("fastmri.models:Unet", model_args=parse_model_args(UNET_ARGS), weights=ckpt)
    _assert_same_weights(loaded.module, module.unet)


def test_fastmri_varnet_lightning_checkpoint_leaves_out_the_loss(fastmri_models, tmp_path, caplog):
    module = _varnet_module(fastmri_models)
    ckpt = _lightning_checkpoint(module, tmp_path / "varnet.ckpt", parse_model_args(VARNET_ARGS))
    assert "loss.w" in read_checkpoint(ckpt).state
    spec = ["--model", "fastmri.models:VarNet", "--input", "kspace", *_model_args(VARNET_ARGS)]
    with caplog.at_level(logging.WARNING, logger="mri_audit"):
        result = CliRunner().invoke(cli, ["check", *spec, "--weights", str(ckpt), *TINY])
    assert result.exit_code == 0, result.output
    (line,) = _prefix_lines(caplog)
    assert "stripped the key prefix 'varnet.' (a PyTorch Lightning checkpoint)" in line
    assert line.endswith("left out 1 other key(s): loss.w")
    loaded = load_model(
        "fastmri.models:VarNet", model_args=parse_model_args(VARNET_ARGS), weights=ckpt
    )
    _assert_same_weights(loaded.module, module.varnet)


def test_fastmri_lightning_checkpoint_run(fastmri_models, tmp_path, caplog):
    module = _unet_module(fastmri_models)
    ckpt = _lightning_checkpoint(module, tmp_path / "unet.ckpt", parse_model_args(UNET_ARGS))
    out = tmp_path / "audit"
    args = ["run", "--model", "fastmri.models:Unet", *_model_args(UNET_ARGS), "--weights"]
    args += [str(ckpt), *TINY, "--candidates", "2", "--attacks", "fnaf-rs", "--out", str(out)]
    with caplog.at_level(logging.WARNING, logger="mri_audit"):
        result = CliRunner().invoke(cli, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert len(_prefix_lines(caplog)) == 1
    results = json.loads((out / "results.json").read_text())
    (model,) = results["models"]
    assert model["weights"] == str(ckpt) and model["weights_sha256"]


def test_prefix_message_reaches_the_console(fastmri_models, tmp_path):
    """The CLI's own logging setup prints the warning on standard error."""
    import subprocess
    import sys

    module = _unet_module(fastmri_models)
    ckpt = _lightning_checkpoint(module, tmp_path / "unet.ckpt", parse_model_args(UNET_ARGS))
    cmd = [sys.executable, "-m", "mri_audit", "check", "--model", "fastmri.models:Unet"]
    cmd += [*_model_args(UNET_ARGS), "--weights", str(ckpt), *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "stripped the key prefix 'unet.' (a PyTorch Lightning checkpoint)" in proc.stderr


def test_shape_mismatch_under_the_prefix_names_the_hyper_parameters(fastmri_models, tmp_path):
    module = _unet_module(fastmri_models)
    ckpt = _lightning_checkpoint(module, tmp_path / "unet.ckpt", parse_model_args(UNET_ARGS))
    wider = parse_model_args([*UNET_ARGS[:2], "chans=8", "num_pool_layers=2"])
    with pytest.raises(ModelError) as err:
        load_model("fastmri.models:Unet", model_args=wider, weights=ckpt)
    msg = str(err.value)
    assert msg.startswith(
        "weights unet.ckpt do not fit fastmri.models:Unet (with the key prefix 'unet.' of a "
        "PyTorch Lightning checkpoint removed): shape mismatch: down_sample_layers.0.layers.0"
    )
    assert msg.endswith(
        "its hyper_parameters give in_chans=1, out_chans=1, chans=4, num_pool_layers=2 "
        "(pass them with --model-arg)"
    )


def test_checkpoint_of_another_model_class(fastmri_models, tmp_path):
    module = _unet_module(fastmri_models)
    ckpt = _lightning_checkpoint(module, tmp_path / "unet.ckpt", parse_model_args(UNET_ARGS))
    net = tmp_path / "net.py"
    net.write_text(NET)
    with pytest.raises(ModelError) as err:
        load_model(f"{net}:Net", weights=ckpt)
    assert "every checkpoint key starts with 'unet.', and no prefix makes them fit" in str(
        err.value
    )


# ---------------------------------------------------------------------------- prefixes


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.head = nn.Linear(2, 1)


@pytest.mark.parametrize(
    ("payload", "prefix", "why"),
    [
        (lambda sd: {f"module.{k}": v for k, v in sd.items()}, "module.", " (a DataParallel"),
        (lambda sd: {"model": {f"net.{k}": v for k, v in sd.items()}}, "net.", ""),
        (
            lambda sd: {"state_dict": {f"module.model.{k}": v for k, v in sd.items()}},
            "module.model.",
            " (a DataParallel",
        ),  # fmt: skip
    ],
)
def test_prefixes_are_stripped_when_they_make_the_keys_fit(tmp_path, caplog, payload, prefix, why):
    net = _Net()
    torch.save(payload(net.state_dict()), tmp_path / "w.pt")
    target = _Net()
    from mri_audit.models.weights import apply_weights

    with caplog.at_level(logging.WARNING, logger="mri_audit"):
        apply_weights(target, tmp_path / "w.pt", "net.py:Net")
    (line,) = _prefix_lines(caplog)
    assert line.startswith(f"weights w.pt: stripped the key prefix {prefix!r}{why}")
    _assert_same_weights(target, net)


def test_fitting_keys_are_not_touched(tmp_path, caplog):
    """A model whose own keys start with ``module.`` keeps them."""
    outer = nn.Module()
    outer.module = _Net()
    torch.save(outer.state_dict(), tmp_path / "w.pt")
    from mri_audit.models.weights import apply_weights

    target = nn.Module()
    target.module = _Net()
    with caplog.at_level(logging.WARNING, logger="mri_audit"):
        apply_weights(target, tmp_path / "w.pt", "Outer")
    assert not _prefix_lines(caplog)
    _assert_same_weights(target, outer)


def test_two_fitting_prefixes_are_refused(tmp_path):
    sd = _Net().state_dict()
    both = {**{f"model.{k}": v for k, v in sd.items()}, **{f"ema.{k}": v for k, v in sd.items()}}
    torch.save({"state_dict": both}, tmp_path / "w.pt")
    from mri_audit.models.weights import apply_weights

    with pytest.raises(
        ModelError, match="more than one model that fits Net .the keys under 'ema.'"
    ):
        apply_weights(_Net(), tmp_path / "w.pt", "Net")


# ---------------------------------------------------------------------------- safe loading


def _boom(marker: str) -> None:
    Path(marker).write_text("executed")


class _Evil:
    """Unpickling this runs ``_boom``: a stand-in for any code in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return _boom, (self.marker,)


class _WindowsPathOnLinux:
    """Pickles as ``pathlib.WindowsPath(...)``, as a checkpoint written on Windows does."""

    def __reduce__(self):
        return pathlib.WindowsPath, ("C:\\", "data", "knee")


def test_data_only_metadata_is_read_safely(tmp_path):
    sd = _Net().state_dict()
    meta = {
        "posix": pathlib.PosixPath("/data/knee"),
        "pure": pathlib.PurePosixPath("x"),
        "windows": _WindowsPathOnLinux(),
        "namespace": argparse.Namespace(lr=0.1, path=pathlib.Path("logs")),
        "when": datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc),
        "day": datetime.date(2024, 5, 1),
        "span": datetime.timedelta(hours=3),
    }
    torch.save({"state_dict": sd, "hyper_parameters": meta}, tmp_path / "w.ckpt")
    ck = read_checkpoint(tmp_path / "w.ckpt")
    assert ck.state.keys() == sd.keys()
    assert set(ck.allowed) <= set(DATA_ONLY_GLOBALS)
    assert "pathlib.WindowsPath" in ck.allowed and "argparse.Namespace" in ck.allowed
    assert ck.hyper_parameters["windows"] == pathlib.PureWindowsPath("C:\\data\\knee")
    assert ck.hyper_parameters["posix"] == pathlib.PurePosixPath("/data/knee")
    assert ck.hyper_parameters["namespace"].lr == 0.1
    # The allowance was for that one load only.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "w.ckpt", weights_only=True)


def test_legacy_format_checkpoint_with_paths(tmp_path):
    """A pre-zip ``torch.save`` file cannot be scanned: the refused names come one at a time."""
    sd = _Net().state_dict()
    payload = {"state_dict": sd, "hyper_parameters": {"a": pathlib.PosixPath("/x"),
                                                      "b": argparse.Namespace(c=1)}}  # fmt: skip
    torch.save(payload, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert read_checkpoint(tmp_path / "old.pt").state.keys() == sd.keys()


def test_code_in_a_checkpoint_is_refused_with_the_recipe(tmp_path):
    marker = tmp_path / "executed.txt"
    ckpt = tmp_path / "evil.ckpt"
    payload = {"state_dict": _Net().state_dict(), "pytorch-lightning_version": "2.1.0"}
    payload["hyper_parameters"] = {"data_path": pathlib.PosixPath("/data"), "x": _Evil(marker)}
    torch.save(payload, ckpt)
    net = tmp_path / "net.py"
    net.write_text(NET)
    result = CliRunner().invoke(cli, ["check", "--model", f"{net}:Net", "--weights", str(ckpt)])
    assert result.exit_code == 5, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0] == (
        f"Error: weights file {ckpt} holds pickled Python objects (tests.test_checkpoints._boom), "
        "which are refused for safety (weights_only=True); if you trust the file, convert it "
        f"once with: python -c \"import torch; ck = torch.load('{ckpt}', weights_only=False); "
        f"torch.save(ck['state_dict'], '{tmp_path}/evil.pt')\" and pass --weights "
        f"{tmp_path}/evil.pt"
    )
    assert not marker.exists()  # nothing ran


def test_unsupported_containers_are_refused(tmp_path):
    from collections import defaultdict

    torch.save({"model": _Net().state_dict(), "meta": defaultdict(list)}, tmp_path / "w.pt")
    with pytest.raises(ModelError) as err:
        read_checkpoint(tmp_path / "w.pt")
    assert "(builtins.list, collections.defaultdict)" in str(err.value)
    assert "torch.save(ck['model']" in str(err.value)  # the entry the file holds


def test_an_exported_program_is_not_weights(tmp_path):
    program = torch.export.export(nn.Linear(2, 2), (torch.ones(1, 2),))
    torch.export.save(program, tmp_path / "m.pt2")
    with pytest.raises(ModelError, match=r"is a torch.export program \(.pt2\), not a state dict"):
        read_checkpoint(tmp_path / "m.pt2")
