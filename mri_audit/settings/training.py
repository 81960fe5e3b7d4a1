"""The settings of ``mri-audit harden`` (robust fine-tuning), described once: its flags and
the keyword arguments of :func:`mri_audit.harden` (``progress`` is the library's only)."""

from __future__ import annotations

from dataclasses import replace

from mri_audit.settings.catalog import (
    ACCEL,
    CENTER_FRACTION,
    CRITERION,
    DATA,
    DEVICE,
    MARGIN,
    MASK,
    MAX_SLICES,
    MAX_VOLUMES,
    MODEL_SETTINGS,
    PROGRESS,
    SEED,
    reported,
)
from mri_audit.settings.spec import Setting

__all__ = ["HARDEN"]


def _with_recovery(v) -> str | None:
    if v.get("recovery"):
        return None
    return "is what the recovery term asks for, but --recovery is 0 (no such term); set --recovery"


HARDEN: tuple[Setting, ...] = (
    replace(MODEL_SETTINGS[0], required=True),
    *MODEL_SETTINGS[1:5],
    replace(DATA, help="Training data (fastMRI file or folder) [default: built-in phantoms]."),
    Setting(
        "val_data",
        "path",
        help="Held-out data the before/after audit reports [default: the built-in held-out "
        "phantoms, or the last tenth of --data's volumes]. The kept epoch or blend is chosen on "
        "other held-out volumes (the built-in `select` phantoms, or the tenth of --data before "
        "that), never on these.",
    ),
    replace(
        ACCEL,
        default=(4.0,),
        multiple=True,
        help="Acceleration(s) to train at (repeatable: --accel 4 --accel 8).",
    ),
    CENTER_FRACTION,
    replace(
        MASK,
        help="fastMRI mask function of the training and validation masks (RandomMaskFunc or "
        "EquispacedMaskFractionFunc).",
    ),
    Setting(
        "epochs",
        "int",
        default=5,
        low=1,
        help="Training epochs; each ends with a validation and a checkpoint.",
    ),
    Setting(
        "steps", "int", low=1, help="Steps per epoch [default: one pass over the training slices]."
    ),
    Setting("lr", "float", default=1e-4, low=0, low_open=True, help="Adam learning rate."),
    Setting("batch_size", "int", default=4, low=1, help="Slices per step."),
    Setting("lam", "float", default=1.0, low=0, flag="--lambda", help="Weight of the FNAF term."),
    Setting(
        "feature_steps_range",
        "steps",
        default="10-100",
        metavar="LOW-HIGH",
        help="Random-walk lengths of the training features (LOW-HIGH).",
    ),
    Setting(
        "inner_steps",
        "int",
        default=4,
        low=0,
        help="Inner maximisation: fnaf-pgd gradient steps on each training feature, from the "
        "best of --candidates random ones (as the audit's fnaf-pgd); 0: the random candidates "
        "only (the FNAF paper's recipe).",
    ),
    Setting(
        "candidates",
        "int",
        default=11,
        low=1,
        help="FNAF candidates per training slice in the inner maximisation.",
    ),
    Setting(
        "attack_fraction",
        "float",
        default=1.0,
        low=0,
        high=1,
        low_open=True,
        hint="a fraction: 0.5 attacks half of each batch",
        help="Part of each batch's slices attacked (the rest train on the clean loss only).",
    ),
    Setting(
        "recovery",
        "float",
        default=0.0,
        low=0,
        help="Weight of the feature-recovery term (TRADES-like): on the feature's region, what "
        "the reconstruction adds with the feature against what the feature adds to the truth.",
    ),
    Setting(
        "recovery_target",
        "choice",
        default="feature",
        choices=("feature", "data"),
        help="What the recovery term asks the model to show: the whole feature (feature), or "
        "what the undersampled data carries of it, r >= r0 + margin/2 (data: a hinge on the "
        "erasure criterion's own quantities).",
        applies=_with_recovery,
    ),
    Setting(
        "val_candidates",
        "int",
        low=1,
        help="Candidates of the validation attacks, fnaf-rs and fnaf-pgd [default: 3x "
        "--candidates, at least 33]; at least 3x --candidates.",
    ),
    Setting(
        "val_steps",
        "int",
        low=1,
        help="Gradient steps of the validation fnaf-pgd [default: 4x --inner-steps, at least "
        "32]; at least 4x --inner-steps.",
    ),
    Setting(
        "loss",
        "choice",
        default="l1",
        choices=("l1", "ssim", "mse", "ssim+l1"),
        help="Image loss: L1/MSE in per-slice normalised units, 1-SSIM, or 1-SSIM + L1 (keeps "
        "SSIM and NMSE together). The loss on the FNAF region is L1 (MSE for mse).",
    ),
    Setting(
        "ssim_tolerance",
        "float",
        default=0.01,
        low=0,
        help="Keep epochs whose validation SSIM is within this of the starting model's.",
    ),
    CRITERION,
    MARGIN,
    Setting(
        "nmse_tolerance",
        "float",
        low=0,
        help="Also require the validation NMSE to stay within this fraction of the starting "
        "model's (0.1: at most 10% higher) [default: no NMSE condition].",
    ),
    Setting(
        "interpolate",
        "int",
        default=0,
        low=0,
        metavar="N",
        help="After training, also validate N blends (1-a)*start + a*final of the starting and "
        "final weights, a = 1/(N+1) ... N/(N+1) (WiSE-FT); they compete with the epochs for the "
        "kept weights under the same tolerances. 9 tries a = 0.1, 0.2, ..., 0.9.",
    ),
    Setting("out", "path", required=True, help="Where the hardened weights (a state dict) go."),
    Setting(
        "report_out",
        "path",
        help="Before/after audit folder [default: <out>.audit/].",
        applies=reported,
    ),
    Setting("no_report", "flag", default=False, help="Skip the before/after audit."),
    Setting(
        "resume",
        "flag",
        default=False,
        help="Continue an interrupted run from its checkpoint <out>.ckpt (same options).",
    ),
    Setting(
        "keep_checkpoint",
        "flag",
        default=False,
        help="Keep <out>.ckpt after a successful run [default: remove it; an interrupted or "
        "failed run always keeps it for --resume].",
    ),
    replace(
        SEED,
        help="Seed of every random draw (batches, masks, features); the same seed gives the "
        "same weights.",
    ),
    Setting(
        "amp",
        "flag",
        default=False,
        help="Mixed precision for the training step (float16 on CUDA, bfloat16 on the CPU).",
    ),
    replace(MAX_VOLUMES, help="Train on at most N volumes (the held-out volumes are all used)."),
    replace(MAX_SLICES, help="Use at most N central slices per volume (training and held-out)."),
    DEVICE,
    replace(PROGRESS, help="Progress bars for the epochs and the before/after audit."),
)
