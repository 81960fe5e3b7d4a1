"""Tests for mri_audit.models.loading: loading user models from files, modules and TorchScript."""

from __future__ import annotations

import hashlib
import os
import random
import sys
import textwrap
from pathlib import Path

import fastmri.models
import fastmri.models.unet
import pytest
import torch
from fastmri.models import Unet, VarNet
from torch import nn

from mri_audit.errors import ModelError
from mri_audit.hashing import sha256_file
from mri_audit.models.loading import (
    LoadedModel,
    imported_packages,
    load_model,
    load_state_dict,
    parse_model_args,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)

FIXTURES = Path(__file__).parent / "fixtures"
UNET_ARGS = parse_model_args(["in_chans=1", "out_chans=1", "chans=4", "num_pool_layers=2"])
UNET_FILE = Path(fastmri.models.unet.__file__).resolve()  # imports only torch: loads as a file

NET_SOURCE = """\
import torch
from torch import nn


class Net(nn.Module):
    mri_audit_input = "kspace"

    def __init__(self, chans: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(1, chans, 3, padding=1)
        self.out = nn.Conv2d(chans, 1, 1)

    def forward(self, x):
        return self.out(torch.relu(self.conv(x)))


def make_net(chans: int = 2):
    return Net(chans)


def not_a_factory():
    return 3


class Plain:
    pass


CONSTANT = 7
"""


class _Blob:
    """A custom class: pickling an instance puts code references into a weights file."""

    def __init__(self) -> None:
        self.value = 1


def write(path: Path, text: str) -> Path:
    """Write dedented ``text`` to ``path`` (creating folders) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture()
def net_file(tmp_path: Path) -> Path:
    return write(tmp_path / "net.py", NET_SOURCE)


def model_error(fn, *args, **kwargs) -> str:
    """Run ``fn``, expect a ModelError, check it is one line, return its message."""
    with pytest.raises(ModelError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert info.value.exit_code == 5
    return message


def image(h: int = 12, w: int = 10) -> torch.Tensor:
    return torch.randn(2, 1, h, w, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------- spec forms


def test_file_spec_loads(net_file: Path) -> None:
    loaded = load_model(f"{net_file}:Net", model_args={"chans": 3})
    assert isinstance(loaded, LoadedModel)
    assert loaded.kind == "file" and loaded.name == "net.py:Net"
    assert loaded.source_path == net_file.resolve() and loaded.weights_path is None
    assert loaded.input_domain == "kspace" and loaded.spec == f"{net_file}:Net"
    assert loaded.module.conv.out_channels == 3
    assert loaded.module(image()).shape == (2, 1, 12, 10)


def test_relative_file_spec(net_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(net_file.parent.parent)
    loaded = load_model(f"{net_file.parent.name}/net.py:Net")
    assert loaded.source_path == net_file.resolve()


def test_module_spec_loads() -> None:
    """fastMRI's own Unet, named by its package: the source is the module named before ':'."""
    loaded = load_model("fastmri.models:Unet", model_args=UNET_ARGS)
    assert loaded.kind == "module" and loaded.name == "fastmri.models:Unet"
    assert type(loaded.module) is Unet and loaded.input_domain is None
    assert loaded.source_path == Path(fastmri.models.__file__)
    assert UNET_FILE in loaded.sources  # the package's loaded modules, the class's file among them
    assert loaded.module(image(13, 11)).shape == (2, 1, 13, 11)
    inner = load_model("fastmri.models.unet:Unet", model_args=UNET_ARGS)
    assert inner.name == "fastmri.models.unet:Unet" and type(inner.module) is Unet
    assert inner.source_path is not None and inner.source_path.resolve() == UNET_FILE


def test_factory_function(net_file: Path) -> None:
    loaded = load_model(f"{net_file}:make_net", model_args={"chans": 5})
    assert loaded.module.conv.out_channels == 5 and loaded.input_domain == "kspace"


def test_fixture_model_with_relative_sibling_import() -> None:
    spec = f"{FIXTURES / 'models' / 'tiny_image.py'}:make_tiny"
    loaded = load_model(spec, model_args={"chans": 3})
    assert loaded.input_domain == "image" and loaded.module(image()).shape == (2, 1, 12, 10)
    same = load_model("tests.fixtures.models.tiny_image:TinyImageNet")
    assert same.input_domain == "image"


