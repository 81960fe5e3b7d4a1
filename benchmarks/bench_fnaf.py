"""FNAF engine throughput: ``fnaf-rs`` candidates/s vs the model's bare forward and a plain loop.

* **floor**: the model's own forward pass on pre-built inputs of the same batch size (no
  feature generation, FFTs, IP or losses): no implementation of the attack can beat it.
* **engine**: ``fnaf-rs`` through mri-audit's batched engine (features, insertion, FFTs, IP,
  model, losses and selection on the device).
* **loop**: a straightforward port of the paper's procedure: one candidate at a time, built
  with Python/numpy, its loss brought back to the host before the next one.

Run: ``python benchmarks/bench_fnaf.py [--chans 32 --size 320 --slices 4 --device cpu]``.
Prints candidates/s for each and the two ratios (engine/floor, engine/loop).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mri_audit.data.datasets import SyntheticDataset, collate  # noqa: E402
from mri_audit.device import resolve_device  # noqa: E402
from mri_audit.fnaf.autobatch import choose_batch_size  # noqa: E402
from mri_audit.fnaf.engine import FnafEngine  # noqa: E402
from mri_audit.fnaf.features import prepare_context  # noqa: E402
from mri_audit.fnaf.registry import load_attack  # noqa: E402
from mri_audit.models.estimator import Reconstructor  # noqa: E402
from mri_audit.mri.physics import (  # noqa: E402
    center_crop,
    fft2c,
    ifft2c,
    make_mask_func,
    rss,
    volume_seed,
)


def load_unet(chans: int, pools: int):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "unet.py"
    spec = importlib.util.spec_from_file_location("bench_example_unet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.UNet(in_chans=1, out_chans=1, chans=chans, num_pool_layers=pools)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict, device, repeats: int) -> dict:
    """Best wall time of each function, the runs alternating between them (one warm-up each),
    so that a slow spell of the machine hits every figure alike."""
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


def bench_floor(est, n: int, batch: int, shape, device, precision: str = "fp32"):
    inputs = torch.randn(batch, 1, *shape, device=device)
    engine = FnafEngine(est, precision=precision)

    def run():
        with torch.inference_mode(), engine.autocast():
            for start in range(0, n, batch):
                est.model(inputs[: min(batch, n - start)])

    return run


def bench_engine(est, ctx, candidates: int, batch: int, precision: str = "fp32"):
    attack = load_attack("fnaf-rs")(est, candidates=candidates, batch_size=batch)

    last = {}

    def run():
        # A fresh engine each time: nothing is memoised between repeats.
        engine = FnafEngine(est, batch_size=batch, precision=precision)
        last["result"] = attack.attack(ctx, engine)
        return last["result"]

    run.last = last  # the latest result, so nothing is run again after the timing
    return run, attack


def bench_loop(est, ctx, candidates: int, steps: int = 10, seed: int = 0):
    """One candidate at a time, like the reference implementation: Python random walk, numpy
    painting, one model call per candidate, the erasure ``e = r0 - r`` read back to the host
    (the clean reconstruction once per slice, as the engine does)."""
    device = ctx.kspace.device
    h, w = ctx.target_shape
    win = ctx.window
    top, left = ctx.crop_offset

    def run():
        rng = random.Random(seed)
        best = []
        for s in range(ctx.num_slices):
            image = ctx.image[s].cpu().numpy()
            target = ctx.target[s].cpu().numpy()
            sens = ctx.sens[s].cpu().numpy()
            lo, hi = float(target.min()), float(target.max())
            mask = ctx.mask[s].cpu().numpy()
            zf_clean = ctx.zero_filled[s].cpu().numpy()
            m_mask = torch.from_numpy(mask).to(device)[None]
            with torch.inference_mode():
                k0 = ctx.kspace[s : s + 1] * m_mask
                clean = est.reconstruct(k0, m_mask)[0].cpu().numpy()
            worst = -float("inf")
            for _ in range(candidates):
                d = np.zeros((h, w), np.float32)
                r = rng.randrange(win.top, win.top + win.height)
                c = rng.randrange(win.left, win.left + win.width)
                for _ in range(steps):
                    d[r, c] = rng.uniform(lo, hi)
                    dr, dc = rng.choice(((-1, 0), (1, 0), (0, -1), (0, 1)))
                    r = min(max(r + dr, win.top), win.top + win.height - 1)
                    c = min(max(c + dc, win.left), win.left + win.width - 1)
                img = image.copy()
                img[:, top : top + h, left : left + w] += (
                    d * sens[:, top : top + h, left : left + w]
                )
                k = fft2c(torch.from_numpy(img).to(device)[None]) * torch.from_numpy(mask).to(
                    device
                )
                zf = center_crop(rss(ifft2c(k), dim=1), (h, w)).cpu().numpy()[0]
                with torch.inference_mode():
                    recon = est.reconstruct(k, m_mask)[0].cpu().numpy()
                energy = float((d * d).sum())
                r0 = float(((zf - zf_clean) * d).sum()) / energy
                r = float(((recon - clean) * d).sum()) / energy
                worst = max(worst, min(r0 - r, r0))
            best.append(worst)
        return best

    return run


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chans", type=int, default=32, help="U-Net channels (32: fastMRI's)")
    p.add_argument("--pools", type=int, default=4)
    p.add_argument("--size", type=int, default=320, help="target size (square)")
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--candidates", type=int, default=11)
    p.add_argument(
        "--batch-size",
        default="auto",
        help="candidates per model batch, or auto (what `mri-audit run` picks by default)",
    )
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--loop-slices", type=int, default=None, help="slices for the slow loop")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--skip-loop", action="store_true", help="do not time the slow loop")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = load_unet(args.chans, args.pools).to(device).eval()
    data = SyntheticDataset(split="val", volumes=max(1, args.slices // 2), slices=2, size=args.size)
    batch = collate([data[i] for i in range(args.slices)])
    func = make_mask_func("random", 4)
    ctx = prepare_context(
        batch.kspace.to(device),
        target_shape=(args.size, args.size),
        volumes=batch.volumes,
        slices=batch.slices,
        mask_for=lambda v, n: func(n, seed=volume_seed(v)),
    )
    for p_ in model.parameters():
        p_.requires_grad_(False)
    if args.compile:
        model = torch.compile(model, dynamic=True)
    est = Reconstructor(model, target_shape=(args.size, args.size), device=device)
    n = args.slices * args.candidates
    if str(args.batch_size).lower() == "auto":
        args.batch_size = choose_batch_size(
            [est], batch, func, gradient=False, candidates=args.candidates
        )
    else:
        args.batch_size = int(args.batch_size)
    engine_run, attack = bench_engine(est, ctx, args.candidates, args.batch_size, args.precision)
    floor_run = bench_floor(est, n, args.batch_size, (args.size, args.size), device)
    loop_slices = args.loop_slices or args.slices
    loop_ctx = prepare_context(
        batch.kspace[:loop_slices].to(device),
        target_shape=(args.size, args.size),
        volumes=batch.volumes[:loop_slices],
        slices=batch.slices[:loop_slices],
        mask_for=lambda v, n_: func(n_, seed=volume_seed(v)),
    )
    n_loop = loop_slices * args.candidates
    runs = {"engine": engine_run, "floor": floor_run}
    if not args.skip_loop:
        runs["loop"] = bench_loop(est, loop_ctx, args.candidates)
    times = interleaved(runs, device, args.repeats)
    t_engine, t_floor = times["engine"], times["floor"]
    t_loop = times.get("loop", float("nan"))
    accepted = int(engine_run.last["result"].accepted.sum())
    figures = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": f"U-Net chans={args.chans} pools={args.pools}",
        "precision": args.precision,
        "compile": args.compile,
        "size": args.size,
        "slices": args.slices,
        "candidates_per_slice": args.candidates,
        "batch_size": args.batch_size,
        "criterion": attack.criterion,
        "admissible": f"{accepted}/{n}",
        "engine_cand_per_s": n / t_engine,
        "floor_cand_per_s": n / t_floor,
        "loop_cand_per_s": n_loop / t_loop,
    }
    figures["engine_vs_floor"] = figures["engine_cand_per_s"] / figures["floor_cand_per_s"]
    figures["model_work_bound"] = args.candidates / (args.candidates + 1)
    figures["engine_vs_loop"] = figures["engine_cand_per_s"] / figures["loop_cand_per_s"]
    if device.type == "cuda":
        figures["gpu_peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(
        f"model {figures['model']}, {args.size}x{args.size}, {device}, "
        f"{figures['threads']} threads, batch {args.batch_size}, "
        f"{attack.criterion}-admissible {accepted}/{n}"
    )
    print(f"  engine (fnaf-rs)   {figures['engine_cand_per_s']:9.2f} candidates/s")
    print(f"  bare forward       {figures['floor_cand_per_s']:9.2f} candidates/s  (floor)")
    print(f"  per-candidate loop {figures['loop_cand_per_s']:9.2f} candidates/s")
    print(f"  engine / bare forward      = {figures['engine_vs_floor']:.2f}x")
    print(f"  engine / per-candidate loop = {figures['engine_vs_loop']:.2f}x")
    print(
        f"  (the engine also reconstructs each clean slice once, for r and the control: at most "
        f"{figures['model_work_bound']:.2f}x the floor)"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
