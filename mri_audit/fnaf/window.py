"""The window FNAF features start and move in (plain Python: the report reads it without torch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["Window", "make_window"]


class Window(NamedTuple):
    """A rectangle of the target, in target pixel coordinates."""

    top: int
    left: int
    height: int
    width: int


def make_window(target_shape: Sequence[int], spec: float | Sequence[int] = 0.375) -> Window:
    """The window features start and move in.

    Args:
        target_shape: ``(h, w)`` of the target.
        spec: a fraction of each side for a centred window (default 0.375: the central 120x120
            of a 320x320 target), or an explicit ``(top, left, height, width)``.
    """
    h, w = int(target_shape[0]), int(target_shape[1])
    if isinstance(spec, (int, float)):
        if not 0 < float(spec) <= 1:
            raise ValueError(f"window fraction must be in (0, 1], got {spec}")
        wh, ww = max(1, round(h * float(spec))), max(1, round(w * float(spec)))
        return Window((h - wh) // 2, (w - ww) // 2, wh, ww)
    top, left, wh, ww = (int(v) for v in spec)
    if wh < 1 or ww < 1 or top < 0 or left < 0 or top + wh > h or left + ww > w:
        raise ValueError(f"window {tuple(spec)} does not fit in a {h}x{w} target")
    return Window(top, left, wh, ww)
