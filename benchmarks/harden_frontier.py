"""The robustness/quality frontier of hardening recipes, from their cards.

Every validation entry a ``harden`` run made on the held-out ``select`` phantoms (the start,
each epoch, each WiSE-FT blend) is a point: its strong ``fnaf-pgd`` rate against its SSIM and
its NMSE relative to the starting model. Prints them as a Markdown table per recipe and, with
``--plot``, draws both panels (one colour per recipe, the kept entry circled, the tolerances
dashed). Cards written before the strong validation carry only the ``fnaf-rs`` rate and are
skipped.

    python3 benchmarks/harden_frontier.py --recipe "PGD-4=robust.pt" --plot frontier.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _entries(card: dict) -> list[dict]:
    s = card["summary"]
    return [s["start"], *s["history"], *(s.get("blends") or [])]


def _label(entry: dict) -> str:
    if "alpha" in entry:
        return f"blend {entry['alpha']:.2f}"
    return "start" if entry.get("epoch", 0) == 0 else f"epoch {entry['epoch']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", action="append", required=True, metavar="NAME=WEIGHTS")
    parser.add_argument("--plot", help="write the figure here (PNG)")
    args = parser.parse_args()
    cards = {}
    for item in args.recipe:
        name, weights = item.split("=", 1)
        card = json.loads(Path(f"{weights}.json").read_text())
        if "pgd_rate" not in card["summary"]["start"]:
            print(f"{name}: its card has no fnaf-pgd validation rate (an older run); skipped")
            continue
        cards[name] = card
    for name, card in cards.items():
        start, best = card["summary"]["start"], card["summary"]["best"]
        print(f"\n{name} (select split; kept: {_label(best)})\n")
        print("| entry | SSIM | NMSE vs start | fnaf-rs | fnaf-pgd |")
        print("|---|---|---|---|---|")
        for e in _entries(card):
            print(
                f"| {_label(e)} | {e['ssim']:.4f} | {e['nmse'] / start['nmse'] - 1:+.1%} | "
                f"{e['rs_rate']:.1%} | {e['pgd_rate']:.1%} |"
            )
    if not args.plot or not cards:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for i, (name, card) in enumerate(cards.items()):
        start, best = card["summary"]["start"], card["summary"]["best"]
        entries = _entries(card)
        color = f"C{i}"
        pgd = [e["pgd_rate"] for e in entries]
        axes[0].scatter([e["ssim"] - start["ssim"] for e in entries], pgd, color=color, s=14)
        nmse = [e["nmse"] / start["nmse"] - 1 for e in entries]
        axes[1].scatter(nmse, pgd, color=color, s=14, label=name)
        for ax, x in (
            (axes[0], best["ssim"] - start["ssim"]),
            (axes[1], best["nmse"] / start["nmse"] - 1),
        ):
            ax.scatter([x], [best["pgd_rate"]], s=80, facecolors="none", edgecolors=color)
    tol = next(iter(cards.values()))["config"]
    axes[0].axvline(-tol["ssim_tolerance"], color="0.5", linestyle="--", linewidth=0.8)
    if tol.get("nmse_tolerance") is not None:
        axes[1].axvline(tol["nmse_tolerance"], color="0.5", linestyle="--", linewidth=0.8)
    axes[0].set_xlabel("SSIM − starting SSIM")
    axes[1].set_xlabel("NMSE / starting NMSE − 1")
    axes[0].set_ylabel("fnaf-pgd rate (select)")
    axes[1].legend(fontsize=7, loc="upper right")
    for ax in axes:
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
