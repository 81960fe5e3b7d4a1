"""Does the verdict depend on image size? The same phantom anatomy audited at 160² and 320².

Writes the same synthetic volumes (same seed) at two sizes with ``mri-audit data synth``, audits
each model on both with ``mri-audit run`` (default criterion ``erasure``), re-reads each audit
under ``paper`` with ``mri-audit report --criterion paper`` (no recomputation), and prints, per
model, attack, criterion and size, the attack rate with its 95% interval and the mean ``r``/``r₀``.
A criterion whose verdict means the same at every size gives overlapping intervals for one model.

    python benchmarks/bench_size.py                # median filter, zero-filled, example U-Net
    python benchmarks/bench_size.py --volumes 2 --slices 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "median 5x5": ["--model", f"{ROOT}/examples/median_filter.py:MedianFilter"],
    "zero-filled": ["--model", f"{ROOT}/examples/zero_filled.py:ZeroFilled"],
    "U-Net 4x": [
        "--model",
        f"{ROOT}/examples/unet.py:UNet",
        "--weights",
        f"{ROOT}/examples/weights/unet_4x.pt",
    ],
}


def mri_audit(*args: str) -> None:
    cmd = [sys.executable, "-m", "mri_audit", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")


def rows_of(results: dict, model: str, size: int) -> list[dict]:
    name = results["models"][0]["name"]
    out = []
    for attack, a in results["attacks"][name].items():
        rate = a["attack_rate"]
        out.append(
            {
                "model": model,
                "size": size,
                "criterion": a["criterion"],
                "attack": attack,
                "rate": rate["value"],
                "low": rate["low"],
                "high": rate["high"],
                "slices": rate["total"],
                "r": a["r"]["mean"],
                "r0": a["r0"]["mean"],
            }
        )
    return out


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volumes", type=int, default=3)
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--sizes", default="160,320")
    p.add_argument("--attacks", default="fnaf-rs,fnaf-pgd")
    p.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated, from: " + ", ".join(MODELS)
    )
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for size in (int(s) for s in args.sizes.split(",")):
            data = tmp / f"data{size}"
            mri_audit(
                "data", "synth", "--out", str(data), "--volumes", str(args.volumes),
                "--slices", str(args.slices), "--size", str(size), "--seed", str(args.seed),
            )  # fmt: skip
            for model in args.models.split(","):
                out = tmp / f"{model.replace(' ', '_')}_{size}"
                mri_audit(
                    "run", *MODELS[model], "--accel", "4", "--data", str(data),
                    "--attacks", args.attacks, "--out", str(out), "--no-progress",
                )  # fmt: skip
                rows += rows_of(json.loads((out / "results.json").read_text()), model, size)
                mri_audit("report", str(out), "--criterion", "paper")
                paper = json.loads((out / "results.paper.json").read_text())
                rows += rows_of(paper, model, size)
    head = f"{'model':<13}{'criterion':<10}{'attack':<10}{'size':>6}{'attack rate':>26}"
    print(head + f"{'r':>8}{'r0':>8}")
    for r in sorted(rows, key=lambda r: (r["model"], r["criterion"], r["attack"], r["size"])):
        rate = f"{r['rate']:.0%} [{r['low']:.0%}–{r['high']:.0%}] of {r['slices']}"
        print(
            f"{r['model']:<13}{r['criterion']:<10}{r['attack']:<10}{r['size']:>6}{rate:>26}"
            f"{r['r']:8.3f}{r['r0']:8.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
