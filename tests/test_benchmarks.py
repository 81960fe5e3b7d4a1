"""The benchmark scripts run end to end on a tiny model and report consistent figures."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from mri_audit.fnaf.autobatch import cpu_batch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_fnaf.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_fnaf_under_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_fnaf_figures_are_consistent(tmp_path, capsys):
    out = tmp_path / "figures.json"
    args = ["--chans", "2", "--pools", "1", "--size", "32", "--slices", "2"]
    args += ["--candidates", "3", "--repeats", "1", "--device", "cpu", "--json", str(out)]
    figures = _bench().main(args)
    assert json.loads(out.read_text()) == pytest.approx(figures)
    for key in ("engine_cand_per_s", "floor_cand_per_s", "loop_cand_per_s"):
        assert figures[key] > 0
    assert figures["engine_vs_floor"] == pytest.approx(
        figures["engine_cand_per_s"] / figures["floor_cand_per_s"]
    )
    assert figures["model_work_bound"] == pytest.approx(3 / 4)
    assert figures["batch_size"] == cpu_batch(32, 32)  # --batch-size auto, as `run` picks
    assert figures["criterion"] == "erasure"
    assert figures["admissible"] == "6/6"  # every candidate goes through the model
    printed = capsys.readouterr().out
    assert "engine / bare forward" in printed and "engine / per-candidate loop" in printed


def test_interleaved_times_every_function():
    bench = _bench()
    calls = []
    times = bench.interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, torch.device("cpu"), 2
    )
    assert calls == ["a", "b", "a", "b", "a", "b"]  # warm-up, then alternating repeats
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())


def test_bench_stochastic_figures_and_pass_accounting(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "bench_stochastic_under_test", BENCH.with_name("bench_stochastic.py")
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "figures.json"
    args = ["--chans", "2", "--layers", "2", "--volumes", "1", "--slices", "1"]
    args += ["--candidates", "2", "--pgd-steps", "1", "--samples", "2", "--repeats", "1"]
    args += ["--threads", str(torch.get_num_threads()), "--json", str(out)]
    figures = bench.main(args)
    assert json.loads(out.read_text()) == figures
    seconds, passes = figures["seconds"], figures["passes"]
    assert set(seconds) == {"gen det", "gen N=2", "item det b1", "item N=2"}
    for kind, det in (("gen", "gen det"), ("item", "item det b1")):
        name = f"{kind} N=2"
        assert figures["ratio"][name] == pytest.approx(seconds[name] / (2 * seconds[det]))
        st, dt = passes[name]["images"], passes[det]["images"]
        # Every input is reconstructed once per sample; the picks are confirmed on top.
        for phase in ("clean", "search", "gradient", "report"):
            assert dt[phase] > 0 and st[phase] == 2 * dt[phase], phase
        assert dt["confirm clean"] == dt["confirm picks"] == 0
        # Fresh noise: the slice again and the picks (at least one per attack), every sample.
        assert st["confirm clean"] >= 2 and st["confirm clean"] % 2 == 0
        assert st["confirm picks"] >= 2 * 2 and st["confirm picks"] % 2 == 0
    # The generator model stays batched; the other runs one item per forward pass.
    assert passes["gen N=2"]["calls"]["search"] < passes["gen N=2"]["images"]["search"]
    assert passes["item N=2"]["calls"] == passes["item N=2"]["images"]
    assert "ratio" in capsys.readouterr().out
