"""``mri-audit run``: audit one or more models and write records, results and the report."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from mri_audit.cli.options import (
    BatchSizeType,
    FiniteFloatRange,
    check_acceleration,
    criterion_option,
    data_options,
    device_option,
    margin_option,
    mask_options,
    run_model_options,
)
from mri_audit.errors import UsageError

logger = logging.getLogger(__name__)

EXIT_ATTACK_RATE = 3
DEFAULT_OUT = "mri-audit-report"
DEFAULT_ATTACK_LIST = "fnaf-rs,fnaf-fd,fnaf-pgd"
FEATURE_SHAPES = (
    "walk",
    "disk",
    "line",
)  # mri_audit.fnaf.shapes.SHAPES (not imported: no torch here)
MODELS_KEY = "mri_audit.models"  # the [[models]] tables of --config, in ctx.meta


def _load_config(ctx: click.Context, param: click.Parameter, value: str | None):
    """``--config audit.toml``: its keys become the command's defaults; flags still win."""
    if value is None:
        return None
    from mri_audit.cli.config_files import read_config
    from mri_audit.models.entries import entries_from_config

    settings = read_config(value, ctx.command, tables={"models": entries_from_config})
    models = settings.pop("models", None)
    if models is not None:
        ctx.meta[MODELS_KEY] = models
    ctx.default_map = {**(ctx.default_map or {}), **settings}
    return value


def _parse_steps(value: str) -> int | tuple[int, int]:
    try:
        if "-" in value:
            low, high = (int(v) for v in value.split("-", 1))
            if 1 <= low <= high:
                return (low, high)
        elif int(value) >= 1:
            return int(value)
    except ValueError:
        pass
    raise UsageError(f"--feature-steps must be N or LOW-HIGH with 1 <= LOW <= HIGH, got {value!r}")


def _parse_attack_params(values, attacks) -> dict[str, dict]:
    import ast

    out: dict[str, dict] = {}
    for v in values:
        name, _, rest = v.partition(".")
        key, eq, raw = rest.partition("=")
        if not (name and key and eq):
            raise UsageError(f"--attack-param needs ATTACK.KEY=VALUE, got {v!r}")
        if name not in attacks:
            raise UsageError(f"--attack-param {v!r}: {name!r} is not among --attacks")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out.setdefault(name, {})[key.replace("-", "_")] = value
    return out