def test_torchscript_file(tmp_path: Path, net_file: Path) -> None:
    model = load_model(f"{net_file}:Net").module.eval()
    path = tmp_path / "scripted.pt"
    torch.jit.script(model).save(str(path))
    loaded = load_model(str(path))
    assert loaded.kind == "torchscript" and loaded.name == "scripted.pt"
    assert loaded.source_path == path.resolve()
    x = image()
    assert torch.equal(loaded.module(x), model(x))


def test_forms_agree_for_the_same_weights(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = Unet(**UNET_ARGS)  # type: ignore[arg-type]
    weights = tmp_path / "unet.pt"
    torch.save(reference.state_dict(), weights)
    scripted = tmp_path / "unet_scripted.ts"
    torch.jit.script(reference.eval()).save(str(scripted))

    as_file = load_model(f"{UNET_FILE}:Unet", model_args=UNET_ARGS, weights=weights)
    as_module = load_model("fastmri.models:Unet", model_args=UNET_ARGS, weights=weights)
    as_script = load_model(str(scripted), weights=weights)
    assert as_file.weights_path == weights and as_file.kind == "file"
    assert type(as_file.module) is not Unet  # loaded afresh under its own module name
    x = image(17, 13)
    with torch.no_grad():
        outs = [m.module.eval()(x) for m in (as_file, as_module, as_script)]
        expected = reference(x)
    assert torch.equal(outs[0], expected) and torch.equal(outs[1], expected)
    assert torch.allclose(outs[2], expected, atol=1e-6)


def test_loading_a_file_twice_gives_fresh_modules(net_file: Path) -> None:
    first = load_model(f"{net_file}:Net").module
    second = load_model(f"{net_file}:Net").module
    assert first is not second and type(first).__module__ == type(second).__module__


def test_torchscript_keeps_final_input_domain(tmp_path: Path) -> None:
    path = write(
        tmp_path / "final.py",
        """\
        from typing import Final
        from torch import nn
        class Net(nn.Module):
            mri_audit_input: Final[str] = "kspace"
            def forward(self, x):
                return x
        """,
    )
    scripted = tmp_path / "final.pt"
    torch.jit.script(load_model(f"{path}:Net").module).save(str(scripted))
    assert load_model(str(scripted)).input_domain == "kspace"


def test_same_file_names_do_not_collide(tmp_path: Path) -> None:
    write(
        tmp_path / "a" / "net.py",
        """\
        from torch import nn
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = nn.Linear(2, 2)
            def forward(self, x):
                return self.a(x)
        """,
    )
    write(
        tmp_path / "b" / "net.py",
        """\
        from torch import nn
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.b = nn.Linear(2, 3)
            def forward(self, x):
                return self.b(x)
        """,
    )
    path_before = list(sys.path)
    first = load_model(f"{tmp_path / 'a' / 'net.py'}:Net").module
    second = load_model(f"{tmp_path / 'b' / 'net.py'}:Net").module
    assert sys.path == path_before
    assert type(first) is not type(second)
    assert type(first).__module__ != type(second).__module__
    assert type(first).__module__ in sys.modules and "net" not in sys.modules
    assert hasattr(first, "a") and hasattr(second, "b")
    assert first(torch.ones(1, 2)).shape == (1, 2) and second(torch.ones(1, 2)).shape == (1, 3)


HELPER_MODEL = """\
import helper
from . import helper as rel_helper
from .helper import Scale

from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = Scale(helper.FACTOR)
        self.rel_factor = rel_helper.FACTOR

    def forward(self, x):
        return self.scale(x)
"""

HELPER = """\
from torch import nn

FACTOR = {factor}


class Scale(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor
"""


def test_sibling_imports(tmp_path: Path) -> None:
    for folder, factor in (("one", 2), ("two", 3)):
        write(tmp_path / folder / "model.py", HELPER_MODEL)
        write(tmp_path / folder / "helper.py", HELPER.format(factor=factor))
    path_before, meta_before = list(sys.path), list(sys.meta_path)
    one = load_model(f"{tmp_path / 'one' / 'model.py'}:Net").module
    two = load_model(f"{tmp_path / 'two' / 'model.py'}:Net").module
    assert sys.path == path_before and sys.meta_path == meta_before
    assert "helper" not in sys.modules  # plain sibling imports do not leak
    assert (one.scale.factor, one.rel_factor) == (2, 2)
    assert (two.scale.factor, two.rel_factor) == (3, 3)
    assert torch.equal(two(torch.ones(2)), torch.full((2,), 3.0))


# ---------------------------------------------------------------------------- model args


def test_parse_model_args_literals() -> None:
    args = parse_model_args(
        ["chans=8", "name=foo", "xs=[1,2]", "flag=True", "p=0.5", "none=None", "s='a=b'", "e="]
    )
    assert args == {
        "chans": 8,
        "name": "foo",
        "xs": [1, 2],
        "flag": True,
        "p": 0.5,
        "none": None,
        "s": "a=b",
        "e": "",
    }
    assert parse_model_args([]) == {}


@pytest.mark.parametrize("pair", ["chans", "=3", "2x=1", "my-arg=1", " =1"])
def test_parse_model_args_rejects_bad_pairs(pair: str) -> None:
    assert "bad --model-arg" in model_error(parse_model_args, [pair])


def test_parse_model_args_rejects_duplicates() -> None:
    assert "given twice" in model_error(parse_model_args, ["a=1", "a=2"])


# ---------------------------------------------------------------------------- weights


@pytest.mark.parametrize(
    "form", ["bare", "state_dict", "model", "model_state_dict", "net", "ddp", "ddp_nested"]
)
def test_weights_forms(tmp_path: Path, net_file: Path, form: str) -> None:
    torch.manual_seed(2)
    source = load_model(f"{net_file}:Net").module
    sd = source.state_dict()
    payload = {
        "bare": sd,
        "state_dict": {"state_dict": sd, "epoch": 3},
        "model": {"model": sd, "optimizer": {"lr": 0.1}},
        "model_state_dict": {"model_state_dict": sd, "optimizer_state_dict": {"lr": 0.1}},
        "net": {"net": sd, "step": 10},
        "ddp": {f"module.{k}": v for k, v in sd.items()},
        "ddp_nested": {"state_dict": {f"module.model.{k}": v for k, v in sd.items()}},
    }[form]
    path = tmp_path / "w.pt"
    torch.save(payload, path)
    prefix = {"ddp": "module.", "ddp_nested": "module.model."}.get(form, "")
    assert set(load_state_dict(path)) == {prefix + k for k in sd}  # keys as stored
    loaded = load_model(f"{net_file}:Net", weights=path)
    x = image()
    assert torch.equal(loaded.module(x), source(x))


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"mri" * 1000)
    assert sha256_file(path) == hashlib.sha256(b"mri" * 1000).hexdigest()


