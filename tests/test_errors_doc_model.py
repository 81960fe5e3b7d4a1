"""docs/errors.md, section "Model": every example reproduced for real (see tests/errors_doc.py).

Models are tiny inline files, data the built-in phantoms (one slice); the ``.pt2`` program and the
64x64 data several rows share are made once per module. Everything a row names (``x/net.py``,
``w.pt``, ``unet.ckpt``, ``m.pt2``, ...) is made under that name in the test's own folder.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from mri_audit.errors import MriAuditError
from tests.errors_doc import (
    SCENARIOS,
    Outcome,
    SharedFiles,
    cases,
    check_row,
    cli_outcome,
    scenario,
)

TINY = ["--max-volumes", "1", "--max-slices", "1"]

NET = """
import torch
class Net(torch.nn.Module):
    def __init__(self, k=3):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, k, padding=k // 2)
    def forward(self, x):
        return x + self.conv(x)
"""


def _returning(expr: str) -> str:
    """A one-parameter model whose forward returns ``expr``."""
    return textwrap.dedent(f"""
        import torch
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.ones(()))
            def forward(self, x):
                return {expr}
        """)


def write(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def check(model: str, *extra: str) -> Outcome:
    return cli_outcome("check", "--model", model, *TINY, *extra)


def library_outcome(fn, *args, **kwargs) -> Outcome:
    """A library call that must raise mri-audit's one-line error: its status and message."""
    with pytest.raises(MriAuditError) as err:
        fn(*args, **kwargs)
    return Outcome(err.value.exit_code, str(err.value))


def _net_state(source: str = NET, **kwargs) -> dict[str, torch.Tensor]:
    namespace: dict = {}
    exec(source, namespace)  # noqa: S102 - the test's own model source
    torch.manual_seed(0)
    return namespace["Net"](**kwargs).state_dict()


def _lightning(module: nn.Module, path: Path, hparams: dict) -> Path:
    """``module`` saved as PyTorch Lightning saves a LightningModule: its state dict and
    hyper-parameters holding data-only metadata (paths, a Namespace, a datetime)."""
    torch.save(
        {
            "epoch": 3,
            "pytorch-lightning_version": "2.1.0",
            "state_dict": module.state_dict(),
            "hyper_parameters": {
                **hparams,
                "data_path": pathlib.PosixPath("/data/knee"),
                "args": argparse.Namespace(mode="train", root=pathlib.Path("logs")),
                "started": datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc),
            },
        },
        path,
    )
    return path


class Assets(SharedFiles):
    """Files several rows share, made on first use (a module-scoped folder; copy, don't edit)."""

    def program(self) -> Path:
        """``m.pt2``: NET exported for one (1, 1, 64, 64) input (fixed batch size and size)."""

        def make(path: Path) -> Path:
            from mri_audit.models.loading import load_model

            net = load_model(f"{write(self.root / 'net.py', NET)}:Net").module.eval()
            program = torch.export.export(net, (torch.randn(1, 1, 64, 64),))
            torch.export.save(program, str(path))
            return path

        return self._once("m.pt2", make)

    def data(self) -> Path:
        """``data/``: 3 single-coil volumes of one 64x64 slice (the size ``m.pt2`` takes)."""

        def make(path: Path) -> Path:
            from mri_audit.data.phantoms import synth_dataset

            synth_dataset(path, volumes=3, slices=1, size=64, coils=1, seed=3)
            return path

        return self._once("data", make)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    return Assets(tmp_path_factory.mktemp("errors_doc_model"))


def unet_module(**args) -> nn.Module:
    """fastMRI's ``UnetModule`` as Lightning sees it: the Unet under ``self.unet``."""
    from fastmri.models import Unet

    torch.manual_seed(0)
    module = nn.Module()
    module.unet = Unet(**args)
    return module


UNET_ARGS = {"in_chans": 1, "out_chans": 1, "chans": 4, "num_pool_layers": 2}


def model_args(args: dict) -> list[str]:
    return [x for key, value in args.items() for x in ("--model-arg", f"{key}={value}")]


# ---------------------------------------------------------------------------- loading


@scenario("model file missing")
def _model_file_missing(tmp_path, assets):
    return [check("x/net.py:Net")]


@scenario("syntax error")
def _syntax_error(tmp_path, assets):
    write("x/net.py", "def broken(:\n")
    return [check("x/net.py:Net")]


@scenario("raises on import")
def _raises_on_import(tmp_path, assets):
    write("x/net.py", "import torch\nimport foo\n")
    return [check("x/net.py:Net")]


@scenario("name missing")
def _name_missing(tmp_path, assets):
    write("net.py", NET + "def make_net():\n    return Net()\n")
    return [check("net.py:Nte")]


@scenario("not a module")
def _not_a_module(tmp_path, assets):
    write("net.py", "def Net():\n    return 3\n")
    return [check("net.py:Net")]


@scenario("constructor error")
def _constructor_error(tmp_path, assets):
    write("net.py", NET)
    return [check("net.py:Net", "--model-arg", "chans=32")]


