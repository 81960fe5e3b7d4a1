"""``mri-audit harden``: FNAF-robust fine-tuning, then a before/after audit."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mri_audit.cli.options import (
    FiniteFloat,
    FiniteFloatRange,
    check_acceleration,
    criterion_option,
    device_option,
    margin_option,
    model_options,
)
from mri_audit.errors import ModelError, UsageError


def check_out(out: Path, *, resume: bool) -> None:
    """Refuse an ``--out`` that a run would overwrite, or a ``--resume`` with nothing to resume.

    A successful run removes its checkpoint ``<out>.ckpt`` (unless ``--keep-checkpoint``), so
    kept weights without a checkpoint are a finished run: neither a new run nor ``--resume``
    may write over them.

    Args:
        out: the ``--out`` weights file.
        resume: whether ``--resume`` was given.

    Raises:
        UsageError: ``out`` exists and the run would overwrite it, or cannot resume it (exit 2).
    """
    checkpoint = out.with_suffix(out.suffix + ".ckpt")
    if not out.exists() or (resume and checkpoint.exists()):
        return
    if checkpoint.exists():
        raise UsageError(
            f"{out} and its checkpoint exist; use --resume to continue, or another --out"
        )
    card = out.with_suffix(out.suffix + ".json")
    finished = f"{out} holds the kept weights of a finished harden run (card {card.name})"
    if resume and card.exists():
        raise UsageError(
            f"nothing to resume: {finished}, whose checkpoint was removed when it succeeded "
            "(--keep-checkpoint keeps it); use another --out to train again"
        )
    if resume:
        raise UsageError(
            f"nothing to resume: {out} exists but its checkpoint {checkpoint.name} does not; "
            f"use another --out to train again (or remove {out})"
        )
    if card.exists():
        raise UsageError(f"{finished}; use another --out to train again")
    raise UsageError(f"{out} exists; harden does not overwrite it: use another --out, or remove it")


def _steps_range(value: str) -> tuple[int, int]:
    try:
        low, _, high = value.partition("-")
        lo, hi = int(low), int(high or low)
    except ValueError:
        lo = hi = 0
    if not 1 <= lo <= hi:
        raise UsageError(
            f"--feature-steps-range must be LOW-HIGH with 1 <= LOW <= HIGH, got {value!r}"
        )
    return lo, hi


@click.command("harden")
@model_options
@click.option(
    "--data",
    type=click.Path(),
    default=None,
    help="Training data (fastMRI file or folder) [default: built-in phantoms].",
)
@click.option(
    "--val-data",
    type=click.Path(),
    default=None,
    help="Held-out data the before/after audit reports [default: the built-in held-out "
    "phantoms, or the last tenth of --data's volumes]. The kept epoch or blend is chosen on "
    "other held-out volumes (the built-in `select` phantoms, or the tenth of --data before "
    "that), never on these.",
)
@click.option(
    "--accel",
    type=FiniteFloat(),
    multiple=True,
    default=(4.0,),
    show_default=True,
    help="Acceleration(s) to train at (repeatable: --accel 4 --accel 8).",
)
@click.option(
    "--center-fraction",
    type=FiniteFloat(),
    default=None,
    help="Fraction of centre columns always sampled [default: 0.08 at 4x, 0.04 at 8x, "
    "0.32/accel otherwise].",
)
@click.option(
    "--mask",
    "mask_type",
    type=click.Choice(["random", "equispaced"]),
    default="random",
    show_default=True,
    help="fastMRI mask function of the training and validation masks (RandomMaskFunc or "
    "EquispacedMaskFractionFunc).",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Training epochs; each ends with a validation and a checkpoint.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=None,
    help="Steps per epoch [default: one pass over the training slices].",
)
@click.option(
    "--lr",
    type=FiniteFloatRange(min=0, min_open=True),
    default=1e-4,
    show_default=True,
    help="Adam learning rate.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Slices per step.",
)
@click.option(
    "--lambda",
    "lam",
    type=FiniteFloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Weight of the FNAF term.",
)
@click.option(
    "--feature-steps-range",
    default="10-100",
    show_default=True,
    help="Random-walk lengths of the training features (LOW-HIGH).",
)
@click.option(
    "--inner",
    type=click.Choice(["random", "pgd"]),
    default="random",
    show_default=True,
    help="Inner maximisation: random candidates, or + fnaf-pgd.",
)
@click.option(
    "--candidates",
    type=click.IntRange(min=1),
    default=11,
    show_default=True,
    help="FNAF candidates per training slice in the inner maximisation.",
)
@click.option(
    "--loss",
    type=click.Choice(["l1", "ssim", "mse", "ssim+l1"]),
    default="l1",
    show_default=True,
    help="Image loss: L1/MSE in per-slice normalised units, 1-SSIM, or 1-SSIM + L1 "
    "(keeps SSIM and NMSE together). The loss on the FNAF region is L1 (MSE for mse).",
)
@click.option(
    "--ssim-tolerance",
    type=FiniteFloatRange(min=0),
    default=0.01,
    show_default=True,
    help="Keep epochs whose validation SSIM is within this of the starting model's.",
)
@criterion_option
@margin_option
@click.option(
    "--nmse-tolerance",
    type=FiniteFloatRange(min=0),
    default=None,
    help="Also require the validation NMSE to stay within this fraction of the starting "
    "model's (0.1: at most 10% higher) [default: no NMSE condition].",
)
@click.option(
    "--interpolate",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="N",
    help="After training, also validate N blends (1-a)*start + a*final of the starting and "
    "final weights, a = 1/(N+1) ... N/(N+1) (WiSE-FT); they compete with the epochs for the "
    "kept weights under the same tolerances. 9 tries a = 0.1, 0.2, ..., 0.9.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    required=True,
    help="Where the hardened weights (a state dict) go.",
)
@click.option(
    "--report-out",
    type=click.Path(file_okay=False),
    default=None,
    help="Before/after audit folder [default: <out>.audit/].",
)
@click.option("--no-report", is_flag=True, help="Skip the before/after audit.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run from its checkpoint <out>.ckpt (same options).",
)
@click.option(
    "--keep-checkpoint",
    is_flag=True,
    help="Keep <out>.ckpt after a successful run [default: remove it; an interrupted or "
    "failed run always keeps it for --resume].",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of every random draw (batches, masks, features); the same seed gives the same "
    "weights.",
)
@click.option(
    "--amp",
    is_flag=True,
    help="Mixed precision for the training step (float16 on CUDA, bfloat16 on the CPU).",
)
@click.option(
    "--max-volumes",
    type=click.IntRange(min=1),
    default=None,
    help="Train on at most N volumes (the held-out volumes are all used).",
)
@click.option(
    "--max-slices",
    type=click.IntRange(min=1),
    default=None,
    help="Use at most N central slices per volume (training and held-out).",
)
@device_option
def harden(**opts) -> None:
    """Fine-tune a model to resist FNAFs; keeps the best epoch and audits before vs after.

    Each step finds FNAFs against the current weights, then minimises the clean loss plus
    --lambda times the loss on the FNAF-augmented inputs. A checkpoint (<out>.ckpt) is written
    every epoch; --resume continues from it. It is removed once the run has succeeded (unless
    --keep-checkpoint). The kept weights have the lowest validation
    fnaf-rs attack rate among epochs (and --interpolate blends) within --ssim-tolerance and
    --nmse-tolerance of the starting model, measured on held-out `select` slices; the
    before/after audit then reports other held-out slices (--val-data), never the ones the
    weights were chosen on.
    """
    from mri_audit.cli.harden_impl import execute

    for a in opts["accel"]:
        check_acceleration(a, opts["center_fraction"])
    opts["feature_steps_range"] = _steps_range(opts["feature_steps_range"])
    out = Path(opts["out"])
    check_out(out, resume=opts["resume"])
    if opts["weights"] and Path(opts["weights"]).resolve() == out.resolve():
        raise UsageError("--out must differ from --weights (the original is kept)")
    report_out = Path(opts["report_out"] or f"{out}.audit")
    if not opts["no_report"] and report_out.resolve() == out.parent.resolve():
        raise UsageError(
            f"--report-out {report_out} is the folder --out is written in; the before/after "
            "audit needs a folder of its own (default: <out>.audit)"
        )
    try:
        code = execute(opts, command_line=[Path(sys.argv[0]).name, *sys.argv[1:]])
    except ValueError as err:
        raise UsageError(str(err)) from None
    except ModelError:
        raise
    if code:
        sys.exit(code)
