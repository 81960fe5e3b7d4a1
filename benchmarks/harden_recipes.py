"""Hardening recipes compared under an attack stronger than any of them trained against.

Audits the standard U-Net and each hardened one on the built-in held-out ``val`` phantoms (the
slices no recipe was trained or chosen on) with ``fnaf-rs`` and ``fnaf-pgd`` at ``--candidates``
candidates and ``--steps`` gradient steps (default 33 and 32: 3x the defaults' candidates, 4x
fnaf-pgd's steps), one audit so that every model is attacked on the same slices with the same
draws. Prints a Markdown table: each recipe's training (from its card ``<weights>.json``), its
wall time, clean SSIM/NMSE, both attack rates with 95% intervals clustered by volume, the
paired exact McNemar test against the standard U-Net, and whether each rate converged in its
budget (``mri_audit.fnaf.budget``).

    python3 benchmarks/harden_recipes.py \\
        --recipe "paper (random search)=examples/weights/unet_4x_robust.pt" \\
        --recipe "PGD-4=robust_pgd4.pt" --out recipes-audit
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mri_audit
from mri_audit.models.entries import ModelEntry

ROOT = Path(__file__).resolve().parent.parent
UNET = f"{ROOT}/examples/unet.py:UNet"
STANDARD = f"{ROOT}/examples/weights/unet_4x.pt"


def _card(weights: str) -> dict:
    path = Path(f"{weights}.json")
    return json.loads(path.read_text()) if path.exists() else {}


def _training(card: dict) -> str:
    cfg = card.get("config") or {}
    if not cfg:
        return "n/a"
    steps = cfg.get("inner_steps")
    inner = (
        f"random {cfg['candidates']}"
        if not steps
        else f"pgd {steps} steps from {cfg['candidates']}"
    )
    extra = f", recovery {cfg['recovery']:g}" if cfg.get("recovery") else ""
    if cfg.get("recovery") and cfg.get("recovery_target") == "data":
        extra += " (r ≥ r0)"
    if cfg.get("attack_fraction", 1.0) < 1:
        extra += f", {cfg['attack_fraction']:.0%} attacked"
    walks = cfg.get("feature_steps") or ["?", "?"]
    return (
        f"{cfg['epochs']}x{cfg['steps']} steps, lr {cfg['lr']:g}, λ {cfg['lam']:g}, "
        f"walks {walks[0]}-{walks[1]}, {inner}{extra}"
    )


def _rate(agg: dict) -> str:
    r = agg["attack_rate"]
    cell = f"{r['value']:.1%} [{r['low']:.0%}–{r['high']:.0%}]"
    curve = agg.get("budget")
    if curve and not curve["converged"]:
        cell += " (rising)"
    return cell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--recipe",
        action="append",
        required=True,
        metavar="NAME=WEIGHTS",
        help="a hardened U-Net's weights, or NAME=SPEC=WEIGHTS for another model (a reference)",
    )
    parser.add_argument("--candidates", type=int, default=33)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--out", default="recipes-audit")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    recipes, specs = {}, {}
    for item in args.recipe:
        name, rest = item.split("=", 1)
        spec, _, weights = rest.rpartition("=")
        recipes[name], specs[name] = weights, spec or UNET
    started = time.perf_counter()
    mri_audit.audit(
        UNET,
        weights=STANDARD,
        name="standard",
        compare=[ModelEntry(specs[name], name, weights) for name, weights in recipes.items()],
        accel=4,
        attacks=("fnaf-rs", "fnaf-pgd"),
        candidates=args.candidates,
        attack_options={"fnaf-pgd": {"steps": args.steps}},
        out=args.out,
        force=True,
        device=args.device,
    )
    seconds = time.perf_counter() - started
    results = json.loads((Path(args.out) / "results.json").read_text())
    paired = {
        (p["attack"], p["a"], p["b"]): p
        for p in results.get("paired") or []
        if p["a"] == "standard"
    }
    print(
        f"val phantoms, {args.candidates} candidates, fnaf-pgd {args.steps} steps "
        f"(audit {seconds:.0f} s; {args.out}/)\n"
    )
    print(
        "| model | training | train min | SSIM | NMSE | fnaf-rs | fnaf-pgd | McNemar p "
        "(rs, pgd) vs standard |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in ["standard", *recipes]:
        hardened = name in recipes and specs[name] == UNET
        card = _card(recipes[name]) if hardened else {}
        aggs = results["attacks"][name]
        cm = results["clean"][name]
        minutes = f"{card['seconds'] / 60:.1f}" if card.get("seconds") else "–"
        tests = [paired.get((a, "standard", name)) for a in ("fnaf-rs", "fnaf-pgd")]
        p = ", ".join(
            f"{t['p_value']:.2g} ({t['b_only']}/{t['a_only']})" if t else "–" for t in tests
        )
        training = _training(card) if hardened else "–"
        print(
            f"| {name} | {training} | {minutes} | {cm['ssim']:.4f} | {cm['nmse']:.5f} | "
            f"{_rate(aggs['fnaf-rs'])} | {_rate(aggs['fnaf-pgd'])} | {p} |"
        )
    print(
        "\nMcNemar: exact two-sided test on the same slices; (x/y): slices the model loses and "
        "the standard U-Net keeps / the standard loses and the model keeps."
    )


if __name__ == "__main__":
    main()
