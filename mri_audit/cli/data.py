"""``mri-audit data``: write synthetic fastMRI-format volumes and check data folders."""

from __future__ import annotations

import re
from pathlib import Path

import click

from mri_audit.cli.options import FiniteFloatRange

__all__ = ["data", "KSpaceShape"]


class KSpaceShape(click.ParamType):
    """A k-space grid written ``HxW`` (e.g. ``640x368``)."""

    name = "HxW"

    def convert(self, value, param, ctx) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        match = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", str(value))
        if not match or min(int(match[1]), int(match[2])) < 1:
            self.fail(f"{value!r} is not a grid like 640x368 (rows x columns)", param, ctx)
        return int(match[1]), int(match[2])


@click.group("data")
def data() -> None:
    """Synthetic data and data checks."""


@data.command("synth")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write the .h5 files into (created if missing).",
)
@click.option(
    "--volumes", type=click.IntRange(min=1), default=4, show_default=True, help="Files to write."
)
@click.option(
    "--slices", type=click.IntRange(min=1), default=8, show_default=True, help="Slices per volume."
)
@click.option(
    "--size", type=click.IntRange(min=16), default=320, show_default=True, help="Target size."
)
@click.option(
    "--coils", type=click.IntRange(min=1), default=1, show_default=True, help="1 = single-coil."
)
@click.option(
    "--kspace-shape",
    type=KSpaceShape(),
    metavar="HxW",
    default=None,
    help="k-space grid, at least SIZExSIZE (e.g. 640x368 mimics fastMRI knee oversampling) "
    "[default: SIZExSIZE].",
)
@click.option(
    "--noise",
    type=FiniteFloatRange(min=0),
    default=0.02,
    show_default=True,
    help="k-space noise std relative to the image maximum.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Base seed of the volumes.")
@click.option("--prefix", default="synth", show_default=True, help="File name prefix.")
def synth(
    out: Path,
    volumes: int,
    slices: int,
    size: int,
    coils: int,
    kspace_shape: tuple[int, int] | None,
    noise: float,
    seed: int,
    prefix: str,
) -> None:
    """Write deterministic knee-like phantom volumes as fastMRI HDF5 files."""
    from mri_audit.phantoms import synth_dataset

    if kspace_shape is not None and (kspace_shape[0] < size or kspace_shape[1] < size):
        raise click.BadParameter(
            f"{kspace_shape[0]}x{kspace_shape[1]} is smaller than the target size {size}x{size}",
            param_hint="'--kspace-shape'",
        )
    if not re.fullmatch(r"[A-Za-z0-9._-]+", prefix):
        raise click.BadParameter("use letters, digits, '.', '_' or '-'", param_hint="'--prefix'")
    from mri_audit.errors import UsageError, write_failure

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    try:
        paths = synth_dataset(
            out,
            volumes=volumes,
            slices=slices,
            size=size,
            coils=coils,
            seed=seed,
            kspace_shape=kspace_shape,
            prefix=prefix,
            noise=noise,
        )
    except OSError as err:  # each file is written atomically: those already there are whole
        raise write_failure(out, err, "files already written are complete") from None
    kh, kw = kspace_shape or (size, size)
    kind = "single-coil" if coils == 1 else f"{coils}-coil"
    click.echo(
        f"Wrote {len(paths)} {kind} volume(s) of {slices} slice(s) to {out} "
        f"(k-space {kh}x{kw}, target {size}x{size}, seed {seed})"
    )


@data.command("info")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--max-volumes", type=click.IntRange(min=1), default=None, help="First N files only.")
@click.option(
    "--max-slices", type=click.IntRange(min=1), default=None, help="Central N slices per volume."
)
def info(path: Path, max_volumes: int | None, max_slices: int | None) -> None:
    """Check a fastMRI .h5 file or folder (attrs and every slice) and describe it."""
    from mri_audit.data import open_dataset

    dataset = open_dataset(path, max_volumes=max_volumes, max_slices=max_slices)
    desc = dataset.describe()

    def shapes(key: str) -> str:
        return ", ".join("x".join(map(str, s)) for s in desc[key])

    click.echo(f"source:   {desc['source']}")
    click.echo(f"volumes:  {desc['volumes']}")
    click.echo(f"slices:   {desc['slices']}")
    click.echo(f"k-space:  {shapes('kspace_shapes')}")
    click.echo(f"target:   {shapes('target_shapes')}")
    click.echo(f"coils:    {', '.join(map(str, desc['coils']))}")
    invalid = desc.get("invalid_slices") or {}
    counts = "; ".join(f"{reason}: {n}" for reason, n in invalid.items())
    click.echo(f"invalid:  {sum(invalid.values())} slices" + (f" ({counts})" if counts else ""))
