"""Feature shapes (walk, disk, line) against hand-computed cases and independent references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from attacks.finite_difference import FiniteDifference
from mri_audit import rng
from mri_audit.fnaf.features import decode_features, encode_features, paint, random_walks
from mri_audit.fnaf.shapes import SHAPES, check_shape, draw_features
from tests.fnaf_helpers import Identity, context, estimator, smooth_slices

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
S8, S10 = 3.5 - math.sqrt(8), 3.5 - math.sqrt(10)
# Weights of a disk of radius 3 by hand: 1 where ρ <= 2.5, 3.5 - ρ up to 3.5 (ρ² = 8, 9, 10).
DISK3 = np.array(
    [
        [0, 0, S10, 0.5, S10, 0, 0],
        [0, S8, 1, 1, 1, S8, 0],
        [S10, 1, 1, 1, 1, 1, S10],
        [0.5, 1, 1, 1, 1, 1, 0.5],
        [S10, 1, 1, 1, 1, 1, S10],
        [0, S8, 1, 1, 1, S8, 0],
        [0, 0, S10, 0.5, S10, 0, 0],
    ]
)


def _keys(ctx, n, k):
    return torch.arange(n).repeat_interleave(k), torch.arange(k).repeat(n)


def _pixels(f, i):
    """{(row, col): value} of feature ``i``'s valid pixels."""
    ok = f.valid[i]
    rows, cols, vals = f.rows[i][ok].tolist(), f.cols[i][ok].tolist(), f.values[i][ok].tolist()
    return {(r, c): v for r, c, v in zip(rows, cols, vals, strict=True)}


def _span(ctx, s):
    return float(ctx.t_max[s] - ctx.t_min[s])


def test_disk_of_radius_3_matches_the_hand_table():
    ctx = context(smooth_slices(2, h=64, w=64))
    si, cand = _keys(ctx, 2, 5)
    f = draw_features(ctx, si, cand, shape="disk", size=3, contrast=1.0)
    assert f.rows.shape[1] == 37 and bool(f.valid.all())  # 37 pixels of weight > 0
    for i in range(f.count):
        r0, c0 = int(f.rows[i, 0]), int(f.cols[i, 0])  # the centre comes first
        table = np.zeros((7, 7))
        for (r, c), v in _pixels(f, i).items():
            table[r - r0 + 3, c - c0 + 3] = v / _span(ctx, int(f.slice_index[i]))
        np.testing.assert_allclose(table, DISK3, rtol=1e-6, atol=1e-7)
    # Its area: the weights sum to about πR².
    assert float(DISK3.sum()) == pytest.approx(28.388, abs=1e-3)


def _line_reference(r0, c0, theta, length, width, shape):
    """The documented line profile, in float64 numpy over the whole image."""
    rr, cc = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    a, b = rr - r0, cc - c0
    along = np.abs(-a * np.sin(theta) + b * np.cos(theta))
    across = np.abs(a * np.cos(theta) + b * np.sin(theta))
    ramp = lambda x, half: np.clip(half + 0.5 - x, 0, 1)  # noqa: E731
    return ramp(across, width / 2) * ramp(along, length / 2)


