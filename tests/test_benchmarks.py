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
