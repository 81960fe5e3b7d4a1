"""docs/errors.md, section Model: corrupt and damaged weights, program and TorchScript files,
checkpoints that would run code or hold foreign classes, and ``.pt2`` files torch cannot load.

Each scenario runs the CLI inside its own folder with relative paths, so the output is exactly
what the document shows (see :mod:`tests.errors_doc`).
"""

from __future__ import annotations

import contextlib
import pickle
import random
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mri_audit.cli import cli
from tests.errors_doc import SCENARIOS, Outcome, cases, check_row, scenario
from tests.test_weights_integrity import (
    NET,
    _damage,
    _net,
    _program,
    _RunsCommand,
    _torchscript,
)


def _folder(tmp_path: Path, name: str) -> Path:
    """A fresh folder holding the model file ``net.py``."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "net.py").write_text(NET)
    return folder


def _run(folder: Path, *args: str) -> Outcome:
    """``mri-audit check ARGS`` with ``folder`` as the working directory."""
    with contextlib.chdir(folder):
        result = CliRunner().invoke(cli, ["check", *args])
    return Outcome(result.exit_code, result.output)


def _weights(folder: Path, *args: str) -> Outcome:
    return _run(folder, "--model", "net.py:Net", "--weights", *args)


@contextlib.contextmanager
def _foreign_class() -> type:
    """A class ``mymodule.Config`` that can be pickled (its module exists while saving)."""
    module = types.ModuleType("mymodule")
    module.Config = type("Config", (), {"__module__": "mymodule"})
    sys.modules["mymodule"] = module
    try:
        yield module.Config
    finally:
        del sys.modules["mymodule"]


@scenario("weights corrupt")
def _corrupt(tmp_path: Path) -> list[Outcome]:
    noise = _folder(tmp_path, "noise")
    (noise / "w.pt").write_bytes(random.Random(0).randbytes(2000))
    legacy = _folder(tmp_path, "legacy")
    torch.save(_net().state_dict(), legacy / "w.pt", _use_new_zipfile_serialization=False)
    data = (legacy / "w.pt").read_bytes()
    (legacy / "w.pt").write_bytes(data[: len(data) // 2])
    return [_weights(noise, "w.pt"), _weights(legacy, "w.pt")]


@scenario(
    "damaged weights, program or TorchScript file (a zip member fails its CRC-32 check or is marked as a folder, or the archive is cut short; checked before torch reads the file)"  # noqa: E501
)
def _damaged(tmp_path: Path) -> list[Outcome]:
    weights = _folder(tmp_path, "weights")
    torch.save(_net().state_dict(), weights / "w.pt")
    _damage(weights / "w.pt", "/data/0", weights / "w.pt")
    program = _folder(tmp_path, "program")
    _damage(_program(program / "m.pt2"), "/weights/weight_0", program / "m.pt2")
    script = _folder(tmp_path, "script")
    data = _torchscript(script / "m.ts").read_bytes()
    (script / "m.ts").write_bytes(data[: len(data) // 2])
    return [
        _weights(weights, "w.pt"),
        _run(program, "--model", "m.pt2"),
        _run(script, "--model", "m.ts"),
    ]


@scenario(
    "a checkpoint that would execute code (its pickle calls os.system, subprocess, eval, exec, importlib, pickle.loads, ...: found by reading the pickle, never by running it)"  # noqa: E501
)
def _runs_code(tmp_path: Path) -> list[Outcome]:
    folder = _folder(tmp_path, "evil")
    checkpoint = {"state_dict": _net().state_dict(), "hook": _RunsCommand()}
    torch.save(checkpoint, folder / "evil.ckpt", pickle_module=pickle)
    outcome = _weights(folder, "evil.ckpt")
    assert "weights_only=False" not in outcome.output  # no recipe to load it
    return [outcome]


@scenario(
    "pickled code in weights (a checkpoint holding a class, function or container beyond the data-only types below, none of which runs code; nothing is run)"  # noqa: E501
)
def _foreign(tmp_path: Path) -> list[Outcome]:
    outcomes = []
    for key in ("state_dict", "model_state_dict"):
        folder = _folder(tmp_path, key)
        with _foreign_class() as config:
            torch.save({key: _net().state_dict(), "config": config()}, folder / "x.ckpt")
        outcomes.append(_weights(folder, "x.ckpt"))
    return outcomes


@scenario("not a loadable `.pt2` program")
def _not_a_program(tmp_path: Path) -> list[Outcome]:
    other = _folder(tmp_path, "other")
    with zipfile.ZipFile(other / "m.pt2", "w") as zf:
        zf.writestr("notes.txt", "not a program")
    weights = _folder(tmp_path, "weights")
    torch.save(_net().state_dict(), weights / "m.pt2")
    outcomes = [_run(other, "--model", "m.pt2"), _run(weights, "--model", "m.pt2")]
    for outcome in outcomes:  # torch's logged traceback is not printed
        assert len([line for line in outcome.output.splitlines() if line.strip()]) == 1
    return outcomes


@pytest.mark.parametrize("case", cases(__name__))
def test_documented(case: str, tmp_path: Path) -> None:
    check_row(case, SCENARIOS[case](tmp_path))