@scenario("bad `--model-arg`")
def _bad_model_arg(tmp_path, assets):
    write("net.py", NET)
    return [check("net.py:Net", "--model-arg", "chans")]


# ---------------------------------------------------------------------------- weights


@scenario("weights missing")
def _weights_missing(tmp_path, assets):
    write("net.py", NET)
    return [check("net.py:Net", "--weights", "w.pt")]


@scenario("weights mismatched")
def _weights_mismatched(tmp_path, assets):
    wide = NET.replace("Conv2d(1, 1, k", "Conv2d(1, 16, k")
    wide = wide.replace("x + self.conv(x)", "self.conv(x).mean(1, keepdim=True)")
    write("net.py", wide)
    state = _net_state(NET.replace("Conv2d(1, 1, k", "Conv2d(1, 8, k"))
    del state["conv.bias"]
    state["head.weight"] = torch.zeros(1)
    torch.save(state, "w.pt")
    return [check("net.py:Net", "--weights", "w.pt")]


@scenario(
    "checkpoint metadata of data-only types (`pathlib` paths, `argparse.Namespace`, `datetime` values: fastMRI's Lightning hyper-parameters)"  # noqa: E501
)
def _checkpoint_metadata(tmp_path, assets):
    pytest.importorskip("fastmri")
    _lightning(unet_module(**UNET_ARGS), tmp_path / "unet.ckpt", UNET_ARGS)
    out = cli_outcome(
        "-v", "check", "--model", "fastmri.models:Unet", *model_args(UNET_ARGS),
        "--weights", "unet.ckpt", *TINY,
    )  # fmt: skip
    assert out.status == 0, out.output
    return [Outcome(None, out.output)]


@scenario(
    "keys under a prefix (`unet.`/`varnet.` of fastMRI's Lightning modules, `model.`, `net.`, `module.` of DataParallel, or several) that fit the model exactly once stripped"  # noqa: E501
)
def _keys_under_a_prefix(tmp_path, assets):
    pytest.importorskip("fastmri")
    module = unet_module(**UNET_ARGS)
    module.loss = nn.Module()
    module.loss.register_buffer("w", torch.ones(1, 1, 7, 7))  # as fastMRI's SSIMLoss
    _lightning(module, tmp_path / "unet.ckpt", UNET_ARGS)
    out = cli_outcome(
        "check", "--model", "fastmri.models:Unet", *model_args(UNET_ARGS),
        "--weights", "unet.ckpt", *TINY,
    )  # fmt: skip
    assert out.status == 0, out.output
    return [Outcome(None, out.output)]


@scenario("weights that do not fit even without their prefix")
def _weights_do_not_fit_without_prefix(tmp_path, assets):
    pytest.importorskip("fastmri")
    defaults = {"in_chans": 1, "out_chans": 1, "chans": 32, "num_pool_layers": 4}
    _lightning(unet_module(**defaults), tmp_path / "unet.ckpt", defaults)
    smaller = {**defaults, "chans": 4}
    return [
        check("fastmri.models:Unet", *model_args(smaller), "--weights", "unet.ckpt"),
    ]


@scenario("weights of another model class")
def _weights_of_another_model_class(tmp_path, assets):
    pytest.importorskip("fastmri")
    _lightning(unet_module(**UNET_ARGS), tmp_path / "unet.ckpt", UNET_ARGS)
    write("unet.py", NET.replace("class Net", "class UNet"))
    return [check("unet.py:UNet", "--weights", "unet.ckpt")]


@scenario("two sets of keys fit the model (e.g. `model.` and `ema.`)")
def _two_sets_of_keys(tmp_path, assets):
    write("net.py", NET)
    state = _net_state()
    both = {**{f"model.{k}": v for k, v in state.items()}}
    both.update({f"ema.{k}": v * 0.9 for k, v in state.items()})
    torch.save({"state_dict": both, "epoch": 3}, "w.ckpt")
    return [check("net.py:Net", "--weights", "w.ckpt")]


@scenario("a `.pt2` program or TorchScript file given as `--weights`")
def _program_as_weights(tmp_path, assets):
    from mri_audit.models.loading import load_model

    net = write("net.py", NET)
    shutil.copy(assets.program(), tmp_path)
    torch.jit.script(load_model(f"{net}:Net").module).save("m.ts")
    outcomes = [check("net.py:Net", "--weights", "m.pt2"), check("net.py:Net", "--weights", "m.ts")]
    assert "m.ts is a TorchScript model, not a state dict" in outcomes[1].output
    return outcomes


# ---------------------------------------------------------------------------- the dry run


@scenario("wrong output shape")
def _wrong_output_shape(tmp_path, assets):
    write("net.py", _returning("(x * self.w)[..., :5, :5]"))
    return [check("net.py:Net")]


@scenario("NaN/Inf output")
def _nan_output(tmp_path, assets):
    write("net.py", _returning("x * self.w * float('nan')"))
    return [check("net.py:Net")]


