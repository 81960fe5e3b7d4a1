"""Feature-recovery map throughput: features and cells per second vs the model's bare forward.

* **floor**: the model's own forward pass on pre-built inputs at the same batch size (no feature
  drawing, insertion, FFTs, recovery or statistics): no implementation of the map can beat it.
* **map**: :func:`mri_audit.audit.recovery_map.recovery_map` end to end on the same slices (slice
  contexts, feature drawing for every cell and draw, insertion, FFTs, the engine's batched model
  passes, ``r``, ``r₀``, the erasure hits, and the clustered statistics of every cell).

Run: ``python benchmarks/bench_map.py [--chans 16 --size 160 --slices 2 --draws 1 --device cpu]``.
Prints features/s and cells/s of the map, the floor's features/s and their ratio as JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mri_audit.audit.recovery_map import DEFAULT_CONTRASTS, MapGrid, recovery_map  # noqa: E402
from mri_audit.data.datasets import SyntheticDataset, collate  # noqa: E402
from mri_audit.device import resolve_device  # noqa: E402
from mri_audit.fnaf.autobatch import choose_batch_size  # noqa: E402
from mri_audit.models.estimator import Reconstructor  # noqa: E402
from mri_audit.mri.physics import make_mask_func  # noqa: E402


def load_unet(chans: int, pools: int) -> torch.nn.Module:
    """The example U-Net (``examples/unet.py``) with ``chans`` channels and ``pools`` levels."""
    path = Path(__file__).resolve().parents[1] / "examples" / "unet.py"
    spec = importlib.util.spec_from_file_location("bench_map_example_unet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.UNet(in_chans=1, out_chans=1, chans=chans, num_pool_layers=pools)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_times(fns: dict, device: torch.device, repeats: int) -> dict[str, float]:
    """Best wall time of each function, the runs alternating (one warm-up each)."""
    best = dict.fromkeys(fns, float("inf"))
    for fn in fns.values():
        fn()
    sync(device)
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chans", type=int, default=16, help="U-Net channels (16: the example's)")
    p.add_argument("--pools", type=int, default=4)
    p.add_argument("--size", type=int, default=160, help="target size (square)")
    p.add_argument("--slices", type=int, default=2)
    p.add_argument("--draws", type=int, default=1, help="placements per cell and slice")
    p.add_argument("--contrasts", default=",".join(f"{c:g}" for c in DEFAULT_CONTRASTS))
    p.add_argument("--shapes", default="walk,disk,line")
    p.add_argument("--batch-size", default="auto", help="features per model batch, or auto")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = load_unet(args.chans, args.pools).to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    data = SyntheticDataset(split="val", volumes=args.slices, slices=1, size=args.size)
    func = make_mask_func("random", 4)
    est = Reconstructor(model, target_shape=(args.size, args.size), device=device, name="unet")
    grid = MapGrid.make(
        args.shapes.split(","),
        contrasts=[float(c) for c in args.contrasts.split(",")],
        draws=args.draws,
    )
    per_slice = len(grid.cells()) * grid.draws
    n = per_slice * len(data)
    if str(args.batch_size).lower() == "auto":
        probe = collate([data[0]])
        batch = choose_batch_size([est], probe, func, gradient=False, candidates=per_slice)
    else:
        batch = int(args.batch_size)
    inputs = torch.randn(batch, 1, args.size, args.size, device=device)
    last: dict = {}

    def run_map():
        last["map"] = recovery_map(
            [("unet", est)],
            data,
            mask_func=func,
            shapes=grid.shapes,
            sizes={s: grid.sizes_of(s) for s in grid.shapes},
            contrasts=grid.contrasts,
            draws=grid.draws,
            batch_size=batch,
        )

    def run_floor():
        with torch.inference_mode():
            for start in range(0, n, batch):
                model(inputs[: min(batch, n - start)])

    times = best_times({"map": run_map, "floor": run_floor}, device, args.repeats)
    cells = len(grid.cells())
    figures = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": f"U-Net chans={args.chans} pools={args.pools}",
        "size": args.size,
        "slices": len(data),
        "cells": cells,
        "draws": grid.draws,
        "features": n,
        "batch_size": batch,
        "map_seconds": times["map"],
        "map_features_per_s": n / times["map"],
        "map_cells_per_s": cells / times["map"],
        "floor_features_per_s": n / times["floor"],
        # One clean reconstruction per slice besides the features: the best the map can reach.
        "model_work_bound": per_slice / (per_slice + 1),
    }
    figures["map_vs_floor"] = figures["map_features_per_s"] / figures["floor_features_per_s"]
    figures["features_scored"] = last["map"]["features_scored"]
    if device.type == "cuda":
        figures["gpu_peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
