"""Calibrate ``verify --replay``'s tolerance: how far do honest replays move r, r0, e?

Audits the example U-Net and VarNet (fnaf-rs and fnaf-pgd) on the built-in phantoms, then
re-scores every record's feature (and regenerates fnaf-rs's candidates) under conditions that
change the arithmetic but not the audit:

- ``same``: this machine, fp32, the slice alone (the audit batched several): batch composition;
- ``1 thread``: ``torch.set_num_threads(1)`` (another reduction order, as another CPU has);
- ``bf16``: the rescore in bfloat16 autocast (8 bits of mantissa): a coarser arithmetic than the
  TF32 (10 bits) a GPU's convolutions use by default, so a bound on CPU-vs-GPU differences.

For each it prints the largest |Δ| of r, r0, e (and of fnaf-rs's best candidate score) and the
largest share of the tolerance ``atol + rtol * |recorded|`` an honest replay used (``used`` <= 1
passes). Usage: ``python3 benchmarks/calibrate_replay.py [--volumes 3 --slices 3]``; on a GPU
machine ``--audit-device cuda`` audits on the GPU and replays on the CPU (and ``cuda``), the
difference the tolerance is there for (``benchmarks/gpu_check.sh`` runs it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import mri_audit
from mri_audit.audit.reread import read_journal
from mri_audit.evidence.replay import TOLERANCE, Replayer

QUANTITIES = ("r", "r0", "e")

ROOT = Path(__file__).resolve().parent.parent


def deltas(replayer: Replayer, records: list[dict]) -> dict[str, float]:
    worst = {q: 0.0 for q in (*QUANTITIES, "best")}
    used = 0.0
    for rec in records:
        values = replayer.rescore(rec)
        pairs = [(q, rec[q], values[q]) for q in QUANTITIES]
        if "fresh" in values:
            pairs.append(("best", rec["score"], values["fresh"]["best"]))
        for q, want, got in pairs:
            d = abs(float(got) - float(want))
            worst[q] = max(worst[q], d)
            used = max(used, d / (TOLERANCE["atol"] + TOLERANCE["rtol"] * abs(float(want))))
    return {**worst, "used": used}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=3)
    parser.add_argument("--slices", type=int, default=3)
    parser.add_argument("--audit-device", default="cpu")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="calibrate-replay-"))
    started = time.perf_counter()
    mri_audit.audit(
        f"{ROOT}/examples/unet.py:UNet",
        weights=f"{ROOT}/examples/weights/unet_4x.pt",
        compare=[(f"{ROOT}/examples/varnet.py:VarNet", f"{ROOT}/examples/weights/varnet_4x.pt")],
        attacks=("fnaf-rs", "fnaf-pgd"),
        max_volumes=args.volumes,
        max_slices=args.slices,
        out=out,
        device=args.audit_device,
    )
    results = json.loads((out / "results.json").read_text())
    records = [
        r for r in read_journal(out / "results.json", results) if r.get("found") and r["feature"]
    ]
    print(
        f"audit: {len(records)} records with a feature ({time.perf_counter() - started:.0f} s); "
        f"tolerance atol {TOLERANCE['atol']:g}, rtol {TOLERANCE['rtol']:g}"
    )
    print(
        f"{'condition':<10} {'max|Δr|':>9} {'max|Δr0|':>9} {'max|Δe|':>9} {'max|Δbest|':>10} "
        f"{'used':>6}"
    )
    threads = torch.get_num_threads()
    conditions = [
        ("same", "fp32", threads, args.audit_device),
        ("1 thread", "fp32", 1, "cpu"),
        ("bf16", "bf16", threads, "cpu"),
    ]
    if args.audit_device != "cpu":
        conditions.insert(1, ("cpu", "fp32", threads, "cpu"))
    for name, precision, nthreads, device in conditions:
        torch.set_num_threads(nthreads)
        replayer = Replayer(results, {"device": device}, precision=precision)
        d = deltas(replayer, records)
        print(
            f"{name:<10} {d['r']:>9.2e} {d['r0']:>9.2e} {d['e']:>9.2e} {d['best']:>10.2e} "
            f"{d['used']:>6.2f}"
        )
    torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
