"""Damaged weights, programs and TorchScript files are refused by their zip CRC-32 before torch
reads them; loading failures of ``.pt2`` and TorchScript files print one line; a checkpoint
whose pickle would run code is refused as such, with no ``weights_only=False`` recipe."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import random
import shutil
import struct
import sys
import types
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

from mri_audit.cli import cli
from mri_audit.errors import ModelError
from mri_audit.models.archive import pickle_globals, runs_code
from mri_audit.models.checkpoints import read_checkpoint
from mri_audit.models.exported import quiet_torchscript
from tests.test_checkpoints import _lightning_checkpoint

ROOT = Path(__file__).resolve().parents[1]
UNET_WEIGHTS = ROOT / "examples" / "weights" / "unet_4x.pt"
CRC = "fails its CRC-32 check (the file was changed or truncated after it was saved); "
FIX = "re-download or re-save it"
NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.out = nn.Conv2d(2, 1, 1)

    def forward(self, x):
        return x + self.out(torch.relu(self.conv(x)))
"""


def _net() -> nn.Module:
    namespace: dict = {}
    exec(NET, namespace)  # noqa: S102 - the same class the CLI imports from net.py
    torch.manual_seed(0)
    return namespace["Net"]().eval()


def _cli(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _lines(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


def _member(path: Path, suffix: str) -> tuple[str, int, int]:
    """The name, data offset and size of the first member of ``path`` named ``...suffix``."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(suffix))
    with path.open("rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    return info.filename, info.header_offset + 30 + name_len + extra_len, info.file_size


def _damage(path: Path, suffix: str, out: Path) -> str:
    """Copy ``path`` to ``out`` with 4 bytes inverted inside one member's data; its name."""
    name, start, size = _member(path, suffix)
    data = bytearray(path.read_bytes())
    at = start + size // 2 - 2
    data[at : at + 4] = bytes(b ^ 0xFF for b in data[at : at + 4])
    out.write_bytes(data)
    return name


def _program(path: Path) -> Path:
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(_net(), (torch.randn(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def _torchscript(path: Path) -> Path:
    with quiet_torchscript():
        torch.jit.trace(_net(), torch.randn(2, 1, 8, 8)).save(str(path))
    return path


def _lightning(path: Path) -> Path:
    module = nn.Module()
    module.model = _net()
    return _lightning_checkpoint(module, path, {"lr": 1e-3})


# ---------------------------------------------------------------------------- CRC-32


def test_damaged_weights_are_refused_before_the_audit(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    member = _damage(UNET_WEIGHTS, "/data/3", bad)
    # torch alone reads the damaged file without a word, as another model:
    good = torch.load(UNET_WEIGHTS, weights_only=True)
    silent = torch.load(bad, weights_only=True)
    assert any(not torch.equal(silent[k], good[k]) for k in good)
    out = tmp_path / "out"
    result = _cli("run", "--model", f"{ROOT / 'examples' / 'unet.py'}:UNet", "--weights", bad,
                  "--out", out, "--max-volumes", "1", "--max-slices", "1")  # fmt: skip
    assert result.exit_code == 5, result.output
    assert _lines(result) == [
        f"Error: weights file {bad} is damaged: its member {member!r} {CRC}{FIX}"
    ]
    assert not any((out / name).exists() for name in ("records.jsonl", "results.json"))


@pytest.mark.parametrize("kind", ["pt2", "torchscript", "ckpt"])
def test_damaged_programs_and_checkpoints_are_refused(tmp_path: Path, kind: str) -> None:
    net = tmp_path / "net.py"
    net.write_text(NET)
    build, suffix, member_suffix = {
        "pt2": (_program, ".pt2", "/weights/weight_0"),
        "torchscript": (_torchscript, ".ts", "/data/0"),
        "ckpt": (_lightning, ".ckpt", "/data/0"),
    }[kind]
    good = build(tmp_path / f"good{suffix}")
    bad = tmp_path / f"bad{suffix}"
    member = _damage(good, member_suffix, bad)
    if kind == "ckpt":
        spec, what = ["--model", f"{net}:Net", "--weights", bad], "weights file"
        assert read_checkpoint(good).state.keys() == {f"model.{k}" for k in _net().state_dict()}
    else:
        spec, what = ["--model", bad], "model file"
    out = tmp_path / "out"
    result = _cli("run", *spec, "--out", out, "--max-volumes", "1", "--max-slices", "1")
    assert result.exit_code == 5, result.output
    assert _lines(result) == [f"Error: {what} {bad} is damaged: its member {member!r} {CRC}{FIX}"]
    assert not (out / "records.jsonl").exists()


def _central_entry(data: bytes, name: bytes) -> int:
    """Where the central-directory entry of the member ``name`` begins."""
    entry = -1
    while data[entry + 46 : entry + 46 + struct.unpack_from("<H", data, entry + 28)[0]] != name:
        entry = data.index(b"PK\x01\x02", entry + 1)
    return entry


def test_a_member_marked_as_a_folder_is_refused(tmp_path: Path) -> None:
    """torch reads a member whose central-directory entry has the MS-DOS folder bit as empty,
    and builds its tensor from uninitialised memory; the CRC-32 alone does not catch it."""
    path = tmp_path / "w.pt"
    torch.save(_net().state_dict(), path)
    data = bytearray(path.read_bytes())
    data[_central_entry(data, b"w/data/0") + 38] |= 0x10  # external attributes
    path.write_bytes(data)
    with pytest.raises(ModelError, match=r"its member 'w/data/0' is marked as a folder"):
        read_checkpoint(path)


def test_a_member_name_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = _program(tmp_path / "m.pt2")
    data = bytearray(path.read_bytes())
    data[_central_entry(data, b"m/archive_format") + 46 + 3] = 0xFF  # 'm/a\xffchive_format'
    path.write_bytes(data)
    result = _cli("check", "--model", path)
    assert result.exit_code == 5, result.output
    assert _lines(result) == [
        f"Error: cannot read model file {path}: it is truncated, corrupt or not a torch file (it "
        "begins as a zip archive, but its zip directory cannot be read: 'utf-8' codec can't "
        "decode byte 0xff in position 3: invalid start byte); re-download or re-save it"
    ]


def test_random_byte_flips_are_refused_or_harmless(tmp_path: Path) -> None:
    """Flip one byte anywhere in a small weights file, 40 times: either the file is refused
    (ModelError, exit 5) or the loaded state dict is the original, tensor for tensor. Flips in
    what neither zipfile nor torch reads (alignment padding, timestamps, attributes) are
    harmless; flips in a member's data, a name, an offset or a size are refused."""
    original = _net().state_dict()
    path = tmp_path / "w.pt"
    torch.save(original, path)
    raw = path.read_bytes()
    rng = random.Random(0)
    outcomes = {"refused": 0, "same": 0}
    for _ in range(40):
        data = bytearray(raw)
        at = rng.randrange(len(data))
        data[at] ^= rng.randrange(1, 256)
        path.write_bytes(data)
        try:
            state = read_checkpoint(path).state
        except ModelError as err:
            assert err.exit_code == 5 and "\n" not in str(err)
            outcomes["refused"] += 1
            continue
        assert state.keys() == original.keys(), at
        for key, value in original.items():
            assert state[key].dtype == value.dtype and torch.equal(state[key], value), (at, key)
        outcomes["same"] += 1
    assert outcomes["refused"] >= 1 and outcomes["same"] >= 1, outcomes


def test_legacy_files_load_unchecked(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save(_net().state_dict(), path, _use_new_zipfile_serialization=False)
    assert read_checkpoint(path).state.keys() == _net().state_dict().keys()


# ---------------------------------------------------------------------------- one line


@contextlib.contextmanager
def _torch_printing() -> Iterator[tuple[list[logging.LogRecord], list]]:
    """What torch would print: records reaching its loggers' handlers, and its warnings."""
    seen: list[logging.LogRecord] = []
    spy = logging.Handler()
    spy.emit = seen.append  # type: ignore[method-assign]
    loggers = [logging.getLogger("torch")] + [
        log
        for name, log in list(logging.Logger.manager.loggerDict.items())
        if name.startswith("torch.") and isinstance(log, logging.Logger) and log.handlers
    ]
    for log in loggers:
        log.addHandler(spy)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield seen, caught
    finally:
        for log in loggers:
            log.removeHandler(spy)


def _bad_program(tmp_path: Path, case: str) -> Path:
    path = tmp_path / f"{case}.pt2"
    if case == "truncated":
        data = _program(tmp_path / "good.pt2").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "text":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("notes.txt", "not a program")
    else:
        torch.save(_net().state_dict(), path)
    return path


@pytest.mark.parametrize(
    ("case", "cause"),
    [
        ("truncated", "it is truncated, corrupt or not a torch file"),
        ("text", "as a torch.export program (RuntimeError: file in archive is not in a subdir"),
        ("state_dict", "as a torch.export program (it is a torch.save file: weights, a check"),
    ],
)
def test_program_load_failures_print_one_line(tmp_path: Path, case: str, cause: str) -> None:
    path = _bad_program(tmp_path, case)
    with _torch_printing() as (printed, warned):
        result = _cli("check", "--model", path)
    assert result.exit_code == 5, result.output
    lines = _lines(result)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and cause in lines[0], lines
    assert not printed, [r.getMessage() for r in printed]
    assert not [w for w in warned if "torch" in str(w.filename)], [str(w.message) for w in warned]


def test_torchscript_load_failure_prints_one_line(tmp_path: Path) -> None:
    path = tmp_path / "notes.ts"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("notes/constants.pkl", b"not a pickle")
    with _torch_printing() as (printed, _):
        result = _cli("check", "--model", path)
    assert result.exit_code == 5, result.output
    assert len(_lines(result)) == 1 and "cannot load" in result.output and not printed


def test_what_torch_logged_is_kept_for_verbose(tmp_path: Path, caplog) -> None:
    path = _bad_program(tmp_path, "text")
    with caplog.at_level(logging.INFO, logger="mri_audit"):
        result = _cli("-v", "check", "--model", path)
    assert result.exit_code == 5, result.output
    kept = [r.getMessage() for r in caplog.records if r.name.startswith("mri_audit.models")]
    assert any("torch logged while loading it" in m and "Traceback" in m for m in kept), kept
    assert len(_lines(result)) == 1 and result.output.startswith("Error: cannot load")


# ---------------------------------------------------------------------------- pickled code


class _RunsCommand:
    def __reduce__(self):
        return os.system, ("true",)


class _Evaluates:
    def __reduce__(self):
        return eval, ("1 + 1",)


@pytest.mark.parametrize(
    ("payload", "protocol", "named"),
    [(_RunsCommand, 2, f"{os.system.__module__}.system"), (_Evaluates, 4, "builtins.eval")],
)
def test_a_checkpoint_that_runs_code_is_refused_as_such(
    tmp_path: Path, payload: type, protocol: int, named: str
) -> None:
    net = tmp_path / "net.py"
    net.write_text(NET)
    ckpt = tmp_path / "evil.ckpt"
    checkpoint = {"state_dict": _net().state_dict(), "hook": payload()}
    torch.save(checkpoint, ckpt, pickle_module=pickle, pickle_protocol=protocol)
    with zipfile.ZipFile(ckpt) as zf:
        assert named in pickle_globals(zf.read("evil/data.pkl"))  # read, never run
    with _torch_printing() as (_, warned):  # protocol 4: torch warns that it is not its default
        result = _cli("check", "--model", f"{net}:Net", "--weights", ckpt)
    assert not [w for w in warned if "torch" in str(w.filename)], [str(w.message) for w in warned]
    assert result.exit_code == 5, result.output
    assert _lines(result) == [
        f"Error: weights file {ckpt} would execute code when loaded: its pickle calls {named}, "
        "which runs commands or code on this machine; it was refused without running anything, "
        "and it must not be loaded, not even to convert it: get the weights from a source you "
        "trust"
    ]
    assert "weights_only=False" not in result.output


def test_a_harmless_foreign_class_keeps_the_conversion_recipe(tmp_path, monkeypatch) -> None:
    module = types.ModuleType("mymodule")
    Config = type("Config", (), {"__module__": "mymodule"})  # noqa: N806
    module.Config = Config
    monkeypatch.setitem(sys.modules, "mymodule", module)
    ckpt = tmp_path / "x.ckpt"
    torch.save({"state_dict": _net().state_dict(), "config": Config()}, ckpt)
    monkeypatch.delitem(sys.modules, "mymodule")
    net = tmp_path / "net.py"
    net.write_text(NET)
    result = _cli("check", "--model", f"{net}:Net", "--weights", ckpt)
    assert result.exit_code == 5, result.output
    (line,) = _lines(result)
    assert f"weights file {ckpt} holds pickled Python objects (mymodule.Config)" in line
    assert "would execute code" not in line
    assert f"torch.load('{ckpt}', weights_only=False)" in line


@pytest.mark.parametrize(
    "name",
    ["posix.system", "nt.system", "os.popen", "os.execvp", "os.spawnl", "subprocess.Popen",
     "subprocess.check_output", "builtins.eval", "builtins.exec", "builtins.compile",
     "builtins.__import__", "__builtin__.eval", "pty.spawn", "runpy.run_path",
     "importlib.import_module", "pickle.loads", "_pickle.loads", "code.interact"],
)  # fmt: skip
def test_code_running_globals(name: str) -> None:
    assert runs_code(name)


@pytest.mark.parametrize(
    "name",
    ["mymodule.Config", "collections.OrderedDict", "torch._utils._rebuild_tensor_v2",
     "pathlib.PosixPath", "os.path.join", "argparse.Namespace", "numpy.dtype"],
)  # fmt: skip
def test_harmless_globals(name: str) -> None:
    assert not runs_code(name)


def test_weights_file_copied_intact_loads(tmp_path: Path) -> None:
    copy = tmp_path / "w.pt"
    shutil.copyfile(UNET_WEIGHTS, copy)
    assert read_checkpoint(copy).state.keys() == torch.load(UNET_WEIGHTS, weights_only=True).keys()


def test_a_damaged_harden_checkpoint_is_refused_before_resuming(tmp_path: Path) -> None:
    from mri_audit.errors import ModelError
    from mri_audit.harden.resume import checkpoint_identity

    ckpt = tmp_path / "robust.pt.ckpt"
    state = {"format": "mri-audit-harden-1", "model": _net().state_dict(), "identity": {}}
    torch.save(state, ckpt)
    bad = tmp_path / "bad.ckpt"
    member = _damage(ckpt, "/data/0", bad)
    with pytest.raises(ModelError, match=f"harden checkpoint {bad} is damaged: its member"):
        checkpoint_identity(bad, {})
    assert member