# ---------------------------------------------------------------------------- errors: model


def test_error_file_not_found(tmp_path: Path) -> None:
    msg = model_error(load_model, "nowhere/x.py:Net")
    assert "model file not found: nowhere/x.py" in msg and "check the path before ':'" in msg


def test_error_syntax(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.py", "import torch\n\ndef f(:\n    pass\n")
    msg = model_error(load_model, f"{path}:Net")
    assert msg.startswith(f"syntax error in model file {path} line 3:")


def test_error_import(tmp_path: Path) -> None:
    path = write(tmp_path / "x.py", "import torch\n\nimport not_a_real_module_xyz\n")
    msg = model_error(load_model, f"{path}:Net")
    assert f"error importing model file {path} (line 3)" in msg
    assert "ModuleNotFoundError: No module named 'not_a_real_module_xyz'" in msg


def test_error_while_executing(tmp_path: Path) -> None:
    path = write(tmp_path / "x.py", "x = 1\ny = x / 0\n")
    msg = model_error(load_model, f"{path}:Net")
    assert "(line 2)" in msg and "ZeroDivisionError: division by zero" in msg
    assert not any(name.endswith(".x") and "mri_audit_user" in name for name in sys.modules)


def test_error_in_sibling_names_both_files(tmp_path: Path) -> None:
    write(tmp_path / "helper.py", "VALUE = 1\nraise RuntimeError('boom\\nsecond line')\n")
    path = write(tmp_path / "m.py", "from torch import nn\nimport helper\n")
    msg = model_error(load_model, f"{path}:Net")
    assert "(line 2, in helper.py line 2)" in msg and "RuntimeError: boom second line" in msg


def test_error_syntax_in_sibling(tmp_path: Path) -> None:
    write(tmp_path / "helper.py", "x = (\n")
    path = write(tmp_path / "m.py", "from . import helper\n")
    msg = model_error(load_model, f"{path}:Net")
    assert f"syntax error in model file {tmp_path / 'helper.py'} (imported by {path}) line 1" in msg


def test_error_module_not_importable() -> None:
    msg = model_error(load_model, "no_such_pkg_abc.mod:Net")
    assert msg.startswith("cannot import module 'no_such_pkg_abc.mod':")
    assert "No module named 'no_such_pkg_abc'" in msg


def test_error_name_missing(net_file: Path) -> None:
    msg = model_error(load_model, f"{net_file}:Nte")
    assert "no 'Nte' in net.py" in msg
    assert "nn.Module classes: Net; other callables: make_net, not_a_factory, Plain" in msg
    assert "did you mean 'Net'" in msg
    msg = model_error(load_model, "fastmri.models.unet:Nope")
    assert "no 'Nope' in fastmri.models.unet" in msg
    assert "nn.Module classes: Unet, ConvBlock, TransposeConvBlock" in msg


def test_error_spec_without_name(net_file: Path) -> None:
    msg = model_error(load_model, str(net_file))
    assert f"needs a class or factory name: {net_file}:Name" in msg
    assert "nn.Module classes: Net" in msg
    assert "needs a class or factory name" in model_error(load_model, "fastmri.models")


@pytest.mark.parametrize(
    ("name", "what"),
    [("not_a_factory", "it returned int"), ("CONSTANT", "it is int"), ("Plain", "class Plain")],
)
def test_error_not_a_module(net_file: Path, name: str, what: str) -> None:
    msg = model_error(load_model, f"{net_file}:{name}")
    assert f"net.py:{name} is not a torch.nn.Module subclass or a factory returning one" in msg
    assert what in msg


def test_error_constructor(net_file: Path) -> None:
    msg = model_error(load_model, f"{net_file}:Net", model_args={"chans": 3, "width": 2})
    assert msg.startswith("constructing net.py:Net(chans=3, width=2) failed: TypeError:")
    assert "width" in msg and msg.endswith("(check --model-arg)")


def test_error_bad_spec() -> None:
    assert "is not a file.py:Name" in model_error(load_model, "not a spec!")


def test_error_bad_input_domain(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.py",
        "from torch import nn\nclass Net(nn.Identity):\n    mri_audit_input = 'pixels'\n",
    )
    assert "set it to 'image' or 'kspace'" in model_error(load_model, f"{path}:Net")


# ---------------------------------------------------------------------------- errors: weights


def test_error_weights_missing(net_file: Path) -> None:
    msg = model_error(load_model, f"{net_file}:Net", weights="missing.pt")
    assert "weights file not found: missing.pt" in msg


def test_error_weights_corrupt(tmp_path: Path, net_file: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(bytes(range(255, -1, -1)) * 8)  # 0xff: not a pickle opcode
    assert "is corrupt or not a PyTorch file" in model_error(load_state_dict, garbage)
    # Random bytes fail in the unpickler or just after it, by their first bytes: every way is
    # one clear line that calls the file corrupt.
    rng = random.Random(0)
    for i in range(20):
        random_bytes = tmp_path / f"random{i}.pt"
        random_bytes.write_bytes(bytes(rng.randrange(256) for _ in range(2000)))
        msg = model_error(load_state_dict, random_bytes)
        assert "corrupt" in msg and "\n" not in msg, msg
    good = tmp_path / "good.pt"
    torch.save(load_model(f"{net_file}:Net").module.state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:300])
    msg = model_error(load_model, f"{net_file}:Net", weights=truncated)
    assert "cannot read weights file" in msg and "truncated, corrupt" in msg
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert "cannot read weights file" in model_error(load_state_dict, empty)


def test_error_weights_pickled_code(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "extra": _Blob()}, path)
    msg = model_error(load_state_dict, path)
    assert "holds pickled Python objects" in msg and "weights_only=True" in msg
    assert "_Blob" in msg and "if you trust the file, convert it once with: python -c" in msg
    assert f"torch.save(ck['state_dict'], '{tmp_path}/pickled.state_dict.pt')" in msg


@pytest.mark.parametrize(
    ("payload", "what"),
    [([torch.ones(1)], "a list"), ({"epoch": 3, "lr": 0.1}, "keys epoch, lr")],
)
def test_error_weights_not_a_state_dict(tmp_path: Path, payload: object, what: str) -> None:
    path = tmp_path / "w.pt"
    torch.save(payload, path)
    msg = model_error(load_state_dict, path)
    assert "is not a state dict" in msg and what in msg


def test_error_weights_mismatch(tmp_path: Path, net_file: Path) -> None:
    sd = load_model(f"{net_file}:Net", model_args={"chans": 4}).module.state_dict()
    del sd["out.bias"]
    sd["extra.weight"] = torch.ones(1)
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    msg = model_error(load_model, f"{net_file}:Net", weights=path)
    assert msg.startswith("weights w.pt do not fit net.py:Net: missing keys: out.bias;")
    assert "unexpected keys: extra.weight" in msg
    assert "shape mismatch: conv.weight (checkpoint [4, 1, 3, 3] vs model [2, 1, 3, 3])" in msg


def test_error_weights_many_missing_keys_are_cut(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({}, path)
    msg = model_error(load_model, "fastmri.models:Unet", model_args=UNET_ARGS, weights=path)
    assert "missing keys:" in msg and "more)" in msg


# ---------------------------------------------------------------------------- errors: TorchScript


def test_error_torchscript_not_torchscript(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(1)}, path)
    msg = model_error(load_model, str(path))
    assert "is not TorchScript" in msg and f"--model file.py:Name --weights {path}" in msg
    garbage = tmp_path / "garbage.ts"
    garbage.write_bytes(os.urandom(500))
    msg = model_error(load_model, str(garbage))
    assert f"cannot load {garbage} as TorchScript" in msg and "--weights" in msg
    assert "model file not found" in model_error(load_model, str(tmp_path / "none.pt"))


def test_error_torchscript_with_model_args(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.jit.script(nn.Linear(2, 2)).save(str(path))
    msg = model_error(load_model, str(path), model_args={"chans": 3})
    assert "--model-arg does not apply to TorchScript" in msg
    assert "takes no ':Name'" in model_error(load_model, f"{path}:Net")


def test_torchscript_weights_and_torchscript_as_weights(tmp_path: Path) -> None:
    linear = nn.Linear(2, 2)
    path = tmp_path / "m.pt"
    torch.jit.script(nn.Linear(2, 2)).save(str(path))
    weights = tmp_path / "w.pt"
    torch.save(linear.state_dict(), weights)
    loaded = load_model(str(path), weights=weights)
    assert torch.equal(loaded.module(torch.ones(1, 2)), linear(torch.ones(1, 2)))
    assert "is a TorchScript model, not a state dict" in model_error(load_state_dict, path)


# ---------------------------------------------------------------------------- fastMRI's models


def test_fastmri_varnet_layouts() -> None:
    """fastMRI's VarNet takes the layouts mri-audit gives a k-space model: k-space as a real view
    (B, coils, H, W, 2), a bool mask (B, 1, 1, W, 1), an optional num_low_frequencies; it returns
    the RSS magnitude (B, H, W)."""
    torch.manual_seed(0)
    net = VarNet(num_cascades=2, sens_chans=4, sens_pools=2, chans=4, pools=2)
    for coils in (1, 3):
        kspace = torch.randn(2, coils, 20, 18, 2)
        mask = torch.zeros(2, 1, 1, 18, 1, dtype=torch.bool)
        mask[..., 7:11, :] = True
        mask[..., ::4, :] = True
        out = net(kspace * mask, mask)
        assert out.shape == (2, 20, 18) and torch.isfinite(out).all()
        assert net(kspace * mask, mask, 4).shape == (2, 20, 18)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    loaded = load_model(
        "fastmri.models:VarNet",
        model_args=parse_model_args(["num_cascades=1", "sens_chans=2", "chans=2", "pools=2"]),
    )
    assert type(loaded.module) is VarNet and loaded.input_domain is None


def test_model_packages_follow_what_is_installed(tmp_path: Path, monkeypatch) -> None:
    """The provenance's package list sees a distribution installed after an earlier audit."""
    import types

    site = tmp_path / "site"
    (site / "mriauditfakedep").mkdir(parents=True)
    (site / "mriauditfakedep" / "__init__.py").write_text("")
    module = types.ModuleType("mriaudit_fake_model")
    module.dep = types.ModuleType("mriauditfakedep")
    module.Net = type("Net", (nn.Module,), {"__module__": "mriaudit_fake_model"})
    monkeypatch.setitem(sys.modules, "mriaudit_fake_model", module)
    monkeypatch.syspath_prepend(str(site))
    assert "mriauditfakedep" not in imported_packages(module.Net())
    info = site / "mriauditfakedep-1.2.3.dist-info"
    info.mkdir()  # installed now: the folder on sys.path has changed
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mriauditfakedep\nVersion: 1.2.3\n")
    (info / "top_level.txt").write_text("mriauditfakedep\n")
    os.utime(site, ns=(1, 1))  # a coarse filesystem clock must not hide the change either
    assert imported_packages(module.Net())["mriauditfakedep"] == "1.2.3"