@scenario("complex output")
def _complex_output(tmp_path, assets):
    write("net.py", _returning("(x * self.w).to(torch.complex64)"))
    return [check("net.py:Net")]


@scenario("tensor on another device")
def _tensor_on_another_device(tmp_path, assets):
    write("net.py", _returning("torch.empty(x.shape, device='meta') * self.w"))
    return [check("net.py:Net")]


@scenario("output ignores its input")
def _output_ignores_its_input(tmp_path, assets):
    write("net.py", _returning("torch.ones_like(x) * self.w"))
    return [check("net.py:Net")]


@scenario("not differentiable (gradient attack asked)")
def _not_differentiable(tmp_path, assets):
    source = NET.replace(
        "return x + self.conv(x)", "with torch.no_grad():\n            return x + self.conv(x)"
    )
    write("net.py", source)
    out = cli_outcome(
        "run", "--model", "net.py:Net", *TINY, "--attacks", "fnaf-pgd", "--out", "out",
        "--no-progress",
    )  # fmt: skip
    assert not Path("out/results.json").exists()
    return [out]


@scenario("a model that raises on some slices during an audit")
def _model_raises_on_some_slices(tmp_path, assets):
    source = NET.replace("self.conv = ", "self.calls = 0\n        self.conv = ").replace(
        "return x + self.conv(x)",
        "self.calls += 1\n"
        "        if self.calls > 6 and self.calls % 4 == 0:  # the dry run makes 6 calls\n"
        "            raise RuntimeError('fails on every fourth call after the dry run')\n"
        "        return x + self.conv(x)",
    )
    write("net.py", source)
    out = cli_outcome(
        "run", "--model", "net.py:Net", "--max-volumes", "1", "--max-slices", "2",
        "--attacks", "fnaf-rs", "--candidates", "1", "--batch-size", "1", "--out", "out",
        "--no-progress",
    )  # fmt: skip
    assert out.status == 0, out.output
    results = json.loads(Path("out/results.json").read_text())
    assert results["failures"]["errors"] >= 1
    assert results["attacks"]["net.py:Net"]["fnaf-rs"]["slices"] >= 1  # the audit went on
    report = Path("out/report.html").read_text()
    assert "Slices not audited" in report
    records = [json.loads(line) for line in Path("out/records.jsonl").open()]
    errors = [r for r in records if r.get("kind") == "error"]
    assert errors and all("RuntimeError" in json.dumps(r) for r in errors), errors
    return [Outcome(None, "\n".join(json.dumps(r) for r in errors))]


# ---------------------------------------------------------------------------- .pt2 and harden


@scenario("TorchScript or `.pt2` given to `harden`")
def _program_given_to_harden(tmp_path, assets):
    from mri_audit.models.loading import load_model

    net = write("net.py", NET)
    shutil.copy(assets.program(), tmp_path)
    torch.jit.script(load_model(f"{net}:Net").module).save("m.ts")
    outcomes = []
    for model in ("m.pt2", "m.ts"):
        args = ["--model", model, "--data", str(assets.data()), "--epochs", "1", "--out", "o.pt"]
        outcomes.append(cli_outcome("harden", *args))
        assert not Path("o.pt").exists() and not Path("o.pt.ckpt").exists()  # no work done
    return outcomes


def test_harden_refuses_a_program_before_its_dry_run(tmp_path, monkeypatch, assets):
    """The row's "(before any work)": a .pt2 program that would fail the dry run (exported for
    64x64 inputs, given the built-in 160x160 phantoms) is refused as a program all the same."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(assets.program(), tmp_path)
    out = cli_outcome("harden", "--model", "m.pt2", "--epochs", "1", "--out", "o.pt")
    check_row("TorchScript or `.pt2` given to `harden`", [out])


@scenario("a `.pt2` program set to training mode from Python (`.train()`)")
def _program_trained(tmp_path, assets):
    from mri_audit.models.loading import load_model

    shutil.copy(assets.program(), tmp_path)
    model = load_model("m.pt2").module
    model.eval()  # accepted: the program runs as exported
    return [library_outcome(model.train)]


@scenario("`--model-arg` or `:Name` with a `.pt2` program")
def _model_arg_with_program(tmp_path, assets):
    shutil.copy(assets.program(), tmp_path)
    return [check("m.pt2", "--model-arg", "chans=3"), check("m.pt2:Net")]


@scenario("a `.pt2` program exported with a fixed batch size")
def _program_with_fixed_batch(tmp_path, assets):
    shutil.copy(assets.program(), tmp_path)
    out = check("m.pt2", "--data", str(assets.data()), "--batch-size", "4")
    assert out.status == 0, out.output
    return [Outcome(None, out.output)]


@scenario("a `.pt2` program exported for another image size")
def _program_for_another_size(tmp_path, assets):
    shutil.copy(assets.program(), tmp_path)
    return [check("m.pt2")]


@pytest.mark.parametrize("case", cases(__name__))
def test_documented(case, tmp_path, monkeypatch, assets):
    monkeypatch.chdir(tmp_path)
    check_row(case, SCENARIOS[case](tmp_path, assets))