@pytest.mark.parametrize("width", [1.0, 2.5])
def test_line_profile_length_and_angle(width):
    ctx = context(smooth_slices(1, h=96, w=96))
    k, length = 24, 20.0
    si, cand = _keys(ctx, 1, k)
    f = draw_features(ctx, si, cand, shape="line", size=length, width=width)
    d, _ = paint(f, ctx.target_shape)
    keys = rng.candidate_keys(0, ctx.volume_keys[si], ctx.slices[si], cand)
    thetas = (math.pi * rng.uniform(keys, 5, torch.float64)).tolist()
    span = _span(ctx, 0)
    for i, theta in enumerate(thetas):
        weight = d[i].double().numpy() / span
        ref = _line_reference(
            int(f.rows[i, 0]), int(f.cols[i, 0]), theta, length, width, d[i].shape
        )
        np.testing.assert_allclose(weight, ref, rtol=1e-5, atol=1e-6)
        # Pixel moments: the long axis gives the angle and, as a trapezoid (box ℓ * box 1),
        # variance (ℓ² + 1)/12 along it; the weights sum to about ℓ · w.
        rr, cc = np.nonzero(weight)
        w = weight[rr, cc]
        y, x = -(rr - np.average(rr, weights=w)), cc - np.average(cc, weights=w)
        cov = np.cov(np.stack([x, y]), aweights=w, bias=True)
        vals, vecs = np.linalg.eigh(cov)
        est = math.atan2(vecs[1, 1], vecs[0, 1]) % math.pi
        diff = abs(est - theta) % math.pi
        assert min(diff, math.pi - diff) < math.radians(2 if width > 1 else 3)
        # A one-pixel line near 45° is point-sampled coarsely: within a pixel of its length.
        assert math.sqrt(12 * vals[1] - 1) == pytest.approx(
            length, abs=0.75 if width == 1 else 0.35
        )
        assert w.sum() == pytest.approx(length * width, rel=0.04)
        if width > 1:
            assert math.sqrt(12 * vals[0] - 1) == pytest.approx(width, abs=0.1)


def test_every_shape_replays_exactly_and_is_batch_invariant():
    ctx = context(smooth_slices(3))
    si, cand = _keys(ctx, 3, 50)
    settings = {
        "walk": {"size": (3, 12), "contrast": None},
        "disk": {"size": (1.0, 5.0), "contrast": 0.4},
        "line": {"size": 12.0, "width": 2.0, "contrast": 0.7},
    }
    for shape, kw in settings.items():
        f = draw_features(ctx, si, cand, shape=shape, seed=3, **kw)
        enc = encode_features(f)
        g = decode_features(enc, f.slice_index.tolist())
        assert all(
            torch.equal(x, y)
            for x, y in zip(paint(f, ctx.target_shape), paint(g, ctx.target_shape), strict=True)
        )
        for idx in (0, 77, 149):  # candidate c of slice s alone equals it in a batch of 150
            one = draw_features(
                ctx, si[idx : idx + 1], cand[idx : idx + 1], shape=shape, seed=3, **kw
            )
            assert encode_features(one)[0] == enc[idx], shape
        other = draw_features(ctx, si, cand, shape=shape, seed=4, **kw)
        assert encode_features(other) != enc, f"the seed changes the {shape}s"


def test_centre_first_and_in_window_and_soft_pixels_once():
    ctx = context(smooth_slices(2, h=64, w=64), window=0.375)
    win = ctx.window
    si, cand = _keys(ctx, 2, 40)
    for shape in ("disk", "line"):
        f = draw_features(ctx, si, cand, shape=shape, size=6.0)
        assert bool(((f.rows[:, 0] >= win.top) & (f.rows[:, 0] < win.top + win.height)).all())
        assert bool(((f.cols[:, 0] >= win.left) & (f.cols[:, 0] < win.left + win.width)).all())
        span = (ctx.t_max - ctx.t_min)[si]
        assert torch.allclose(f.values[:, 0], span)  # full weight at the centre
        assert bool((f.values[f.valid] > 0).all()) and bool((f.values[~f.valid] == 0).all())
        lin = f.rows * 64 + f.cols
        for i in range(f.count):  # each pixel once
            assert lin[i][f.valid[i]].unique().numel() == int(f.valid[i].sum())
        # Valid pixels are packed first.
        assert bool((f.valid.int().diff(dim=1) <= 0).all())
    # The walk is the existing random walk.
    w = draw_features(ctx, si, cand, shape="walk", size=7, seed=2)
    ref = random_walks(ctx, si, cand, steps=7, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(w, ref, strict=True))
    # Whole-number floats are walk lengths too (a map's size grid may be floats).
    for size in (7.0, torch.full((si.numel(),), 7.0)):
        w2 = draw_features(ctx, si, cand, shape="walk", size=size, seed=2)
        assert all(torch.equal(x, y) for x, y in zip(w2, ref, strict=True))


