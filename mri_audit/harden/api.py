"""The library entry point of hardening: ``mri_audit.harden(model, ...) -> HardenResult``.

``mri-audit harden`` parses its options and calls :func:`harden`, which checks every keyword as
the flag of the same name is checked, refuses an ``out`` it would overwrite, joins the
``torchrun`` process group when there is one, holds ``out``'s lock, fine-tunes the model against
FNAFs, keeps the best epoch (or blend) on the held-out ``select`` slices, writes the card and
runs the before/after audit on other held-out slices (DESIGN §7).

Example::

    import mri_audit

    hardened = mri_audit.harden("examples/unet.py:UNet", weights="examples/weights/unet_4x.pt",
                                accel=4, epochs=2, steps=20, out="robust.pt")
    print(hardened.selected_epoch, hardened.attack_rate_before, hardened.attack_rate_after)
    hardened.audit.attacks          # the before/after audit (an AuditResult)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mri_audit.errors import UsageError
from mri_audit.harden.keywords import KEYWORDS, check_keywords
from mri_audit.harden.outputs import check_outputs, hold_out_lock
from mri_audit.harden.result import HardenResult

__all__ = ["HardenResult", "harden"]

PathLike = str | os.PathLike


def harden(
    model: PathLike,
    *,
    weights: PathLike | None = None,
    model_args: Sequence[str] | Mapping[str, Any] = (),
    input_domain: str | None = None,
    normalize: str = "instance",
    data: PathLike | None = None,
    val_data: PathLike | None = None,
    accel: float | Sequence[float] = 4,
    center_fraction: float | None = None,
    mask_type: str = "random",
    epochs: int = 5,
    steps: int | None = None,
    lr: float = 1e-4,
    batch_size: int = 4,
    lam: float = 1.0,
    feature_steps_range: int | tuple[int, int] = (10, 100),
    inner_steps: int = 4,
    candidates: int = 11,
    attack_fraction: float = 1.0,
    recovery: float = 0.0,
    recovery_target: str = "feature",
    val_candidates: int | None = None,
    val_steps: int | None = None,
    loss: str = "l1",
    ssim_tolerance: float = 0.01,
    criterion: str = "erasure",
    margin: float = 0.1,
    nmse_tolerance: float | None = None,
    interpolate: int = 0,
    out: PathLike,
    report_out: PathLike | None = None,
    no_report: bool = False,
    resume: bool = False,
    keep_checkpoint: bool = False,
    seed: int = 0,
    amp: bool = False,
    max_volumes: int | None = None,
    max_slices: int | None = None,
    device: str = "auto",
    progress: bool = False,
    command_line: Sequence[str] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_trained: Callable[[HardenResult], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> HardenResult:
    """Fine-tune ``model`` to resist FNAFs, keep the best weights in ``out``, audit before/after.

    Every default is the CLI's; the names are ``mri-audit harden``'s options (``lam`` is
    ``--lambda``, ``input_domain`` ``--input``).

    Args:
        model: the model's spec, ``path/to/file.py:Name`` or ``package.module:Name`` (a Python
            class: TorchScript and ``.pt2`` programs cannot be trained); ``weights`` (the
            original, kept as it is), ``model_args`` (``["k=v"]`` or ``{"k": v}``),
            ``input_domain`` and ``normalize`` are its settings.
        data: fastMRI training data (file or folder; None: the built-in phantoms); the kept
            weights are chosen on held-out ``select`` volumes, and the before/after audit
            reports ``val_data`` (default: other held-out volumes), never the same slices.
        accel: one acceleration or several to train at; ``center_fraction``, ``mask_type``
            make the masks.
        epochs, steps, lr, batch_size, lam, feature_steps_range, loss, amp: the training
            (``steps``: per epoch, None for one pass over the training slices).
        inner_steps, candidates, attack_fraction, recovery, recovery_target: the inner
            maximisation (``fnaf-pgd`` steps from the best of ``candidates`` random features;
            0 steps: random search only), the part of each batch attacked, the recovery term's
            weight and what it asks for (``feature``: all of it; ``data``: r >= r0 + margin/2).
        val_candidates, val_steps: the validation attacks' budget (``fnaf-rs`` and
            ``fnaf-pgd``; default 3x ``candidates`` and 4x ``inner_steps``, at least 33 and 32;
            a smaller one is refused). The before/after audit uses the same.
        ssim_tolerance, nmse_tolerance, interpolate: which epochs (and weight blends) may be
            kept: the lowest validation attack rate among those within the tolerances.
        criterion, margin: the FNAF criterion of training, validation and the audit.
        out: the kept weights (a state dict); beside it ``<out>.json`` (the card),
            ``<out>.ckpt`` (the checkpoint: ``resume=True`` continues it; removed after success
            unless ``keep_checkpoint``) and ``<out>.audit/`` (``report_out``; none with
            ``no_report``).
        seed: every random draw (batches, masks, features); the same seed gives the same weights.
        max_volumes, max_slices: limit the training data (``max_slices`` the held-out too).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (under ``torchrun``, each
            process's own GPU).
        progress: progress bars for the epochs and the before/after audit.
        command_line: recorded in the card and the audit (default ``["mri_audit.harden"]``).
        on_epoch: called with each validation entry (the start, each epoch, each blend; a
            resumed checkpoint's first), on the main process.
        on_trained: called with the result so far (no audit yet) once the kept weights and the
            card are written, before the before/after audit, on the main process.
        on_stage: told what an interruption from now on leaves behind (the CLI prints it).

    Returns:
        the :class:`HardenResult` (on every process of a ``torchrun`` job).

    Raises:
        MriAuditError: a bad option, model, data, device or output, as one line, before any
            training where it can be known then.
        AuditInterrupted: Ctrl-C during the before/after audit (the kept weights and the card
            are written; the checkpoint stays for ``resume=True``).
    """
    given = {k: v for k, v in locals().items() if k in KEYWORDS}
    c = check_keywords(model, given, model_args)
    check_outputs(c)
    from mri_audit.audit.distributed import init_distributed, shutdown
    from mri_audit.harden.session import run

    lines = list(command_line or ["mri_audit.harden"])
    hooks = {
        "on_epoch": on_epoch or (lambda entry: None),
        "on_trained": on_trained or (lambda result: None),
        "on_stage": on_stage or (lambda saved: None),
    }
    finished = False
    try:
        env, dev = init_distributed(c["device"])
        try:
            with contextlib.ExitStack() as stack:
                if env.is_main:  # a second harden (or run) on out is refused in one line
                    stack.enter_context(hold_out_lock(Path(c["out"])))
                result = run(c, env, dev, progress=c["progress"], command_line=lines, **hooks)
            finished = True
            return result
        finally:
            shutdown(env, wait=finished)
    except ValueError as err:  # the data's split, a checkpoint's settings: a usage error
        raise UsageError(str(err)) from None
