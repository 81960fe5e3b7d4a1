"""Cost of one ``harden`` training step per recipe, as a ratio to the FNAF paper's recipe.

Times training steps of the example U-Net (4x, batch 4, the built-in training phantoms) under
each recipe, alternating recipes over ``--repeats`` rounds so that a shared machine's load falls
on all of them alike, and prints the median seconds per step and its ratio to the first recipe
(random search, 11 candidates: the previous default). Validation is not timed (its cost is the
same for every recipe: it depends on ``--val-candidates``/``--val-steps`` only).

    python3 benchmarks/bench_harden_step.py --steps 3 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from mri_audit.data.datasets import BUILTIN_SELECT, BUILTIN_TRAIN, SyntheticDataset
from mri_audit.fnaf.registry import load_attack
from mri_audit.harden.config import HardenConfig
from mri_audit.harden.trainer import Trainer
from mri_audit.models.loading import load_model

ROOT = Path(__file__).resolve().parent.parent

RECIPES = {
    "random search, 11 candidates (previous)": {"inner_steps": 0},
    "fnaf-pgd 4 steps": {"inner_steps": 4},
    "fnaf-pgd 4 steps + recovery (r >= r0)": {
        "inner_steps": 4,
        "recovery": 1.0,
        "recovery_target": "data",
    },
}


def _trainer(settings: dict, out: Path) -> Trainer:
    from mri_audit.models.estimator import Reconstructor

    loaded = load_model(
        f"{ROOT}/examples/unet.py:UNet", weights=f"{ROOT}/examples/weights/unet_4x.pt"
    )
    train = SyntheticDataset(split="train", **BUILTIN_TRAIN)
    select = SyntheticDataset(split="select", **BUILTIN_SELECT)
    est = Reconstructor(loaded.module, target_shape=tuple(train[0].target.shape), device="cpu")
    config = HardenConfig(lr=3e-5, loss="ssim+l1", **settings)
    classes = {n: load_attack(n) for n in ("fnaf-rs", "fnaf-pgd")}
    return Trainer(
        est,
        train,
        select,
        config,
        attack_classes=classes,
        checkpoint=out / "c.ckpt",
        out=out / "w.pt",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="steps timed per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the recipes")
    parser.add_argument("--out", default="/tmp/bench-harden-step")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trainers = {name: _trainer(s, out) for name, s in RECIPES.items()}
    for t in trainers.values():  # warm-up (allocations, first-call overheads)
        t.train_step(0, 0)
    times: dict[str, list[float]] = {name: [] for name in RECIPES}
    for round_ in range(args.repeats):
        for name, t in trainers.items():
            start = time.perf_counter()
            for step in range(args.steps):
                t.train_step(0, 1 + round_ * args.steps + step)
            times[name].append((time.perf_counter() - start) / args.steps)
    base = statistics.median(next(iter(times.values())))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 4, 160x160")
    print("| recipe | s/step (median) | ratio |")
    print("|---|---|---|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.2f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
