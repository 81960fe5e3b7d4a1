"""Model loading and validation failures through the CLI: one line, the right exit code."""

from __future__ import annotations

import textwrap

import pytest
import torch
from click.testing import CliRunner

from mri_audit.cli import cli

GOOD = """
import torch
class Net(torch.nn.Module):
    def __init__(self, k=3):
        super().__init__()
        self.c = torch.nn.Conv2d(1, 1, k, padding=k // 2)
    def forward(self, x):
        return x + self.c(x)
"""


def _returning(expr: str) -> str:
    """A one-parameter model whose forward returns ``expr``."""
    return (
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.w = torch.nn.Parameter(torch.ones(()))\n"
        "    def forward(self, x):\n"
        f"        return {expr}\n"
    )


BAD_MODELS = {
    "syntax": ("def broken(:\n", "Net", "syntax error in model file"),
    "import": ("import torch\nimport not_a_module_xyz\n", "Net", "No module named"),
    "missing": (GOOD, "Nte", "did you mean 'Net'"),
    "not_module": ("def Net():\n    return 3\n", "Net", "not a torch.nn.Module"),
    "ctor": (
        GOOD.replace("def __init__(self, k=3)", "def __init__(self, k)"),
        "Net",
        "constructing",
    ),
    "shape": (_returning("(x * self.w)[..., :5, :5]"), "Net", "image-domain models get"),
    "complex": (_returning("(x * self.w).to(torch.complex64)"), "Net", "complex"),
    "int": (_returning("(x * self.w).long()"), "Net", "floating-point"),
    "nan": (_returning("x * self.w * float('nan')"), "Net", "NaN or Inf"),
    "constant": (_returning("torch.ones_like(x) * self.w"), "Net", "ignores its input"),
    "device": (
        _returning("torch.empty(x.shape, device='meta')"),
        "Net",
        "keep outputs on the input's device",
    ),
}


def _check(tmp_path, source: str, name: str, *extra: str):
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(source))
    args = ["check", "--model", f"{path}:{name}", "--max-volumes", "1", "--max-slices", "1", *extra]
    return CliRunner().invoke(cli, args)


def _assert_one_line_error(result, code: int, phrase: str) -> None:
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert phrase in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_model_failures_give_one_line(tmp_path, case):
    source, name, phrase = BAD_MODELS[case]
    _assert_one_line_error(_check(tmp_path, source, name), 5, phrase)


def test_model_file_not_found(tmp_path):
    result = CliRunner().invoke(cli, ["check", "--model", f"{tmp_path}/nope.py:Net"])
    _assert_one_line_error(result, 5, "model file not found")


def test_state_dict_mismatch_and_missing_weights(tmp_path):
    wrong = {"c.weight": torch.zeros(1, 1, 5, 5), "extra": torch.zeros(1)}
    torch.save(wrong, tmp_path / "w.pt")
    result = _check(tmp_path, GOOD, "Net", "--weights", str(tmp_path / "w.pt"))
    _assert_one_line_error(result, 5, "do not fit")
    assert "shape mismatch: c.weight" in result.output and "unexpected keys: extra" in result.output
    result = _check(tmp_path, GOOD, "Net", "--weights", str(tmp_path / "none.pt"))
    _assert_one_line_error(result, 5, "not found")


def test_not_differentiable_when_gradient_attack_requested(tmp_path):
    source = GOOD.replace(
        "return x + self.c(x)", "with torch.no_grad():\n            return x + self.c(x)"
    )
    path = tmp_path / "model.py"
    path.write_text(source)
    result = CliRunner().invoke(
        cli,
        [
            "run",
            "--model",
            f"{path}:Net",
            "--max-volumes",
            "1",
            "--max-slices",
            "1",
            "--attacks",
            "fnaf-pgd",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ],
    )
    _assert_one_line_error(result, 5, "not differentiable")
    assert not (tmp_path / "out" / "results.json").exists()


def test_model_arg_and_input_domain(tmp_path):
    result = _check(tmp_path, GOOD, "Net", "--model-arg", "k=5")
    assert result.exit_code == 0, result.output
    assert "parameters  26" in result.output  # 5x5 kernel + bias
    result = _check(tmp_path, GOOD, "Net", "--model-arg", "k=5", "--input", "kspace")
    _assert_one_line_error(result, 5, "k-space models get")


def test_check_prints_margin_over_zero_filled(tmp_path):
    result = _check(tmp_path, GOOD, "Net")
    assert result.exit_code == 0, result.output
    for word in ("domain      image", "device      cpu", "SSIM", "zero-filled", "margin"):
        assert word in result.output


