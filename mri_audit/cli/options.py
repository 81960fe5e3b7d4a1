"""Options shared by several commands, and turning them into objects once."""

from __future__ import annotations

import math
from collections.abc import Callable

import click

from mri_audit.errors import UsageError


def _compose(*decorators: Callable) -> Callable:
    def apply(func: Callable) -> Callable:
        for dec in reversed(decorators):
            func = dec(func)
        return func

    return apply


class BatchSizeType(click.ParamType):
    """``auto`` (returned as None) or a positive integer."""

    name = "auto|N"
    description = "'auto' or a positive integer"  # in words, for config-file errors

    def convert(self, value, param, ctx):
        if value is None:
            return None
        text = str(value).strip().lower()
        if text == "auto":
            return None
        try:
            n = int(text) if not isinstance(value, (bool, float)) else 0
        except ValueError:
            n = 0
        if n < 1:
            self.fail(f"must be 'auto' or a positive integer, got {value!r}", param, ctx)
        return n


class _Finite:
    """Refuses ``inf`` and ``nan``, which Python's ``float()`` (and click) accept."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)  # type: ignore[misc]
        if isinstance(rv, float) and not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)  # type: ignore[attr-defined]
        return rv


class FiniteFloat(_Finite, click.types.FloatParamType):
    """A float option that refuses ``inf`` and ``nan``."""


class FiniteFloatRange(_Finite, click.FloatRange):
    """:class:`click.FloatRange` that also refuses ``nan`` (which passes every bound) and
    ``inf``."""


device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    metavar="auto|cpu|cuda|cuda:N",
    help="Where models and attacks run; auto picks a GPU when there is one.",
)


def _model_options(*, required: bool) -> Callable:
    return _compose(
        click.option(
            "--model",
            "model_spec",
            required=required,
            metavar="SPEC",
            help="The model: path/to/file.py:Name, package.module:Name, or a TorchScript file."
            + ("" if required else " (Or the first [[models]] table of --config.)"),
        ),
        _MODEL_SETTINGS,
    )


_MODEL_SETTINGS = _compose(
    click.option(
        "--weights",
        type=click.Path(dir_okay=False),
        help="State dict (or checkpoint with 'state_dict'/'model'), loaded with weights_only.",
    ),
    click.option(
        "--model-arg",
        "model_args",
        multiple=True,
        metavar="KEY=VALUE",
        help="Constructor argument of the model (repeatable; values are Python literals or "
        "strings); NAME:KEY=VALUE gives one to the --compare model NAME.",
    ),
    click.option(
        "--input",
        "input_domain",
        type=click.Choice(["image", "kspace"]),
        default=None,
        help="Input domain of the (main) model; default: its class attribute mri_audit_input, "
        "else kspace when forward takes (masked_kspace, mask), else image.",
    ),
    click.option(
        "--normalize",
        type=click.Choice(["instance", "none"]),
        default="instance",
        show_default=True,
        help="Image-domain input normalisation (fastMRI U-Net transform) or raw magnitudes.",
    ),
)
model_options = _model_options(required=True)
"""``--model`` (required), ``--weights``, ``--model-arg``, ``--input``, ``--normalize``."""
run_model_options = _model_options(required=False)
"""The same, with ``--model`` optional (``run`` also takes ``[[models]]`` tables)."""

mask_options = _compose(
    click.option(
        "--accel",
        type=FiniteFloat(),
        default=4.0,
        show_default=True,
        help="Acceleration (undersampling factor, >= 1).",
    ),
    click.option(
        "--center-fraction",
        type=FiniteFloat(),
        default=None,
        help="Fraction of centre columns always sampled [default: 0.08 at 4x, 0.04 at 8x, "
        "0.32/accel otherwise].",
    ),
    click.option(
        "--mask",
        "mask_type",
        type=click.Choice(["random", "equispaced"]),
        default="random",
        show_default=True,
        help="fastMRI mask function (RandomMaskFunc or EquispacedMaskFractionFunc).",
    ),
)

data_options = _compose(
    click.option(
        "--data",
        type=click.Path(),
        default=None,
        help="fastMRI HDF5 file or folder [default: the built-in synthetic phantoms].",
    ),
    click.option(
        "--max-volumes", type=click.IntRange(min=1), default=None, help="Use at most N volumes."
    ),
    click.option(
        "--max-slices",
        type=click.IntRange(min=1),
        default=None,
        help="Use at most N central slices per volume.",
    ),
)


def check_acceleration(accel: float, center_fraction: float | None) -> None:
    """One-line errors for impossible mask settings."""
    if not 1 <= accel < math.inf:  # nan fails too
        raise UsageError(f"--accel must be >= 1 (1 = fully sampled), got {accel:g}")
    if center_fraction is not None and not 0 < center_fraction <= 1:  # nan fails too
        raise UsageError(f"--center-fraction must be in (0, 1], got {center_fraction:g}")


criterion_option = click.option(
    "--criterion",
    type=click.Choice(["erasure", "recovery", "paper"]),
    default="erasure",
    show_default=True,
    help="What counts as a lost feature. erasure: the model removes at least --margin of the "
    "feature that the undersampled data carries (e = r0 - r); recovery: the model shows it at "
    "less than --min-recovery of its contrast while the data carries at least 0.1 (r < r_min, "
    "r0 >= 0.1); paper: the MIDL 2020 loss L >= --threshold with IP D >= --ip-epsilon, over a "
    "fixed 320x320 area. Attacks maximise the criterion's score; every record keeps r, r0, e, "
    "rho, L and D, so `mri-audit report --criterion` can re-read the audit.",
)

margin_option = click.option(
    "--margin",
    type=FiniteFloatRange(min=0, max=1, min_open=True),
    default=0.1,
    show_default=True,
    help="δ of --criterion erasure: a hit when the model removes at least this share of the "
    "feature's contrast that the data carries.",
)
