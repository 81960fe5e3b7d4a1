"""The grid of a feature-recovery map: shapes, sizes, contrasts, draws, and each placement's key.

A cell is (shape, size, contrast); each cell gets ``draws`` random placements per slice. A
placement's candidate number (:func:`candidate_number`) is a 31-bit hash of (shape, size,
contrast, draw), so with the seed, volume and slice it keys every random draw of the feature
(:func:`mri_audit.rng.candidate_keys`): a feature never depends on batching, on the other cells of
the grid, or on ``draws`` (a map with more draws keeps the first ones).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "DEFAULT_CONTRASTS",
    "DEFAULT_DRAWS",
    "DEFAULT_SHAPES",
    "DEFAULT_SIZES",
    "RECOVERED",
    "SIZE_UNITS",
    "Cell",
    "MapGrid",
    "candidate_number",
]

DEFAULT_SHAPES = ("walk", "disk", "line")
DEFAULT_SIZES: dict[str, tuple[float, ...]] = {
    "walk": (3, 5, 10, 20, 50, 100),
    "disk": (1, 2, 3, 4, 6, 8),
    "line": (4, 8, 12, 20, 30, 40),
}
SIZE_UNITS = {"walk": "steps", "disk": "radius (px)", "line": "length (px)"}
DEFAULT_CONTRASTS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
DEFAULT_DRAWS = 4
RECOVERED = 0.5
"""A feature counts as recovered when its mean ``r`` reaches this (half its contrast or more)."""


class Cell(NamedTuple):
    """One cell of the grid: a feature shape, its size (in that shape's unit) and its contrast
    (a fraction of the slice's intensity range ``max t − min t``)."""

    shape: str
    size: float
    contrast: float


def _number(value: float) -> float | int:
    """Integral sizes as ints (walk steps, and tidy JSON)."""
    return int(value) if float(value).is_integer() else float(value)


@dataclass(frozen=True)
class MapGrid:
    """The grid of a map: shapes, each shape's sizes, contrasts, draws per cell and slice.

    Build it with :meth:`make`, which checks every value.
    """

    shapes: tuple[str, ...]
    sizes: tuple[tuple[float, ...], ...]  # one ascending tuple per shape, in ``shapes`` order
    contrasts: tuple[float, ...]
    draws: int
    width: float = 1.0

    @classmethod
    def make(
        cls,
        shapes: Sequence[str] = DEFAULT_SHAPES,
        sizes: Mapping[str, Sequence[float]] | None = None,
        contrasts: Sequence[float] = DEFAULT_CONTRASTS,
        draws: int = DEFAULT_DRAWS,
        width: float = 1.0,
    ) -> MapGrid:
        """A checked grid; sizes and contrasts are sorted and de-duplicated.

        Args:
            shapes: feature shapes (``walk``, ``disk``, ``line``).
            sizes: shape -> sizes (walk: steps, disk: radius in px, line: length in px); a shape
                not given gets :data:`DEFAULT_SIZES`.
            contrasts: fractions of the slice's intensity range, in (0, 1].
            draws: random placements per cell and slice (>= 1).
            width: line width in px (> 0).

        Raises:
            ValueError: an unknown shape, a size or contrast out of range, or ``draws < 1``.
        """
        from mri_audit.fnaf.shapes import SHAPES

        shapes = tuple(dict.fromkeys(str(s).strip() for s in shapes))
        if not shapes:
            raise ValueError("give at least one shape")
        for s in shapes:
            if s not in SHAPES:
                raise ValueError(f"unknown shape {s!r}; choose from {', '.join(SHAPES)}")
        sizes = dict(sizes or {})
        unknown = sorted(set(sizes) - set(shapes))
        if unknown:
            raise ValueError(f"sizes given for {unknown[0]!r}, which is not among the shapes")
        per_shape = []
        for s in shapes:
            values = sorted({float(v) for v in sizes.get(s, DEFAULT_SIZES[s])})
            if not values:
                raise ValueError(f"{s}: give at least one size")
            for v in values:
                if not math.isfinite(v) or v <= 0:
                    raise ValueError(f"{s} sizes must be positive numbers, got {_number(v)}")
                if s == "walk" and not v.is_integer():
                    raise ValueError(f"walk sizes are step counts (whole numbers), got {v:g}")
            per_shape.append(tuple(_number(v) for v in values))
        contrasts = tuple(sorted({float(c) for c in contrasts}))
        if not contrasts:
            raise ValueError("give at least one contrast")
        for c in contrasts:
            if not (math.isfinite(c) and 0 < c <= 1):
                raise ValueError(f"contrasts must be in (0, 1] (a share of the range), got {c:g}")
        if int(draws) != draws or draws < 1:
            raise ValueError(f"draws must be a whole number >= 1, got {draws}")
        if not (math.isfinite(width) and width > 0):
            raise ValueError(f"width must be a positive number, got {width}")
        return cls(shapes, tuple(per_shape), contrasts, int(draws), float(width))

    def sizes_of(self, shape: str) -> tuple[float, ...]:
        """The sizes of ``shape``, ascending."""
        return self.sizes[self.shapes.index(shape)]

    def cells(self) -> list[Cell]:
        """Every cell, shape by shape, then size, then contrast."""
        return [
            Cell(s, z, c) for s in self.shapes for z in self.sizes_of(s) for c in self.contrasts
        ]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (stored in ``results.json``)."""
        return {
            "shapes": list(self.shapes),
            "sizes": {s: list(self.sizes_of(s)) for s in self.shapes},
            "size_units": {s: SIZE_UNITS.get(s, "") for s in self.shapes},
            "contrasts": list(self.contrasts),
            "draws": self.draws,
            "width": self.width,
        }


def candidate_number(cell: Cell, draw: int) -> int:
    """The candidate number of one placement: a 31-bit hash of (shape, size, contrast, draw).

    With the seed, volume and slice it keys every random draw of the feature
    (:func:`mri_audit.rng.candidate_keys`).
    """
    text = f"{cell.shape}|{float(cell.size):.9g}|{float(cell.contrast):.9g}|{int(draw)}"
    return zlib.crc32(text.encode("ascii")) & 0x7FFFFFFF
