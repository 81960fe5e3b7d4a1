"""The feature-recovery map (`mri-audit map`): its numbers, its statistics, its files and report."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
from html import unescape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from mri_audit.audit.map_stats import clustered_mean, smallest_recovered, t_quantile
from mri_audit.audit.recovery_map import (
    Cell,
    MapGrid,
    _shape_features,
    candidate_number,
    recovery_map,
)
from mri_audit.cli import cli
from mri_audit.data.datasets import open_dataset
from mri_audit.models.estimator import Reconstructor
from mri_audit.mri.physics import make_mask_func
from mri_audit.report.html import render_report
from tests.report_fixture import build_audit_folder
from tests.test_report import CHECKER, _chromium, data_uris, headless

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SIZE = 160  # the built-in phantoms


def _example(name: str, cls: str):
    spec = importlib.util.spec_from_file_location(f"_map_examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, cls)


class BoxBlur(torch.nn.Module):
    """A ``k x k`` box blur (replicate-padded): keeps constants, so it commutes with the
    instance normalisation; ``k = 1`` is the identity."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x):
        p = self.k // 2
        return torch.nn.functional.avg_pool2d(
            torch.nn.functional.pad(x, (p, p, p, p), mode="replicate"), self.k, stride=1
        )


class SmallNet(torch.nn.Module):
    """A small nonlinear conv net with fixed random weights."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(4, 1, 3, padding=1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3

    def forward(self, x):
        return x + self.b(torch.tanh(self.a(x)))


def model(module: torch.nn.Module) -> Reconstructor:
    return Reconstructor(module.eval(), target_shape=(SIZE, SIZE))


@pytest.fixture(scope="module")
def dataset():
    return open_dataset(None, max_volumes=2, max_slices=2)


MASK = make_mask_func("random", 4)
SMALL = dict(
    shapes=("walk", "disk", "line"),
    sizes={"walk": (3, 20), "disk": (1, 4), "line": (4, 20)},
    contrasts=(0.1, 1.0),
    draws=2,
)


def _map(models, dataset, **kw):
    return recovery_map(models, dataset, mask_func=MASK, **{**SMALL, **kw})


def _cells(section, model=None):
    return {
        (c["shape"], c["size"], c["contrast"]): c
        for c in section["cells"]
        if model is None or c["model"] == model
    }


def _numbers(section) -> dict:
    """Everything but the timing."""
    return {k: v for k, v in section.items() if k != "elapsed_seconds"}


# ------------------------------------------------------------------------------ the numbers


@pytest.fixture(scope="module")
def zero_and_median(dataset):
    zf = model(_example("zero_filled", "ZeroFilled")())
    med = model(_example("median_filter", "MedianFilter")(5))
    return _map([("zf", zf), ("median", med)], dataset, batch_size=16)


def test_zero_filled_recovers_exactly_what_the_data_carries(zero_and_median):
    section = zero_and_median
    cells = _cells(section, "zf")
    assert len(cells) == 12 and section["slices"] == 4 and section["volumes"] == 2
    for key, c in cells.items():
        assert c["n"] == 8, key  # 4 slices x 2 draws, all finite
        assert c["r"]["mean"] == pytest.approx(c["r0"]["mean"], abs=1e-5), key
        assert c["erasure"]["value"] == 0 and c["erasure"]["count"] == 0, key
    assert section["curves"]["zf"] == section["evidence"]
    assert section["features_scored"] == 2 * 4 * 12 * 2
    # Relative to the data, zero-filling shows everything it carries: r / r0 = 1 in every cell,
    # so its relative curve is the smallest size of the grid wherever r0 is not ~0.
    grid_sizes = {"walk": 3, "disk": 1, "line": 4}
    for shape, values in section["relative_curves"]["zf"].items():
        assert values == [grid_sizes[shape]] * 2, shape


def test_relative_curve_reads_mean_r_over_mean_r0():
    """Hand case: sizes 1, 2, 4 at one contrast; r/r0 = 0.15/0.4, 0.3/0.5, 0.4/0.6 reaches 0.5 at
    size 2 relative to the data, while r >= 0.5 is never reached; r0 below 0.01 never counts."""
    from mri_audit.audit.map_grid import MapGrid
    from mri_audit.audit.recovery_map import MapSamples, summarize_map

    grid = MapGrid.make(["disk"], {"disk": [1, 2, 4]}, [0.5], draws=1)
    cells = grid.cells()
    r = np.array([0.15, 0.3, 0.4], dtype=np.float64).reshape(1, 1, 3, 1)
    r0 = np.array([0.4, 0.5, 0.6], dtype=np.float64).reshape(1, 1, 3, 1)
    hit = np.zeros_like(r, dtype=bool)
    samples = MapSamples(("m",), tuple(cells), ("v",), (0,), r, r0, hit)
    section = summarize_map(samples, grid)
    assert section["curves"]["m"]["disk"] == [None]
    assert section["relative_curves"]["m"]["disk"] == [2]
    r0_low = np.array([0.005, 0.005, 0.6]).reshape(1, 1, 3, 1)
    low = MapSamples(("m",), tuple(cells), ("v",), (0,), r, r0_low, hit)
    assert summarize_map(low, grid)["relative_curves"]["m"]["disk"] == [4]


def test_median_filter_loses_every_feature_below_its_window(zero_and_median):
    """A 5x5 median removes features narrower than its window (1-px lines, radius-1 disks) at
    every contrast, although the data carries them."""
    cells = _cells(zero_and_median, "median")
    thin = [k for k in cells if k[0] == "line" or (k[0] == "disk" and k[1] == 1)]
    assert len(thin) == 6
    for key in thin:
        c = cells[key]
        assert c["erasure"]["count"] == c["erasure"]["total"] == 8, key
        assert c["r"]["mean"] < 0.3 and c["r0"]["mean"] > 0.3, key
    assert zero_and_median["curves"]["median"]["line"] == [None, None]
    assert 4 not in zero_and_median["relative_curves"]["median"]["line"]  # the 4-px line is lost


def test_blur_width_grows_the_smallest_recovered_disk(dataset):
    """The contrast-detail curve of a box blur rises with its width (1 is the identity)."""
    models = [(f"box{k}", model(BoxBlur(k))) for k in (1, 3, 5)]
    section = _map(
        models,
        dataset,
        shapes=("disk",),
        sizes={"disk": (1, 2, 3, 4, 6, 8)},
        contrasts=(0.3, 1.0),
        batch_size=24,
    )

    def rank(v):
        return math.inf if v is None else v

    curves = [section["curves"][n]["disk"] for n, _ in models]
    for j in range(2):
        sizes = [rank(c[j]) for c in curves]
        assert sizes == sorted(sizes), curves
    assert any(rank(curves[2][j]) > rank(curves[0][j]) for j in range(2)), curves
    assert curves[0] == section["evidence"]["disk"]  # the identity recovers what the data shows
    for cell in _cells(section, "box1"):
        r = [_cells(section, n)[cell]["r"]["mean"] for n, _ in models]
        assert r[0] > r[1] > r[2], (cell, r)


def test_batch_size_does_not_change_the_map(dataset):
    net = model(SmallNet())
    small = _map([("net", net)], dataset, batch_size=2)
    large = _map([("net", net)], dataset, batch_size=16)
    a, b = _cells(small), _cells(large)
    assert a.keys() == b.keys()
    for key in a:
        for q in ("r", "r0"):
            assert a[key][q]["mean"] == pytest.approx(b[key][q]["mean"], rel=1e-4, abs=1e-6)
        assert a[key]["erasure"]["count"] == b[key]["erasure"]["count"], key
    assert small["curves"] == large["curves"] and small["evidence"] == large["evidence"]


def test_same_seed_same_map_other_seed_other_placements(dataset):
    net = model(SmallNet())
    first = _map([("net", net)], dataset, batch_size=8, seed=3)
    again = _map([("net", net)], dataset, batch_size=8, seed=3)
    other = _map([("net", net)], dataset, batch_size=8, seed=4)
    assert _numbers(first) == _numbers(again)
    differ = [
        k for k, c in _cells(first).items() if c["r0"]["mean"] != _cells(other)[k]["r0"]["mean"]
    ]
    assert len(differ) >= 10


def test_placements_depend_on_seed_slice_cell_and_draw_only(dataset):
    """A placement is keyed by (seed, volume, slice, cell, draw): the same in a grid with other
    cells and draws, different for another seed."""
    from mri_audit.fnaf.features import prepare_context
    from mri_audit.mri.physics import volume_seed

    sample = dataset[0]
    ctx = prepare_context(
        sample.kspace[None],
        target_shape=(SIZE, SIZE),
        volumes=[sample.volume],
        slices=[sample.slice],
        mask_for=lambda v, n: MASK(n, seed=volume_seed(v)),
    )
    big = MapGrid.make(("disk",), {"disk": (2, 5)}, (0.2, 0.6), draws=3)
    small = MapGrid.make(("disk",), {"disk": (5,)}, (0.6,), draws=1)
    fb_big, where_big = _shape_features(ctx, big, "disk", seed=0)
    fb_small, _ = _shape_features(ctx, small, "disk", seed=0)
    # (disk, 5, 0.6, draw 0): size index 1, contrast index 1, draw 0 of 2 sizes x 2 x 3 draws
    i = int((where_big == 1 * 6 + 1 * 3 + 0).nonzero()[0])
    assert int(fb_big.rows[i, 0]) == int(fb_small.rows[0, 0])
    assert int(fb_big.cols[i, 0]) == int(fb_small.cols[0, 0])
    other, _ = _shape_features(ctx, big, "disk", seed=1)
    assert not torch.equal(other.rows[:, 0], fb_big.rows[:, 0])
    numbers = {candidate_number(c, k) for c in big.cells() for k in range(3)}
    assert len(numbers) == 12 and all(0 <= n < 2**31 for n in numbers)
    assert candidate_number(Cell("disk", 5, 0.6), 0) == candidate_number(Cell("disk", 5.0, 0.6), 0)


def test_grid_is_checked():
    grid = MapGrid.make(("line", "walk"), {"walk": (10, 3, 3)}, (1.0, 0.1), draws=2)
    assert grid.sizes_of("walk") == (3, 10) and grid.contrasts == (0.1, 1.0)
    assert grid.sizes_of("line") == (4, 8, 12, 20, 30, 40)
    assert len(grid.cells()) == (2 + 6) * 2
    for kwargs, message in (
        (dict(shapes=("blob",)), "unknown shape"),
        (dict(sizes={"disk": (0,)}), "positive"),
        (dict(sizes={"walk": (2.5,)}), "whole numbers"),
        (dict(shapes=("walk",), sizes={"disk": (1,)}), "not among the shapes"),
        (dict(contrasts=(1.5,)), "(0, 1]"),
        (dict(contrasts=(float("nan"),)), "(0, 1]"),
        (dict(draws=0), "draws"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            MapGrid.make(**kwargs)


# ----------------------------------------------------------------------------- statistics


def test_t_quantiles():
    for df, value in ((1, 12.7062047), (2, 4.3026527), (3, 3.1824463), (5, 2.5705818)):
        assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-6)
    assert t_quantile(0.975, 10_000) == pytest.approx(1.959964, abs=1e-3)
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 4, 7, 12, 29, 100):
        for p in (0.5, 0.9, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), abs=1e-8)


def test_clustered_mean_by_hand():
    # Volume A: 0.1, 0.3 (mean 0.2); volume B: 0.5, 0.7 (mean 0.6). Mean 0.4.
    # Cluster-robust: k = 2, residual sums -0.4 and 0.4, V = 2/1 * 0.32 / 16 = 0.04, so the
    # half-width is t(0.975, 1) * 0.2 = 2.5412; the independent one, t(0.975, 3) * sd / 2 with
    # sd = sqrt(0.2 / 3), is 0.4108: the clustered one is wider and wins.
    out = clustered_mean([0.1, 0.3, 0.5, 0.7], ["A", "A", "B", "B"])
    half = 12.7062047 * 0.2
    assert out["mean"] == pytest.approx(0.4)
    assert out["low"] == pytest.approx(0.4 - half, abs=1e-6)
    assert out["high"] == pytest.approx(0.4 + half, abs=1e-6)
    assert (out["n"], out["clusters"]) == (4, 2)
    # Volumes that agree: the cluster-robust variance is 0; the independent interval remains.
    same = clustered_mean([0.1, 0.3, 0.1, 0.3], ["A", "A", "B", "B"])
    half = 3.1824463 * math.sqrt(0.04 / 3) / 2
    assert same["low"] == pytest.approx(0.2 - half, abs=1e-6)
    # One volume: the independent interval; one value: none; NaN left out.
    one = clustered_mean([0.1, 0.3, float("nan")], ["A", "A", "A"])
    assert one["n"] == 2 and one["high"] == pytest.approx(0.2 + 12.7062047 * 0.1, abs=1e-6)
    assert clustered_mean([0.5], ["A"])["low"] is None
    assert clustered_mean([], [])["mean"] is None


def test_smallest_recovered():
    assert smallest_recovered((1, 2, 4), (0.2, 0.5, 0.9)) == 2
    assert smallest_recovered((1, 2, 4), (0.2, None, 0.49)) is None
    assert smallest_recovered((1, 2, 4), (0.6, 0.4, 0.9), 0.5) == 1


# ------------------------------------------------------------------------------- CLI, files

ARGS = [
    "--max-volumes", "2", "--max-slices", "2", "--shapes", "disk,line",
    "--sizes", "disk=1,4", "--sizes", "line=4,20", "--contrasts", "0.2,1", "--draws", "1",
    "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def cli_map(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("map") / "m"
    models = ["--model", str(EXAMPLES / "zero_filled.py") + ":ZeroFilled"]
    models += ["--compare", f"median={EXAMPLES / 'median_filter.py'}:MedianFilter"]
    result = CliRunner().invoke(cli, ["map", *models, *ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Smallest size with mean r >= 0.5" in result.output
    assert "Smallest size with mean r >= 0.5 x mean r0 (relative to the data)" in result.output
    return out


def test_cli_writes_csv_results_and_report(cli_map):
    res = json.loads((cli_map / "results.json").read_text())
    assert res["kind"] == "map" and res["complete"] is True
    assert [m["name"] for m in res["models"]] == ["zero_filled.py:ZeroFilled", "median"]
    assert res["config"]["shapes"] == ["disk", "line"] and res["config"]["draws"] == 1
    assert res["data"]["kind"] == "synthetic" and res["data"]["slices"] == 4
    section = res["map"]
    assert section["grid"]["sizes"] == {"disk": [1, 4], "line": [4, 20]}
    assert section["grid"]["contrasts"] == [0.2, 1.0]
    frame = pd.read_csv(cli_map / "map.csv")
    assert len(frame) == 2 * 8 and set(frame["model"]) == {"zero_filled.py:ZeroFilled", "median"}
    row = frame[(frame["model"] == "median") & (frame["shape"] == "line")].iloc[0]
    cell = next(
        c
        for c in section["cells"]
        if (c["model"], c["shape"], c["size"], c["contrast"]) == ("median", "line", 4, 0.2)
    )
    assert row["r_mean"] == pytest.approx(cell["r"]["mean"])
    assert row["erasure_rate"] == pytest.approx(cell["erasure"]["value"])
    assert row["size_unit"] == "length (px)" and row["features"] == 4 and row["volumes"] == 2
    html = (cli_map / "report.html").read_text()
    assert 'id="map"' in html and "Contrast-detail curves" in html
    assert len(data_uris(html)) == 1 + 2 * 2  # curves, then r and erasure heatmaps per shape
    # `mri-audit report` re-renders the map from results.json alone.
    (cli_map / "report.html").unlink()
    result = CliRunner().invoke(cli, ["report", str(cli_map / "results.json")])
    assert result.exit_code == 0, result.output
    assert (cli_map / "report.html").read_text() == html
    # A map has no journal to re-read under another criterion: one line, exit 2.
    reread = CliRunner().invoke(
        cli, ["report", str(cli_map / "results.json"), "--criterion", "paper"]
    )
    assert reread.exit_code == 2, reread.output
    assert "is a feature-recovery map, not an audit" in reread.output
    assert "records.jsonl" not in reread.output and len(reread.output.strip().splitlines()) == 1


def test_cli_refuses_an_existing_map_unless_forced(cli_map, tmp_path):
    out = tmp_path / "again"
    out.mkdir()
    (out / "map.csv").write_text("old")
    args = ["map", "--model", str(EXAMPLES / "zero_filled.py") + ":ZeroFilled", *ARGS]
    result = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert result.exit_code == 2
    line = result.output.strip().splitlines()
    assert len(line) == 1 and "already holds results (map.csv)" in line[0] and "--force" in line[0]
    result = CliRunner().invoke(cli, [*args, "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert (out / "map.csv").read_text() != "old"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sizes", "disk"], "--sizes needs SHAPE=a,b,c"),
        (["--sizes", "disk=1,x"], "--sizes disk= needs comma-separated numbers"),
        (["--sizes", "disk=0,2"], "--sizes: disk sizes must be positive numbers"),
        (["--sizes", "blob=1"], "--sizes: sizes given for 'blob'"),
        (["--sizes", "disk=1", "--sizes", "disk=2"], "gives 'disk' twice"),
        (["--contrasts", "0.1,abc"], "--contrasts needs comma-separated numbers"),
        (["--contrasts", "0.5,1.5"], "--contrasts: contrasts must be in (0, 1]"),
        (["--shapes", "disk,blob"], "--shapes: unknown shape 'blob'"),
        (["--draws", "0"], "--draws must be an integer >= 1, got '0'"),
    ],
)
def test_cli_bad_grid_is_one_line(tmp_path, extra, message):
    out = tmp_path / "bad"
    args = ["map", "--model", str(EXAMPLES / "zero_filled.py") + ":ZeroFilled"]
    result = CliRunner().invoke(cli, [*args, *extra, "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines
    assert not out.exists()


def test_audit_report_shows_a_map_section(tmp_path, zero_and_median):
    """`run --map` stores the section under results["map"]; the audit's report then shows it."""
    results = build_audit_folder(tmp_path, slices=2, images=False)
    plain = render_report(results).read_text()
    assert 'id="map"' not in plain and 'href="#map"' not in plain
    res = json.loads(results.read_text())
    res["map"] = zero_and_median
    results.write_text(json.dumps(res))
    html = render_report(results).read_text()
    assert 'id="map"' in html and 'href="#map"' in html
    assert 'id="map-curve-disk"' in html and "zero-filled evidence" in html


