"""torch.export programs (``.pt2``) as ``--model``: loading, batch groups, devices, guards."""

from __future__ import annotations

import os
from pathlib import Path

import fastmri
import pytest
import torch
from fastmri.models import VarNetBlock
from torch import nn

from mri_audit.models.loading import load_model
from tests.test_plugins import NET_SOURCE, image, model_error, write


@pytest.fixture()
def net_file(tmp_path: Path) -> Path:
    return write(tmp_path / "net.py", NET_SOURCE)


def _export(module: nn.Module, path: Path, example: tuple, dynamic=None, **extra) -> Path:
    program = torch.export.export(module.eval(), example, dynamic_shapes=dynamic)
    torch.export.save(program, str(path), extra_files=extra or None)
    return path


def _dynamic_batch(name: str = "x", **bounds) -> dict:
    return {name: {0: torch.export.Dim("batch", **bounds)}}


def test_exported_program(tmp_path: Path, net_file: Path) -> None:
    source = load_model(f"{net_file}:Net").module.eval()
    extra = {"mri_audit_input": "kspace"}
    path = _export(source, tmp_path / "m.pt2", (image(),), _dynamic_batch(max=64), **extra)
    loaded = load_model(str(path))
    assert loaded.kind == "exported" and loaded.name == "m.pt2"
    assert loaded.input_domain == "kspace"  # stored in the archive
    assert loaded.sources == (path.resolve(),) and loaded.source_path == path.resolve()
    model = loaded.module
    model.eval()  # accepted: the program runs as exported
    assert model.batch_range == (1, 64)
    x = torch.randn(5, 1, 12, 10)
    assert torch.equal(model(x), source(x))
    x.requires_grad_(True)
    model(x).square().sum().backward()  # gradient attacks need this
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert "cannot be trained" in model_error(model.train)
    # --weights replaces the program's weights
    other = load_model(f"{net_file}:Net").module.eval()
    torch.save({"state_dict": {f"model.{k}": v for k, v in other.state_dict().items()}},
               tmp_path / "other.ckpt")  # fmt: skip
    reloaded = load_model(str(path), weights=tmp_path / "other.ckpt").module
    with torch.no_grad():
        assert torch.equal(reloaded(x), other(x))


def test_exported_program_errors(tmp_path: Path, net_file: Path) -> None:
    path = _export(load_model(f"{net_file}:Net").module, tmp_path / "m.pt2", (image(),))
    assert "--model-arg does not apply to a torch.export program m.pt2" in model_error(
        load_model, str(path), model_args={"chans": 3}
    )
    assert "a torch.export program takes no ':Name'" in model_error(load_model, f"{path}:Net")
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(os.urandom(500))
    msg = model_error(load_model, str(garbage))
    assert f"cannot load {garbage} as a torch.export program" in msg
    assert "--weights" in msg
    assert "is a torch.export program (.pt2), not a state dict" in model_error(
        load_model, f"{net_file}:Net", weights=path
    )


def test_exported_program_fixed_batch_runs_in_groups(
    tmp_path: Path, net_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = load_model(f"{net_file}:Net").module.eval()
    x = torch.randn(5, 1, 12, 10)
    for size in (1, 2):
        path = _export(source, tmp_path / f"b{size}.pt2", (image()[:size],))
        with caplog.at_level("WARNING", logger="mri_audit"):
            model = load_model(str(path)).module
        assert f"exported with a fixed batch size of {size}: mri-audit runs it" in caplog.text
        assert model.batch_range == (size, size)
        with torch.no_grad():
            torch.testing.assert_close(model(x), source(x))  # 5 = 2 + 2 + 1 (padded)
        caplog.clear()
    bounded = _export(source, tmp_path / "max2.pt2", (image(),), _dynamic_batch(max=2))
    with torch.no_grad():
        torch.testing.assert_close(load_model(str(bounded)).module(x), source(x))


def test_exported_program_refuses_another_size_in_one_line(tmp_path: Path, net_file: Path) -> None:
    path = _export(load_model(f"{net_file}:Net").module, tmp_path / "m.pt2", (image(),))
    with pytest.raises(ValueError) as err:
        load_model(str(path)).module(torch.randn(2, 1, 16, 16))
    msg = str(err.value)
    assert msg.startswith("m.pt2 was exported for inputs (2, 1, 12, 10) (* is dynamic) and "
                          "refuses (2, 1, 16, 16)")  # fmt: skip
    assert msg.endswith("export with dynamic dimensions (torch.export.Dim; see "
                        "examples/export_model.py)")  # fmt: skip


def test_exported_kspace_program_gets_only_its_arguments(tmp_path: Path) -> None:
    """A k-space program exported as (masked_kspace, mask) is not given num_low_frequencies.

    fastMRI's VarNet itself cannot be exported (strict or not): its Unet branches on a tensor
    (``if torch.sum(torch.tensor(padding)) != 0``) and its sensitivity model slices k-space at
    bounds computed from tensors. So the program here is a small k-space model in VarNet's
    layout built from fastMRI's own ``VarNetBlock`` (soft data consistency) with a test-local
    convolution as its regulariser and uniform coil sensitivities.
    """

    class Regulariser(nn.Module):  # (B, 1, H, W, 2) -> (B, 1, H, W, 2)
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(x[:, 0].permute(0, 3, 1, 2)).permute(0, 2, 3, 1).unsqueeze(1)

    class KspaceNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = VarNetBlock(Regulariser())

        def forward(self, masked_kspace, mask):
            real = torch.ones_like(masked_kspace[..., 0]) * masked_kspace.shape[1] ** -0.5
            sens = torch.stack([real, torch.zeros_like(real)], dim=-1)
            kspace = self.block(masked_kspace, masked_kspace, mask, sens)
            return fastmri.rss(fastmri.complex_abs(fastmri.ifft2c(kspace)), dim=1)

    torch.manual_seed(0)
    model = KspaceNet().eval()
    kspace = torch.randn(2, 3, 16, 12, 2)
    mask = torch.zeros(2, 1, 1, 12, 1, dtype=torch.bool)
    mask[..., 4:8, :] = True

    batch = torch.export.Dim("batch")
    path = _export(model, tmp_path / "k.pt2", (kspace * mask, mask),
                   {"masked_kspace": {0: batch}, "mask": {0: batch}})  # fmt: skip
    loaded = load_model(str(path))
    assert loaded.input_domain is None
    from mri_audit.models.estimator import Reconstructor

    recon = Reconstructor(loaded.module, input_domain="kspace", target_shape=(16, 12))
    complex_k = torch.view_as_complex(kspace * mask)
    with torch.no_grad():
        out = recon.reconstruct(complex_k, mask[..., 0], num_low_frequencies=4)
        assert torch.equal(out, model(kspace * mask, mask))


@pytest.mark.filterwarnings("ignore:for conv.*meta parameter:UserWarning")  # meta holds no data
def test_exported_program_moves_its_device_constants(tmp_path: Path) -> None:
    """A program holds the device of tensors its forward creates (here ``torch.ones``): moving
    it rewrites them too. The meta device stands in for a GPU."""

    class WithConstant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            return self.conv(x) + torch.ones(x.shape[-1], device=x.device)

    path = _export(WithConstant(), tmp_path / "c.pt2", (image(),), _dynamic_batch())
    model = load_model(str(path)).module
    assert model.to("meta") is model
    assert next(model.parameters()).device.type == "meta"
    assert model(torch.randn(3, 1, 12, 10, device="meta")).device.type == "meta"
