"""docs/errors.md, "Feature-recovery map (`map`)": every row reproduced through the CLI.

The grid is checked before any model is loaded, so its scenarios cost nothing; one tiny real
map (``MAP``: two single-slice volumes, one of them too bright for its model, which then returns
NaN) serves the rows about a folder holding a map, re-reading a map, and non-finite outputs.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest
from click.testing import CliRunner

from mri_audit.cli import cli
from mri_audit.data.phantoms import synth_dataset
from tests.errors_doc import SCENARIOS, Outcome, cases, check_row, scenario

NET = """
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
    def forward(self, x):
        return x * self.w
"""

# Loses its way on bright inputs (run with --normalize none, so it sees raw magnitudes): its
# output is NaN on every slice whose zero-filled peak exceeds 0.01.
BRIGHT_NAN = """
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
    def forward(self, x):
        bright = x.flatten(1).amax(1) > 0.01
        return torch.where(bright[:, None, None, None], float("nan"), x * self.w)
"""

GRID = ["--shapes", "disk", "--sizes", "disk=2", "--contrasts", "1", "--draws", "2"]


def _cli(args: list[str]):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="mri-audit")


def _outcome(result) -> Outcome:
    assert "Traceback" not in result.output, result.output
    return Outcome(result.exit_code, result.output)


class Made(NamedTuple):
    folder: Path  # holds MAP, x/, data/
    output: str  # what `map` printed


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Made:
    """The map ``MAP`` of ``x/bright_nan.py:Net`` on ``data``: volume file_sc_0000.h5 as
    synthesized (peak about 6e-4), file_sc_0001.h5 scaled by 1000 (NaN outputs)."""
    import h5py

    root = tmp_path_factory.mktemp("errors_doc_map")
    (root / "x").mkdir()
    (root / "x" / "bright_nan.py").write_text(BRIGHT_NAN)
    data = root / "data"
    synth_dataset(
        data, prefix="file_sc", volumes=2, slices=1, size=64, coils=1, kspace_shape=(128, 72)
    )
    with h5py.File(data / "file_sc_0001.h5", "r+") as f:
        for key in ("kspace", "reconstruction_esc"):
            f[key][...] = f[key][...] * 1000
        f.attrs["max"] = f.attrs["max"] * 1000
    with contextlib.chdir(root):
        args = ["map", "--model", "x/bright_nan.py:Net", "--normalize", "none"]
        result = _cli([*args, "--data", "data", *GRID, "--out", "MAP", "--no-progress"])
    assert result.exit_code == 0, result.output
    return Made(root, result.output)


class Env(NamedTuple):
    tmp: Path  # the working directory
    made: Made | None


def _map(*extra) -> Outcome:
    """``mri-audit map`` of ``x/net.py:Net`` on the built-in phantoms, into ``out``."""
    Path("x").mkdir(exist_ok=True)
    Path("x/net.py").write_text(NET)
    result = _cli(["map", "--model", "x/net.py:Net", *extra, "--out", "out", "--no-progress"])
    assert not Path("out").exists(), "a bad grid left an --out behind"
    return _outcome(result)


# ------------------------------------------------------------------------------ the grid


@scenario("`--sizes` not `SHAPE=a,b,c`, or a shape given twice")
def _sizes_not_shape_equals(env: Env):
    return [_map("--sizes", "disk"), _map("--sizes", "disk=1", "--sizes", "disk=2")]


@scenario("a size that is not a number, not positive, or a fractional walk")
def _size_not_a_number(env: Env):
    return [_map("--sizes", "disk=1,x"), _map("--sizes", "disk=0"), _map("--sizes", "walk=2.5")]


@scenario("sizes of a shape not in `--shapes`, an unknown shape")
def _sizes_of_an_unknown_shape(env: Env):
    return [_map("--sizes", "blob=1"), _map("--shapes", "blob")]


@scenario("a contrast outside (0, 1] or not a number")
def _contrast_out_of_range(env: Env):
    return [_map("--contrasts", "0.5,1.5"), _map("--contrasts", "0.1,abc")]


# ------------------------------------------------------------------------------ files


@scenario("`--out` already holds a map or an audit")
def _out_holds_results(env: Env):
    shutil.copytree(env.made.folder / "x", "x")
    shutil.copytree(env.made.folder / "data", "data")
    args = ["map", "--model", "x/bright_nan.py:Net", "--normalize", "none", "--data", "data"]
    args += [*GRID, "--out", "out", "--no-progress"]
    shutil.copytree(env.made.folder / "MAP", "out")
    holds_map = _outcome(_cli(args))
    # An audit stopped before its first batch was kept: its journal holds only the header.
    shutil.rmtree("out")
    Path("out").mkdir()
    Path("out/records.jsonl").write_text(json.dumps({"kind": "header", "audit": "0" * 16}) + "\n")
    holds_audit = _outcome(_cli(args))
    assert "out already holds results (records.jsonl); use --force" in holds_audit.output
    assert Path("out/records.jsonl").exists()
    forced = _cli([*args, "--force"])  # removes the old audit, writes the map
    assert forced.exit_code == 0, forced.output
    files = sorted(p.name for p in Path("out").iterdir() if not p.name.startswith("."))
    assert files == ["map.csv", "report.html", "results.json"]
    return [holds_map, holds_audit]


@scenario(
    "`report MAP/results.json --criterion X` (or `--margin`, `--min-recovery`, `--threshold`)"
)
def _report_rereads_a_map(env: Env):
    shutil.copytree(env.made.folder / "MAP", "MAP")
    before = sorted(p.name for p in Path("MAP").iterdir())
    outcomes = [
        _outcome(_cli(["report", "MAP/results.json", *option]))
        for option in (
            ["--criterion", "paper"],
            ["--margin", "0.2"],
            ["--min-recovery", "0.6"],
            ["--threshold", "0.01"],
        )
    ]
    assert sorted(p.name for p in Path("MAP").iterdir()) == before  # nothing written
    return outcomes


@scenario("a slice whose model output is not finite")
def _slice_not_finite(env: Env):
    folder = env.made.folder / "MAP"
    table = pd.read_csv(folder / "map.csv")
    # 2 draws on each of 2 slices were scored; the bright volume's are NaN and left out.
    assert "(4 features in" in env.made.output
    assert table["features"].tolist() == [2] and table["volumes"].tolist() == [1]
    cell = json.loads((folder / "results.json").read_text())["map"]["cells"][0]
    assert cell["n"] == 2 and cell["erasure"]["total"] == 2 and cell["r"]["n"] == 2
    return [Outcome(None, env.made.output), Outcome(None, (folder / "map.csv").read_text())]


NEEDS_THE_MAP = {
    "`--out` already holds a map or an audit",
    "`report MAP/results.json --criterion X` (or `--margin`, `--min-recovery`, `--threshold`)",
    "a slice whose model output is not finite",
}


@pytest.mark.parametrize("case", cases(__name__))
def test_documented(case, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    made = request.getfixturevalue("made") if case in NEEDS_THE_MAP else None
    check_row(case, SCENARIOS[case](Env(tmp_path, made)))