# ------------------------------------------------------------------------------- Chromium


@pytest.mark.browser
def test_map_report_in_headless_chromium(cli_map, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium or chromium-browser binary on PATH (apt-get install chromium)")
    html = (cli_map / "report.html").read_text()
    checked = html.replace("script-src 'none'", "script-src 'unsafe-inline'")
    page = tmp_path / "checked.html"
    page.write_text(checked.replace("<head>", "<head>\n" + CHECKER, 1), encoding="utf-8")
    run = subprocess.run(
        [
            *headless(chromium, tmp_path),
            "--virtual-time-budget=10000",
            "--window-size=900,1200",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    title = re.search(r"<title>CHECK:(.*?)</title>", run.stdout, re.S)
    assert title, "the checker did not run: " + run.stdout[:500]
    summary = json.loads(unescape(title.group(1)))
    assert summary["errors"] == []
    assert len(summary["images"]) == 5 and all(summary["images"]), summary["images"]
    assert summary["viewport"] == 900 and summary["width"] <= 900, summary
    assert '<section id="map">' in run.stdout and 'id="map-curve-line"' in run.stdout
    assert np.all([m in run.stdout for m in ("Recovery r", "Evidence r₀", "Erasure rate")])


# ------------------------------------------------------------------------------- benchmark


def test_bench_map_figures_are_consistent(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "bench_map_under_test", ROOT / "benchmarks" / "bench_map.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "figures.json"
    args = ["--chans", "2", "--pools", "1", "--size", "32", "--slices", "2", "--draws", "1"]
    args += ["--shapes", "disk", "--contrasts", "0.5,1", "--repeats", "1", "--device", "cpu"]
    figures = bench.main([*args, "--json", str(out)])
    assert json.loads(out.read_text()) == pytest.approx(figures)
    assert figures["cells"] == 6 * 2 and figures["features"] == 2 * 12
    assert figures["features_scored"] == figures["features"]
    assert figures["map_vs_floor"] == pytest.approx(
        figures["map_features_per_s"] / figures["floor_features_per_s"]
    )
    assert figures["map_cells_per_s"] == pytest.approx(figures["cells"] / figures["map_seconds"])
    assert figures["model_work_bound"] == pytest.approx(12 / 13)