def test_clipped_at_the_image_edge():
    ctx = context(smooth_slices(1, h=32, w=32), window=(0, 0, 1, 1))  # the centre is (0, 0)
    si, cand = _keys(ctx, 1, 3)
    f = draw_features(ctx, si, cand, shape="disk", size=3, contrast=1.0)
    # The quarter of the hand table with a, b >= 0.
    expected = {(a, b) for a in range(4) for b in range(4) if DISK3[a + 3, b + 3] > 0}
    for i in range(f.count):
        assert set(_pixels(f, i)) == expected
    assert bool((f.rows >= 0).all() and (f.cols >= 0).all())  # invalid slots too
    d, support = paint(f, ctx.target_shape)
    assert int(support[0].sum()) == len(expected) == 13
    line = draw_features(ctx, si, cand, shape="line", size=30.0, width=3.0)
    assert bool((line.rows >= 0).all() and (line.cols >= 0).all() and (line.rows < 32).all())
    paint(line, ctx.target_shape)


def test_per_feature_contrast_and_size_tensors():
    ctx = context(smooth_slices(2))
    si, cand = _keys(ctx, 2, 6)
    contrast = torch.linspace(0.05, 1.0, 12)
    radius = torch.tensor([1.0, 2.0, 3.5, 0.4, 2.0, 1.0] * 2)
    f = draw_features(ctx, si, cand, shape="disk", size=radius, contrast=contrast)
    for i in range(12):
        one = draw_features(
            ctx,
            si[i : i + 1],
            cand[i : i + 1],
            shape="disk",
            size=float(radius[i]),
            contrast=float(contrast[i]),
        )
        assert encode_features(one)[0] == encode_features(f)[i]
    span = (ctx.t_max - ctx.t_min)[si]
    centre = (radius + 0.5).clamp(max=1.0)  # a disk under half a pixel is one faint pixel
    torch.testing.assert_close(f.values[:, 0], contrast * span * centre)
    assert f.valid[3].sum() == 1 and f.valid[2].sum() == 45  # ρ < 4: 45 pixels
    # Walks: a contrast gives every step c · (max t - min t); a steps tensor truncates walks.
    steps = torch.tensor([1, 4, 9, 10, 2, 3] * 2)
    w = draw_features(ctx, si, cand, shape="walk", size=steps, contrast=contrast)
    assert w.valid.sum(1).tolist() == steps.tolist()
    torch.testing.assert_close(w.values, (contrast * span)[:, None].expand_as(w.values))
    ref = random_walks(ctx, si, cand, steps=10)
    assert torch.equal(w.rows, ref.rows)


def test_bad_settings_are_refused():
    ctx = context(smooth_slices(1))
    one = torch.zeros(1, dtype=torch.int64)
    for shape, kw in [
        ("oval", {}),
        ("disk", {"size": 0}),
        ("disk", {"size": (4.0, 2.0)}),
        ("walk", {"size": 2.5}),
        ("line", {"width": 0.0}),
        ("disk", {"contrast": 1.5}),
        ("disk", {"contrast": torch.tensor([0.0])}),
        ("disk", {"size": torch.tensor([1.0, 2.0])}),
    ]:
        with pytest.raises(ValueError):
            draw_features(ctx, one, one, shape=shape, **kw)
    check_shape("line", size=(4, 40), width=0.5, contrast=0.05)


def test_fd_moves_a_shapes_centre_and_keeps_it_whole():
    ctx = context(smooth_slices(2, h=64, w=64))
    si, cand = _keys(ctx, 2, 4)
    f = draw_features(ctx, si, cand, shape="disk", size=4.0)
    win = ctx.window
    row = torch.full((f.count,), win.top + 10)
    col = torch.full((f.count,), win.left + win.width - 1)  # at the window's right edge
    g = FiniteDifference._place(ctx, f, row, col)
    assert bool((g.rows[:, 0] == row).all())
    assert bool((g.cols[:, 0] == win.left + win.width - 1 - 4).all())  # kept inside the window
    dr, dc = int(g.rows[0, 0] - f.rows[0, 0]), int(g.cols[0, 0] - f.cols[0, 0])
    assert _pixels(g, 0) == {(r + dr, c + dc): v for (r, c), v in _pixels(f, 0).items()}
    # A disk larger than the window stays whole inside the target.
    big = draw_features(ctx, si, cand, shape="disk", size=20.0)
    h = FiniteDifference._place(ctx, big, row, col)
    assert bool(((h.rows >= 0) & (h.rows < 64) & (h.cols >= 0) & (h.cols < 64)).all())
    paint(h, ctx.target_shape)


