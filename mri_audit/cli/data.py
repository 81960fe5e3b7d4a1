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
    from mri_audit.cli import on_interrupt
    from mri_audit.data.phantoms import synth_dataset

    on_interrupt(
        "the volumes written so far are complete (each file is written whole); run the command "
        "again for the rest"
    )

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
    """Check a fastMRI .h5 file or folder (attrs and every slice) and describe it.

    One line per file, good or bad: `ok` with its slices, k-space grid (and coils), target key
    (reconstruction_esc, reconstruction_rss, or a computed RSS when the file has neither) and
    invalid slices, or `bad` with the one-line problem. Then a summary of the good files. Exits
    4 when any file is bad (an audit cannot use the folder), after reporting every file.
    """
    from mri_audit.data.info import inspect_files
    from mri_audit.errors import DataError

    reports = inspect_files(path, max_volumes=max_volumes, max_slices=max_slices)
    for report in reports:
        click.echo(_file_line(report))
    good = [r for r in reports if r.ok]
    bad = [r for r in reports if not r.ok]
    _summary(path, good, bad)
    if bad:
        names = ", ".join(r.path.name for r in bad[:4]) + (
            f" and {len(bad) - 4} more" if len(bad) > 4 else ""
        )
        raise DataError(
            f"{len(bad)} of {len(reports)} files cannot be used ({names}); fix them or remove "
            "them from the data"
        )


def _grid(shape) -> str:
    return "x".join(str(int(n)) for n in shape)


def _details(report) -> str:
    """Slices, k-space grid and coils, and target of a file whose metadata was read."""
    vol = report.volume
    coils = vol.kspace_shape[0]
    slices = (
        f"{report.slices} slices"
        if report.slices == vol.num_slices
        else f"{report.slices} of {vol.num_slices} slices"
    )
    plural = "s" if coils > 1 else ""
    return (
        f"{slices}, k-space {_grid(vol.kspace_shape[1:])} ({coils} coil{plural}), "
        f"target {report.target} {_grid(vol.target_shape)}"
    )


def _file_line(report) -> str:
    """``ok   name: details, invalid slices`` or ``bad  name: problem [details]``."""
    name = report.path.name
    if not report.ok:
        details = f" [{_details(report)}]" if report.volume is not None else ""
        return f"bad  {name}: {report.problem}{details}"
    return f"ok   {name}: {_details(report)}, invalid slices: {_counted(report.invalid)}"


def _counted(counts: dict[str, int]) -> str:
    """``0``, or ``2 (reason: 1; reason: 1)``."""
    listed = "; ".join(f"{reason}: {n}" for reason, n in counts.items())
    return f"{sum(counts.values())}" + (f" ({listed})" if listed else "")


def _summary(path: Path, good: list, bad: list) -> None:
    """The totals over the good files (the ones an audit could use)."""
    vols = [r.volume for r in good]

    def shapes(values) -> str:
        return ", ".join(_grid(s) for s in sorted(set(values))) or "-"

    targets: dict[str, int] = {}
    invalid: dict[str, int] = {}
    for r in good:
        targets[r.target] = targets.get(r.target, 0) + 1
        for reason, n in r.invalid.items():
            invalid[reason] = invalid.get(reason, 0) + n
    invalid = dict(sorted(invalid.items(), key=lambda kv: (-kv[1], kv[0])))
    click.echo(f"source:   {path}")
    click.echo(f"files:    {len(good) + len(bad)} ({len(good)} ok, {len(bad)} bad)")
    click.echo(f"volumes:  {len(good)}")
    click.echo(f"slices:   {sum(r.slices for r in good)}")
    click.echo(f"k-space:  {shapes(tuple(v.kspace_shape[1:]) for v in vols)}")
    click.echo(f"target:   {shapes(tuple(v.target_shape) for v in vols)}")
    click.echo(f"coils:    {', '.join(str(c) for c in sorted({v.kspace_shape[0] for v in vols}))}")
    by_count = sorted(targets.items(), key=lambda kv: (-kv[1], kv[0]))
    click.echo(f"targets:  {', '.join(f'{k}: {n}' for k, n in by_count) or '-'}")
    total = sum(invalid.values())
    listed = "; ".join(f"{reason}: {n}" for reason, n in invalid.items())
    click.echo(f"invalid:  {total} slices" + (f" ({listed})" if listed else ""))
