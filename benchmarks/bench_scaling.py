"""Audit throughput with 1..N processes (``torchrun``; gloo on CPU, NCCL on GPUs).

Runs the same audit with 1, 2, ... N processes and prints slices/s and the speed-up over one
process. On a CPU the cores are split between processes (``OMP_NUM_THREADS``), so the figures
show the overhead of sharding and gathering rather than extra hardware; on a multi-GPU machine
each process gets its own GPU.

Run: ``python benchmarks/bench_scaling.py --max-procs 2 [--device cpu]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-procs", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default=f"{ROOT}/examples/unet.py:UNet")
    p.add_argument("--weights", default=f"{ROOT}/examples/weights/unet_4x.pt")
    p.add_argument("--volumes", type=int, default=4)
    p.add_argument("--slices", type=int, default=2)
    p.add_argument("--attacks", default="fnaf-rs")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(1, args.max_procs + 1):
            out = Path(tmp) / f"run{n}"
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            if args.device == "cpu":
                env["OMP_NUM_THREADS"] = str(max(1, cores // n))
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                str(n),
                "-m",
                "mri_audit",
                "run",
                "--model",
                args.model,
                "--weights",
                args.weights,
                "--max-volumes",
                str(args.volumes),
                "--max-slices",
                str(args.slices),
                "--attacks",
                args.attacks,
                "--device",
                args.device,
                "--out",
                str(out),
                "--no-progress",
            ]
            start = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            elapsed = time.perf_counter() - start
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"{n} process(es) failed")
            results = json.loads((out / "results.json").read_text())
            slices = results["data"]["slices"]
            audit_s = results["elapsed_seconds"]
            rows.append(
                {
                    "processes": n,
                    "slices": slices,
                    "wall_s": elapsed,
                    "audit_s": audit_s,
                    "slices_per_s": slices / audit_s,
                }
            )
    base = rows[0]["slices_per_s"]
    print(
        f"{'procs':>5} {'slices':>7} {'audit s':>8} {'wall s':>7} {'slices/s':>9} {'speed-up':>9}"
    )
    for r in rows:
        r["speedup"] = r["slices_per_s"] / base
        print(
            f"{r['processes']:>5} {r['slices']:>7} {r['audit_s']:>8.1f} {r['wall_s']:>7.1f} "
            f"{r['slices_per_s']:>9.3f} {r['speedup']:>8.2f}x"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
