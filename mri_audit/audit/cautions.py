"""Warnings an audit's reader must see beside its numbers (DESIGN §6).

A model with parameters but no weights, a model worse than zero-filling (its mean clean SSIM
lower by more than :data:`SSIM_TOLERANCE`), weights trained for another acceleration or image
size (from the weights' card, ``<weights>.json``, where there is one), and a gate that too few
slices can never pass. Each is one sentence; they go into
``results.json``, the console and the report's banner.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from mri_audit.audit.stats import Z95

__all__ = ["SSIM_TOLERANCE", "audit_warnings", "slices_needed", "worse_than_zero_filling"]


def slices_needed(max_attack_rate: float) -> int:
    """The fewest slices whose 95% upper bound can be ≤ ``max_attack_rate`` (with no hit).

    With no hit the Wilson upper bound is ``z²/(n + z²)``, so ``n ≥ z²(1 − p)/p``.
    """
    if max_attack_rate <= 0:
        return math.inf
    return math.ceil(Z95 * Z95 * (1 - max_attack_rate) / max_attack_rate - 1e-9)


SSIM_TOLERANCE = 1e-4
"""How much lower a model's mean clean SSIM must be than zero-filling's to be called worse.

A model that returns its zero-filled input (``examples/zero_filled.py:ZeroFilled``) scores the
zero-filled SSIM up to float32 rounding: its output and the baseline go through different
batches and kernels, and the means differ by 1e-7 or less (3e-8 was seen). 1e-4 is a thousand
times that, so equal models never trip the warning, and it is the last digit the warning
prints: two SSIMs more than 1e-4 apart always print differently at 4 decimals (rounding to a
grid is monotone), so the warning never shows two equal numbers. A model a reader should be
told of is far below it: a 5x5 blur of the zero-filled image loses more than 0.01 (a test checks
it). SSIM alone decides, as before: NMSE is not bounded, and a model trained for
SSIM may trade some NMSE for it without being worse than zero-filling.
"""


def worse_than_zero_filling(ssim: float | None, zero_filled: float | None) -> bool:
    """Whether a mean clean SSIM is lower than zero-filling's by more than
    :data:`SSIM_TOLERANCE` (False when either is unknown)."""
    if ssim is None or zero_filled is None:
        return False
    return bool(ssim < zero_filled - SSIM_TOLERANCE)


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
        if worse_than_zero_filling(ssim, zf):
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
    for name, by_attack in attacks.items():
        for attack, agg in by_attack.items():
            curve = agg.get("budget") if isinstance(agg, dict) else None
            if curve and not curve.get("converged", True):
                step = curve["last_doubling"]
                out.append(
                    f"{attack} on {name}: the attack rate still rose by "
                    f"{100 * step['rise']:.0f} points over the last doubling of its budget "
                    f"({step['from']} to {step['to']} {curve['unit']}): it is a lower bound "
                    "that a stronger attack would raise"
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