@click.command("run")
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    callback=_load_config,
    is_eager=True,
    expose_value=False,
    help="TOML file whose keys are this command's options (e.g. accel = 8); flags win.",
)
@run_model_options
@click.option(
    "--model-name",
    metavar="NAME",
    help="The main model's name in the results and report (default: from its spec).",
)
@mask_options
@data_options
@click.option(
    "--attacks",
    "attack_list",
    default=DEFAULT_ATTACK_LIST,
    show_default=True,
    help="Comma-separated attacks (see `mri-audit attacks`).",
)
@click.option(
    "--candidates",
    type=click.IntRange(min=1),
    default=11,
    show_default=True,
    help="Candidates (evaluation budget) per slice.",
)
@click.option(
    "--feature-steps",
    default="10",
    show_default=True,
    metavar="N|LOW-HIGH",
    help="Random-walk length of a feature.",
)
@click.option(
    "--feature",
    type=click.Choice(FEATURE_SHAPES),
    default="walk",
    show_default=True,
    help="Feature shape: the paper's random walk, a soft disk (a lesion) or a soft line (a tear) "
    "at a random angle. Size them with --feature-size and --feature-width (disk radius 3, line "
    "length 10 and width 1 by default); per attack with --attack-param fnaf-rs.feature_size=4.",
)
@click.option(
    "--feature-size",
    type=FiniteFloatRange(min=0, min_open=True),
    default=None,
    help="--feature disk: radius in pixels; line: length in pixels (every FNAF attack).",
)
@click.option(
    "--feature-width",
    type=FiniteFloatRange(min=0, min_open=True),
    default=None,
    help="--feature line: width in pixels (every FNAF attack; default 1).",
)
@criterion_option
@margin_option
@click.option(
    "--min-recovery",
    type=FiniteFloatRange(min=0, max=1, min_open=True),
    default=0.5,
    show_default=True,
    help="r_min of --criterion recovery: a hit when the model shows less than this share of "
    "the feature's contrast.",
)
@click.option(
    "--threshold",
    type=FiniteFloatRange(min=0),
    default=1e-3,
    show_default=True,
    help="τ of --criterion paper: a hit when the FNAF loss L (over 320x320) >= τ.",
)
@click.option(
    "--ip-epsilon",
    type=FiniteFloatRange(min=0),
    default=1e-4,
    show_default=True,
    help="ε of --criterion paper: information preservation needs the IP distance D >= ε.",
)
@click.option(
    "--window",
    type=FiniteFloatRange(min=0, max=1, min_open=True),
    default=0.375,
    show_default=True,
    help="Centred window (fraction of each side) features live in.",
)
@click.option(
    "--insert",
    type=click.Choice(["phase", "magnitude"]),
    default="phase",
    show_default=True,
    help="Insert with the local phase on the k-space grid, or as the reference code did.",
)
@click.option(
    "--attack-param",
    "attack_params",
    multiple=True,
    metavar="ATTACK.KEY=VALUE",
    help="An attack's own parameter, e.g. fnaf-pgd.steps=20 (repeatable; see `mri-audit attacks`).",
)
@click.option(
    "--compare",
    multiple=True,
    metavar="[NAME=]SPEC[=WEIGHTS]",
    help="Another model audited on the same slices, with transfer (repeatable), e.g. "
    "robust=examples/unet.py:UNet=robust.pt; its constructor arguments are --model-arg "
    "NAME:KEY=VALUE, and [[models]] tables in --config say everything else.",
)
@click.option(
    "--batch-size",
    type=BatchSizeType(),
    default="auto",
    metavar="auto|N",
    show_default=True,
    help="Candidates per model batch. auto: on a GPU, sized to half the free memory "
    "(measured on the first slice); on a CPU, 4 candidates at 160x160 and 1 at 320x320 (larger "
    "batches fall out of cache). A resumed audit keeps its size. Results do not depend on it.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16", "fp16"]),
    default="fp32",
    show_default=True,
    help="Model precision for the candidate search; the chosen features are rescored in fp32. "
    "Pays on GPUs and, for bf16, on CPUs with native bf16 (AMX); elsewhere a warning says so.",
)
@click.option(
    "--compile",
    "compile_model",
    is_flag=True,
    help="torch.compile the models (pays off on GPUs for long audits; compiling takes time).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of every random draw (keyed by seed, volume, slice and candidate) and of a "
    "model's own random initialisation.",
)
@device_option
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=DEFAULT_OUT,
    show_default=True,
    help="Output folder.",
)
@click.option(
    "--max-attack-rate",
    type=FiniteFloatRange(0, 1),
    default=None,
    help="Exit with status 3 when the model's worst attack rate exceeds this.",
)
@click.option(
    "--map",
    "map",
    is_flag=True,
    help="Add the feature-recovery map (walk, disk and line features over size x contrast, the "
    "default grid of `mri-audit map`) to results.json and the report.",
)
@click.option("--resume", is_flag=True, help="Continue an interrupted audit in --out.")
@click.option("--force", is_flag=True, help="Replace an existing audit in --out.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
def run(**opts) -> None:
    """Audit a reconstruction model for false negatives with FNAF attacks.

    Writes records.jsonl (as it goes), records.csv, results.json and report.html to --out.
    Without --data the built-in synthetic phantoms are used.
    """
    from mri_audit.cli.run_impl import execute
    from mri_audit.models.entries import model_entries

    check_acceleration(opts["accel"], opts["center_fraction"])
    opts["feature_steps"] = _parse_steps(str(opts["feature_steps"]))
    if opts["feature"] == "walk" and (opts["feature_size"] or opts["feature_width"]):
        raise UsageError(
            "--feature-size and --feature-width size a disk or a line (--feature disk|line); "
            "a walk's length is --feature-steps"
        )
    source = click.get_current_context().get_parameter_source("feature_steps")
    if opts["feature"] != "walk" and source is not click.core.ParameterSource.DEFAULT:
        raise UsageError(
            f"--feature-steps is a walk's length; a {opts['feature']}'s size is the attack "
            "parameter feature_size (e.g. --attack-param fnaf-rs.feature_size=4)"
        )
    opts["models"] = model_entries(opts, click.get_current_context().meta.get(MODELS_KEY))
    opts["attacks"] = tuple(a.strip() for a in opts.pop("attack_list").split(",") if a.strip())
    if not opts["attacks"]:
        raise UsageError("--attacks needs at least one attack name")
    opts["attack_options"] = _parse_attack_params(opts.pop("attack_params"), opts["attacks"])
    opts["out"] = Path(opts["out"])
    code = execute(opts, command_line=[Path(sys.argv[0]).name, *sys.argv[1:]])
    if code:
        sys.exit(code)
