"""``mri-audit harden``: FNAF-robust fine-tuning, then a before/after audit."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mri_audit.cli.settings import checked, config_option, setting_options
from mri_audit.errors import ModelError, UsageError
from mri_audit.settings import HARDEN


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


@click.command("harden")
@config_option("harden")
@setting_options(HARDEN)
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

    opts = checked(HARDEN, opts)
    steps = opts["feature_steps_range"]
    opts["feature_steps_range"] = steps if isinstance(steps, tuple) else (steps, steps)
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
