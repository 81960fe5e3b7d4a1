"""Warnings an audit's reader must see beside its numbers (DESIGN §6).

A model with parameters but no weights, a model worse than zero-filling, weights trained for
another acceleration or image size (from the weights' card, ``<weights>.json``, where there is
one), and a gate that too few slices can never pass. Each is one sentence; they go into
``results.json``, the console and the report's banner.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from mri_audit.audit.stats import Z95

__all__ = ["audit_warnings", "slices_needed"]


def slices_needed(max_attack_rate: float) -> int:
    """The fewest slices whose 95% upper bound can be ≤ ``max_attack_rate`` (with no hit).

    With no hit the Wilson upper bound is ``z²/(n + z²)``, so ``n ≥ z²(1 − p)/p``.
    """
    if max_attack_rate <= 0:
        return math.inf
    return math.ceil(Z95 * Z95 * (1 - max_attack_rate) / max_attack_rate - 1e-9)


def _card(weights: str | None) -> dict | None:
    if not weights:
        return None
    path = Path(str(weights) + ".json")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None


def _card_accels(card: dict) -> list[float]:
    if isinstance(card.get("acceleration"), (int, float)):
        return [float(card["acceleration"])]
    accels = (card.get("config") or {}).get("accels")
    return [float(a) for a in accels] if isinstance(accels, list) else []


def _card_size(card: dict) -> int | None:
    size = ((card.get("data") or {}).get("train") or {}).get("size")
    return int(size) if isinstance(size, (int, float)) else None


def audit_warnings(
    *,
    models: list[dict],
    clean: dict,
    zero_filled: dict | None,
    attacks: dict,
    config: dict,
    data: dict,
    max_attack_rate: float | None,
) -> list[str]:
    """Every warning of an audit, as sentences (plain data in, plain data out)."""
    out = []
    accel = config.get("accel")
    shapes = {tuple(s) for s in (data.get("target_shapes") or [])}
    for m in models:
        name = m["name"]
        # A TorchScript or exported program carries its own weights.
        carries_weights = m.get("kind") in ("torchscript", "exported")
        if (m.get("parameters") or 0) > 0 and not m.get("weights") and not carries_weights:
            out.append(
                f"{name} has {m['parameters']:,} parameters but no --weights: it was audited "
                "with its initial (seeded random) weights"
            )
        ssim, zf = (clean.get(name) or {}).get("ssim"), (zero_filled or {}).get("ssim")
        if ssim is not None and zf is not None and ssim < zf - 1e-9:
            out.append(
                f"{name} is worse than zero-filling: SSIM {ssim:.4f} against zero-filling's "
                f"{zf:.4f} on the same slices"
            )
        card = _card(m.get("weights"))
        if card:
            accels = _card_accels(card)
            if accel and accels and all(abs(a - float(accel)) > 1e-9 for a in accels):
                trained = ", ".join(f"{a:g}x" for a in accels)
                out.append(
                    f"{name} runs at {float(accel):g}x but its weights' card says they were "
                    f"trained for {trained}"
                )
            size = _card_size(card)
            if size and shapes and all(s != (size, size) for s in shapes):
                seen = ", ".join(f"{h}x{w}" for h, w in sorted(shapes))
                out.append(
                    f"{name}'s weights were trained on {size}x{size} images; this data is {seen}"
                )
    if max_attack_rate is not None:
        primary = models[0]["name"] if models else None
        totals = [
            (a.get("attack_rate") or {}).get("total") or 0
            for a in (attacks.get(primary) or {}).values()
            if a.get("kind", "fnaf") == "fnaf"
        ]
        need = slices_needed(max_attack_rate)
        if totals and min(totals) < need:
            out.append(
                f"{min(totals)} slices cannot show an attack rate within --max-attack-rate "
                f"{max_attack_rate:.0%}: even with no hit the 95% upper bound is above it; "
                f"a PASS needs at least {need} slices (more when slices of a volume agree)"
            )
    return out