def test_attacks_draw_shapes_through_estimator():
    from attacks.pgd import FnafPGD
    from attacks.random_search import RandomSearch

    ctx = context(smooth_slices(2))
    est = estimator(Identity(), ctx.target_shape)
    rs = RandomSearch(est, candidates=4, feature="line", feature_size=8, feature_width=2)
    res = rs.attack(ctx)
    assert int(res.features.valid.sum(1).max()) > 8  # a line, not a 10-step walk
    pgd = FnafPGD(est, candidates=4, feature="disk", feature_contrast=0.5, steps=2, grow=1)
    res = pgd.attack(ctx)
    assert bool(res.found.all())
    with pytest.raises(ValueError):
        RandomSearch(est, feature="walk", feature_size=4)
    with pytest.raises(ValueError):
        RandomSearch(est, feature="disk", feature_width=-1)


def test_cli_shapes_match_the_module():
    from mri_audit.settings.catalog import FEATURE_SHAPES

    assert FEATURE_SHAPES == SHAPES


def test_run_feature_disk_end_to_end(tmp_path):
    from mri_audit.cli import cli

    out = tmp_path / "tmp"
    args = ["run", "--model", f"{EXAMPLES}/median_filter.py:MedianFilter", "--feature", "disk"]
    args += ["--attacks", "fnaf-rs,fnaf-pgd", "--attack-param", "fnaf-pgd.feature_size=2"]
    args += ["--max-volumes", "1", "--max-slices", "1", "--candidates", "3"]
    args += ["--batch-size", "4", "--no-progress", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "results.json").read_text())["config"]
    assert config["feature"] == "disk"
    assert config["attack_options"] == {"fnaf-pgd": {"feature_size": 2}}
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    sizes = {r["attack"]: len(r["feature"]["rows"]) for r in records if r.get("feature")}
    assert sizes == {"fnaf-rs": 37, "fnaf-pgd": 21}  # radius 3 (default) and radius 2
    # The report's methodology names the shape and each attack's size, not a random walk.
    html = (out / "report.html").read_text()
    feature = html.split('id="method-feature">', 1)[1].split("</dd>", 1)[0]
    assert "A disk (radius 3 px (fnaf-rs); radius 2 px (fnaf-pgd))" in feature
    assert "random walk" not in feature
    bad = CliRunner().invoke(cli, [*args[:5], "--feature-steps", "5", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "--feature-size" in bad.output


def test_feature_size_flag_sizes_every_fnaf_attack(tmp_path):
    import json

    from click.testing import CliRunner

    from mri_audit.cli import cli

    base = ["run", "--model", "examples/median_filter.py:MedianFilter", "--max-volumes", "1"]
    base += ["--max-slices", "1", "--candidates", "2", "--batch-size", "4", "--no-progress"]
    out = tmp_path / "disk"
    result = CliRunner().invoke(
        cli,
        [*base, "--feature", "disk", "--feature-size", "2", "--attacks", "fnaf-rs,kspace-pgd",
         "--attack-param", "fnaf-rs.feature_size=1.5", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    options = json.loads((out / "results.json").read_text())["config"]["attack_options"]
    assert options == {"fnaf-rs": {"feature_size": 1.5}}  # --attack-param wins; not kspace-pgd
    walk = CliRunner().invoke(cli, [*base, "--feature-size", "2", "--out", str(tmp_path / "w")])
    assert walk.exit_code == 2 and "a walk's length is --feature-steps" in walk.output