def test_bad_acceleration_and_device(tmp_path):
    _assert_one_line_error(_check(tmp_path, GOOD, "Net", "--accel", "0.5"), 2, "--accel")
    if not torch.cuda.is_available():
        _assert_one_line_error(_check(tmp_path, GOOD, "Net", "--device", "cuda"), 6, "CUDA")


def _h5(path, **datasets):
    import h5py
    import numpy as np

    with h5py.File(path, "w") as hf:
        for name, value in datasets.items():
            hf.create_dataset(name, data=np.asarray(value))
    return path


@pytest.mark.parametrize(
    "kind, phrase",
    [
        ("missing", "no such file or folder"),
        ("empty", "no .h5"),
        ("no_kspace", "kspace"),
        ("ndim", "k-space has shape (8, 8)"),
        ("not_hdf5", "HDF5"),
    ],
)
def test_bad_data_gives_one_line(tmp_path, kind, phrase):
    import numpy as np

    data = tmp_path / "data"
    if kind == "empty":
        data.mkdir()
    elif kind == "no_kspace":
        data = _h5(tmp_path / "a.h5", reconstruction_esc=np.zeros((2, 8, 8), np.float32))
    elif kind == "ndim":
        data = _h5(tmp_path / "a.h5", kspace=np.zeros((8, 8), np.complex64))
    elif kind == "not_hdf5":
        data = tmp_path / "a.h5"
        data.write_bytes(b"not an hdf5 file" * 10)
    (tmp_path / "model.py").write_text(GOOD)
    result = CliRunner().invoke(
        cli, ["check", "--model", f"{tmp_path}/model.py:Net", "--data", str(data)]
    )
    _assert_one_line_error(result, 4, "")
    assert phrase.lower() in result.output.lower(), result.output


# ---------------------------------------------------------------------------- model files


def _run_recording_warnings(model: str, out, *extra: str):
    """``run`` with tiny settings; returns the result and torch's deprecation warnings."""
    import warnings

    args = ["run", "--model", model, "--max-volumes", "1", "--max-slices", "1", "--candidates"]
    args += ["2", "--attacks", "fnaf-rs,fnaf-pgd", "--out", str(out), "--no-progress", *extra]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(cli, args)
    deprecations = [
        f"{w.category.__name__}: {w.message} ({w.filename})"
        for w in caught
        if issubclass(w.category, DeprecationWarning | FutureWarning)
        and ("torch" in w.filename.replace("\\", "/").split("/") or "torch." in str(w.message))
    ]
    return result, deprecations


def _load_example(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exported_program_audit_end_to_end(tmp_path):
    """examples/export_model.py writes a .pt2 that `run` audits (gradient attack included), with
    the program in the model's identity and no deprecation warning from torch."""
    import json

    from mri_audit.hashing import sha256_file

    examples = _load_example("export_model")
    program = tmp_path / "unet.pt2"
    spec = str(examples.__file__).replace("export_model.py", "unet.py:UNet")
    diff = examples.export(spec, program, model_args={"chans": 4, "num_pool_layers": 2})
    assert diff < 1e-5
    result, deprecations = _run_recording_warnings(str(program), tmp_path / "audit")
    assert result.exit_code == 0, result.output
    assert not deprecations, deprecations
    (model,) = json.loads((tmp_path / "audit" / "results.json").read_text())["models"]
    assert model["kind"] == "exported" and model["domain"] == "image"  # domain from the archive
    assert model["sources"] == {"unet.pt2": sha256_file(program)}
    check = CliRunner().invoke(cli, ["check", "--model", str(program), "--max-slices", "1"])
    assert check.exit_code == 0, check.output
    assert "unet.pt2 (exported)" in check.output


def test_torchscript_audit_has_no_deprecation_warnings(tmp_path):
    import warnings

    path = tmp_path / "model.py"
    path.write_text(GOOD)
    from mri_audit.models.loading import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(load_model(f"{path}:Net").module).save(str(tmp_path / "net.ts"))
    result, deprecations = _run_recording_warnings(str(tmp_path / "net.ts"), tmp_path / "audit")
    assert result.exit_code == 0, result.output
    assert not deprecations, deprecations


def test_exported_program_of_another_size_is_one_line(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(GOOD)
    from mri_audit.models.loading import load_model

    net = load_model(f"{path}:Net").module.eval()
    program = torch.export.export(net, (torch.randn(1, 1, 32, 32),))
    torch.export.save(program, str(tmp_path / "net.pt2"))
    result = CliRunner().invoke(cli, ["check", "--model", str(tmp_path / "net.pt2")])
    _assert_one_line_error(result, 5, "net.pt2 was exported for inputs (1, 1, 32, 32)")
    assert "refuses (1, 1, 160, 160)" in result.output
