"""``mri-audit map``: the feature-recovery map of one or more models (size × contrast × shape).

Writes ``map.csv`` (one row per model × cell), ``results.json`` (``"kind": "map"``) and
``report.html`` to ``--out``. The work is in :mod:`mri_audit.audit.recovery_map`; heavy imports wait
until the command runs, so ``mri-audit --help`` stays fast.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import click

from mri_audit.cli.settings import checked, config_option, setting_options
from mri_audit.errors import UsageError
from mri_audit.settings import MAP

DEFAULT_OUT = "mri-audit-map"


def _numbers(text: str, option: str) -> list[float]:
    """``a,b,c`` as floats; one line naming ``option`` otherwise."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise UsageError(f"{option} needs comma-separated numbers, e.g. 0.1,0.5,1; got {text!r}")
    return values


def parse_sizes(values: tuple[str, ...]) -> dict[str, list[float]]:
    """``--sizes SHAPE=a,b,c`` (repeatable) as shape -> sizes.

    Raises:
        UsageError: not ``SHAPE=NUMBERS``, or a shape given twice.
    """
    out: dict[str, list[float]] = {}
    for v in values:
        shape, eq, rest = v.partition("=")
        shape = shape.strip()
        if not (shape and eq and rest.strip()):
            raise UsageError(f"--sizes needs SHAPE=a,b,c (e.g. disk=1,2,4,8), got {v!r}")
        if shape in out:
            raise UsageError(f"--sizes gives {shape!r} twice; give each shape once")
        out[shape] = _numbers(rest, f"--sizes {shape}=")
    return out


def _grid(opts: dict):
    """The map's grid from the options (one line per bad value)."""
    from mri_audit.audit.recovery_map import MapGrid

    shapes = list(opts["shapes"])
    sizes = parse_sizes(opts["sizes"])
    contrasts = _numbers(opts["contrasts"], "--contrasts")
    try:
        return MapGrid.make(shapes, sizes, contrasts, opts["draws"], opts["line_width"])
    except ValueError as err:
        option = "--shapes"
        text = str(err)
        if "contrast" in text:
            option = "--contrasts"
        elif "size" in text:
            option = "--sizes"
        elif "width" in text:
            option = "--line-width"
        raise UsageError(f"{option}: {text}") from None


def _existing(out: Path) -> list[str]:
    """The result files already in ``out``: a map's or an audit's."""
    from mri_audit.audit.outdir import audit_files
    from mri_audit.report.map_files import MAP_FILES

    found = {f for f in MAP_FILES if (out / f).exists()} | {p.name for p in audit_files(out)}
    return sorted(found)


def _refuse_existing(out: Path, force: bool) -> None:
    """Refuse a folder holding a map or an audit unless ``--force``."""
    present = _existing(out)
    if present and not force:
        raise UsageError(
            f"{out} already holds results ({', '.join(present[:6])}); use --force to replace "
            "them, or choose another --out"
        )


def _remove_existing(out: Path) -> None:
    """``--force``: remove the earlier map or audit (just before the new files are written)."""
    from mri_audit.audit.outdir import remove_audit
    from mri_audit.report.map_files import MAP_FILES

    remove_audit(out)
    for f in MAP_FILES:
        (out / f).unlink(missing_ok=True)


def _table(section: dict) -> str:
    """The contrast-detail curves as text: smallest recovered size per contrast."""
    grid = section["grid"]
    contrasts = grid["contrasts"]
    evidence = "zero-filled r0"
    width = max(len(n) for n in [*section["models"], evidence]) + 2
    lines = [f"Smallest size with mean r >= {grid['threshold']:g} at each contrast:"]
    for shape in grid["shapes"]:
        unit = grid["size_units"].get(shape, "size")
        lines.append("")
        lines.append(f"{shape} {unit}".ljust(width) + "".join(f"{c:>7g}" for c in contrasts))
        rows = [(m, section["curves"][m][shape]) for m in section["models"]]
        rows.append((evidence, section["evidence"].get(shape, [])))
        lines.extend(_rows(rows, width))
    relative = section.get("relative_curves")
    if relative:
        lines.append("")
        lines.append(
            f"Smallest size with mean r >= {grid['threshold']:g} x mean r0 (relative to the data):"
        )
        for shape in grid["shapes"]:
            unit = grid["size_units"].get(shape, "size")
            lines.append("")
            lines.append(f"{shape} {unit}".ljust(width) + "".join(f"{c:>7g}" for c in contrasts))
            lines.extend(_rows([(m, relative[m][shape]) for m in section["models"]], width))
    return "\n".join(lines)


def _rows(rows: list, width: int) -> list[str]:
    """One text line per (name, sizes) row; '-' where no size was recovered."""
    return [
        name.ljust(width) + "".join(f"{'-' if v is None else format(v, 'g'):>7}" for v in values)
        for name, values in rows
    ]


