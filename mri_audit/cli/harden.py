"""``mri-audit harden``: the options into one :func:`mri_audit.harden` call, then its lines on the
console (each validation, the kept weights, the before/after audit's table)."""

from __future__ import annotations

import sys

import click

from mri_audit.cli.settings import checked, config_option, setting_options
from mri_audit.settings import HARDEN


@click.command("harden")
@config_option("harden")
@setting_options(HARDEN)
def harden(**opts) -> None:
    """Fine-tune a model to resist FNAFs; keeps the best epoch and audits before vs after.

    Each step finds FNAFs against the current weights (fnaf-pgd: --inner-steps gradient steps
    from the best of --candidates random features, on --attack-fraction of the batch), then
    minimises the clean loss plus --lambda times the loss on the FNAF-augmented inputs (plus
    --recovery times the feature-recovery term). A checkpoint (<out>.ckpt) is written every
    epoch; --resume continues from it. It is removed once the run has succeeded (unless
    --keep-checkpoint). Validation attacks are stronger than the training's: fnaf-rs and
    fnaf-pgd with --val-candidates (3x) and --val-steps (4x). The kept weights have the lowest
    validation fnaf-pgd attack rate among epochs (and --interpolate blends) within
    --ssim-tolerance and --nmse-tolerance of the starting model, measured on held-out `select`
    slices; the before/after audit (the same attacks) then reports other held-out slices
    (--val-data), never the ones the weights were chosen on.
    """
    import mri_audit
    from mri_audit.audit.api import AuditInterrupted
    from mri_audit.cli import command_line, on_interrupt
    from mri_audit.cli.run_impl import show_result

    opts = checked(HARDEN, opts)
    kwargs = {s.name: opts[s.dest] for s in HARDEN if s.cli}
    try:
        result = mri_audit.harden(
            kwargs.pop("model"),
            **kwargs,
            progress=True,
            command_line=command_line(),
            on_epoch=lambda entry: click.echo(epoch_line(entry)),
            on_trained=_trained,
            on_stage=on_interrupt,
        )
    except AuditInterrupted:  # during the before/after audit: the card and checkpoint stay
        raise KeyboardInterrupt from None  # the group says what is left ("Interrupted: ...")
    if result.audit is not None:
        show_result(result.audit)
    if result.exit_code:
        sys.exit(result.exit_code)


def _trained(result) -> None:
    """The kept weights, once trained; then where the before/after audit goes."""
    note = (
        " (nothing kept SSIM and NMSE within tolerance: last epoch written)"
        if result.fallback
        else ""
    )
    click.echo(f"kept {_describe(result.best)} -> {result.out}{note} ({result.seconds:.0f} s)")
    if result.report_out is not None:
        click.echo(f"before/after audit on the validation data -> {result.report_out}/")


def epoch_line(entry: dict) -> str:
    """The line of one validated epoch, blend or the start (printed once, as it is done)."""
    loss = f"  train loss {entry['train_loss']:.4f}" if "train_loss" in entry else ""
    return (
        f"{_label(entry):<11} SSIM {entry['ssim']:.4f}  NMSE {entry['nmse']:.5f}  "
        f"attack rate fnaf-rs {entry['rs_rate']:.1%} fnaf-pgd {entry['pgd_rate']:.1%}{loss}"
    )


def _label(entry: dict) -> str:
    """``start``, ``epoch 3`` or ``blend 0.60`` (a WiSE-FT blend of start and final weights)."""
    if "alpha" in entry:
        return f"blend {entry['alpha']:.2f}"
    return "start" if entry["epoch"] == 0 else f"epoch {entry['epoch']}"


def _describe(best: dict) -> str:
    """The kept weights in words."""
    if "alpha" in best:
        a = best["alpha"]
        return f"the blend {1 - a:.2f}*start + {a:.2f}*epoch {best['epoch']}"
    return f"epoch {best['epoch']}"
