"""The settings several commands share, described once (the commands' lists are in
:mod:`mri_audit.settings.commands`), and the rules that say when a setting applies."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mri_audit.settings.spec import Setting

__all__ = ["CRITERIA", "DEFAULT_ATTACKS", "FEATURE_SHAPES", "MODEL_SETTINGS", "SEED_MAX"]

FEATURE_SHAPES = ("walk", "disk", "line")  # mri_audit.fnaf.shapes.SHAPES (no torch here)
CRITERIA = ("erasure", "recovery", "paper")
DEFAULT_ATTACKS = ("fnaf-rs", "fnaf-fd", "fnaf-pgd")
SEED_MAX = 2**32 - 1  # numpy's and torch's generators take any such seed
Rule = Callable[[Mapping[str, Any]], "str | None"]


def criterion_rule(name: str, *, also: str = "", when: Rule | None = None) -> Rule:
    """Applies under ``--criterion name`` (or when ``when`` says it applies)."""

    def rule(v: Mapping[str, Any]) -> str | None:
        if v.get("criterion") == name or (when is not None and when(v) is None):
            return None
        return (
            f"applies to --criterion {name}{also}, not {v.get('criterion')}; remove it or "
            f"choose --criterion {name}"
        )

    return rule


def shape_rule(*shapes: str, what: str, fix: str) -> Rule:
    """Applies to features of these shapes (``--feature``)."""

    def rule(v: Mapping[str, Any]) -> str | None:
        feature = v.get("feature")
        if feature in shapes:
            return None
        return f"{what}, so --feature {feature} would ignore it; {fix}"

    return rule


def needs_out(v: Mapping[str, Any]) -> str | None:
    return None if v.get("out") is not None else "continues the audit in out=, which is not given"


def replay_on(reason: str):
    """The rule of a ``verify`` option that only ``--replay`` uses."""

    def rule(v: Mapping[str, Any]) -> str | None:
        return None if v.get("replay") else reason

    return rule


def writes_out(v: Mapping[str, Any]) -> str | None:
    return None if v.get("out") is not None else "signs the files written to out=, not given"


def map_on(v: Mapping[str, Any]) -> str | None:
    return None if v.get("recovery_map") else "off"


def line_shape(v: Mapping[str, Any]) -> str | None:
    if "line" in (v.get("shapes") or ()):
        return None
    return "is the width of line features, but --shapes has no line; remove it or add line"


def reported(v: Mapping[str, Any]) -> str | None:
    if not v.get("no_report"):
        return None
    return "names the before/after audit's folder, but --no-report skips that audit; remove one"


# Settings shared by several commands ---------------------------------------------------------
MODEL = Setting(
    "model",
    "text",
    flag="--model",
    dest="model_spec",
    metavar="SPEC",
    help="The model: path/to/file.py:Name, package.module:Name, or a TorchScript file.",
)
WEIGHTS = Setting(
    "weights",
    "path",
    help="State dict (or checkpoint with 'state_dict'/'model'), loaded with weights_only.",
)
MODEL_ARGS = Setting(
    "model_args",
    "text",
    default=(),
    flag="--model-arg",
    multiple=True,
    metavar="KEY=VALUE",
    help="Constructor argument of the model (repeatable; values are Python literals or strings); "
    "NAME:KEY=VALUE gives one to the --compare model NAME.",
    api=False,  # the library takes ["k=v"] or {"k": v}: checked by audit()
)
INPUT = Setting(
    "input_domain",
    "choice",
    flag="--input",
    choices=("image", "kspace"),
    help="Input domain of the (main) model; default: its class attribute mri_audit_input, "
    "else kspace when forward takes (masked_kspace, mask), else image.",
)
NORMALIZE = Setting(
    "normalize",
    "choice",
    default="instance",
    choices=("instance", "none"),
    help="Image-domain input normalisation (fastMRI U-Net transform) or raw magnitudes.",
)
MODEL_NAME = Setting(
    "name",
    "text",
    flag="--model-name",
    dest="model_name",
    metavar="NAME",
    help="The main model's name in the results and report (default: from its spec).",
)
COMPARE = Setting(
    "compare",
    "text",
    default=(),
    multiple=True,
    metavar="[NAME=]SPEC[=WEIGHTS]",
    help="Another model audited on the same slices, with transfer (repeatable), e.g. "
    "robust=examples/unet.py:UNet=robust.pt; its constructor arguments are --model-arg "
    "NAME:KEY=VALUE, and [[models]] tables in --config say everything else.",
    api=False,  # the library takes specs, (spec, weights) pairs and modules: checked by audit()
)
ACCEL = Setting(
    "accel",
    "float",
    default=4.0,
    low=1,
    hint="the undersampling factor; 1 is fully sampled",
    help="Acceleration (undersampling factor, >= 1).",
)
CENTER_FRACTION = Setting(
    "center_fraction",
    "float",
    low=0,
    high=1,
    low_open=True,
    help="Fraction of centre columns always sampled [default: 0.08 at 4x, 0.04 at 8x, "
    "0.32/accel otherwise].",
)
MASK = Setting(
    "mask_type",
    "choice",
    default="random",
    flag="--mask",
    choices=("random", "equispaced"),
    help="fastMRI mask function (RandomMaskFunc or EquispacedMaskFractionFunc).",
)
DATA = Setting(
    "data",
    "path",
    help="fastMRI HDF5 file or folder [default: the built-in synthetic phantoms].",
)
MAX_VOLUMES = Setting("max_volumes", "int", low=1, help="Use at most N volumes.")
MAX_SLICES = Setting("max_slices", "int", low=1, help="Use at most N central slices per volume.")
SEED = Setting(
    "seed",
    "int",
    default=0,
    low=0,
    high=SEED_MAX,
    help="Seed of every random draw (keyed by seed, volume, slice and candidate) and of a "
    "model's own random initialisation.",
)
DEVICE = Setting(
    "device",
    "text",
    default="auto",
    metavar="auto|cpu|cuda|cuda:N",
    help="Where models and attacks run; auto picks a GPU when there is one.",
)
CRITERION = Setting(
    "criterion",
    "choice",
    default="erasure",
    choices=CRITERIA,
    help="What counts as a lost feature. erasure: the model removes at least --margin of the "
    "feature that the undersampled data carries (e = r0 - r); recovery: the model shows it at "
    "less than --min-recovery of its contrast while the data carries at least 0.1 (r < r_min, "
    "r0 >= 0.1); paper: the MIDL 2020 loss L >= --threshold with IP D >= --ip-epsilon, over a "
    "fixed 320x320 area. Attacks maximise the criterion's score; every record keeps r, r0, e, "
    "rho, L and D, so `mri-audit report --criterion` can re-read the audit.",
)
MARGIN = Setting(
    "margin",
    "float",
    default=0.1,
    low=0,
    high=1,
    low_open=True,
    hint="a share of the feature's contrast",
    help="δ of --criterion erasure: a hit when the model removes at least this share of the "
    "feature's contrast that the data carries.",
    applies=criterion_rule("erasure"),
)
WINDOW = Setting(
    "window",
    "float",
    default=0.375,
    low=0,
    high=1,
    low_open=True,
    help="Centred window (fraction of each side) features live in.",
)
INSERT = Setting(
    "insert",
    "choice",
    default="phase",
    choices=("phase", "magnitude"),
    help="Insert with the local phase on the k-space grid, or as the reference code did.",
)
BATCH = Setting(
    "batch_size",
    "batch",
    default="auto",
    metavar="auto|N",
    help="Candidates per model batch. auto: on a GPU, sized to half the free memory "
    "(measured on the first slice); on a CPU, 4 candidates at 160x160 and 1 at 320x320 (larger "
    "batches fall out of cache). A resumed audit keeps its size. Results do not depend on it.",
)
FORCE = Setting("force", "flag", default=False, help="Replace an existing audit in --out.")
NO_PROGRESS = Setting(
    "no_progress", "flag", default=False, help="Hide the progress bars.", api=False
)
PROGRESS = Setting("progress", "flag", default=False, help="Progress bars.", cli=False)


MODEL_SETTINGS = (MODEL, WEIGHTS, MODEL_ARGS, INPUT, NORMALIZE, MODEL_NAME)