def execute(opts: dict, command_line: list[str]) -> None:
    """Compute the map described by the parsed options and write its files."""
    from mri_audit.audit.outdir import precheck_out, prepare_folder
    from mri_audit.audit.outlock import hold_lock
    from mri_audit.audit.progress import map_progress
    from mri_audit.cli import on_interrupt
    from mri_audit.data.opening import open_data
    from mri_audit.device import resolve_device
    from mri_audit.models.entries import check_files, model_entries, unique_names
    from mri_audit.models.opening import open_entries
    from mri_audit.mri.physics import make_mask_func

    grid = _grid(opts)
    if opts["sign"] is not None:  # a bad key is refused before any work
        from mri_audit.evidence.signing import load_private_key

        load_private_key(Path(opts["sign"]))
    entries = model_entries(opts)
    check_files(entries)  # before the data is read, before anything is written
    out: Path = opts["out"]
    precheck_out(out, resume=False, force=True)  # a folder we can write, with free space
    if out.is_dir():
        _refuse_existing(out, opts["force"])
    device = resolve_device(opts["device"])
    mask_func = make_mask_func(opts["mask_type"], opts["accel"], opts["center_fraction"])
    dataset, probe = open_data(opts["data"], opts["max_volumes"], opts["max_slices"])
    prepare_folder(out)
    with hold_lock(out, "mri-audit map"):
        _refuse_existing(out, opts["force"])  # again, under the lock
        on_interrupt(f"no map file was written; {out} keeps what it held before")
        import torch

        torch.manual_seed(opts["seed"])  # a model's own random initialisation is seeded too
        opened = open_entries(
            entries,
            normalize=opts["normalize"],
            device=device,
            probe=probe,
            mask_func=mask_func,
            need_gradient=False,
        )
        from mri_audit.audit.run_setup import apply_samples

        apply_samples(opened, opts["samples"])
        names = unique_names([o.estimator.name for o in opened])
        batch_size = opts["batch_size"]
        if batch_size is None:
            from mri_audit.fnaf.autobatch import choose_batch_size

            batch_size = choose_batch_size(
                [o.estimator for o in opened],
                probe,
                mask_func,
                gradient=False,
                candidates=len(grid.cells()) * grid.draws,
            )
        from mri_audit.audit.recovery_map import recovery_map

        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        section = recovery_map(
            [(n, o.estimator) for n, o in zip(names, opened, strict=True)],
            dataset,
            mask_func=mask_func,
            shapes=grid.shapes,
            sizes={s: grid.sizes_of(s) for s in grid.shapes},
            contrasts=grid.contrasts,
            draws=grid.draws,
            width=grid.width,
            seed=opts["seed"],
            margin=opts["margin"],
            batch_size=batch_size,
            window=opts["window"],
            insert_mode=opts["insert"],
            on_batch=map_progress(not opts["no_progress"]),
        )
        config = {
            "accel": opts["accel"],
            "center_fraction": opts["center_fraction"],
            "mask_type": opts["mask_type"],
            "seed": opts["seed"],
            "margin": opts["margin"],
            "window": opts["window"],
            "insert": opts["insert"],
            "batch_size": batch_size,
            **{k: v for k, v in grid.to_dict().items() if k != "size_units"},
        }
        results = _results(opts, section, config, opened, entries, names, dataset)
        results.update(device=str(device), created=started, command_line=command_line)
        if opts["force"]:
            _remove_existing(out)
        from mri_audit.report.map_files import write_map

        write_map(out, results, sign=opts["sign"])
    click.echo(_table(section))
    click.echo(
        f"\nWrote {out}/map.csv, results.json and report.html "
        f"({section['features_scored']:,} features in {section['elapsed_seconds']:.1f} s)"
    )


def _results(opts, section, config, opened, entries, names, dataset) -> dict:
    """The map's ``results.json`` with the provenance ``run`` records."""
    import json

    from mri_audit.audit.identity import audit_identity
    from mri_audit.audit.run_setup import model_info, versions
    from mri_audit.report.map_files import map_results

    models = [model_info(o, e, n) for o, e, n in zip(opened, entries, names, strict=True)]
    data = dataset.describe()
    identity = audit_identity(
        config=json.loads(json.dumps(config)), models=models, data=data, attack_classes=()
    )
    return map_results(
        section=section,
        config=config,
        models=models,
        data=data,
        code=identity.get("code"),
        command_line=[],
        versions=versions(),
        device="",
        elapsed=section["elapsed_seconds"],
        started="",
    )


@click.command("map")
@config_option("map")
@setting_options(MAP)
def map_command(**opts) -> None:
    """Map which features a model keeps: recovery by feature size, contrast and shape.

    For every cell of the grid (shape x size x contrast), --draws random placements per slice
    are scored through the model: mean recovery r, zero-filled evidence r0 and erasure rate,
    with 95% intervals clustered by volume, and per contrast the smallest size recovered at
    half contrast or better (mean r >= 0.5): the contrast-detail curve. Writes map.csv,
    results.json and report.html to --out. Without --data the built-in phantoms are used.
    """
    from mri_audit.cli import command_line

    opts = checked(MAP, opts)
    opts["out"] = Path(opts["out"])
    execute(opts, command_line=command_line())
