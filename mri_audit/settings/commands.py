"""Every setting of ``run``, ``map``, ``harden`` and ``report``, described once.

The click options of each command are made from these lists (:mod:`mri_audit.cli.settings`),
``--config`` keys are checked against them, and the library's entry points check their keyword
arguments with them (:func:`mri_audit.settings.check_settings`).
"""

from __future__ import annotations

from dataclasses import replace

from mri_audit.settings.catalog import (
    ACCEL,
    BATCH,
    CENTER_FRACTION,
    COMPARE,
    CRITERIA,
    CRITERION,
    DATA,
    DEFAULT_ATTACKS,
    DEVICE,
    FEATURE_SHAPES,
    FORCE,
    INSERT,
    MARGIN,
    MASK,
    MAX_SLICES,
    MAX_VOLUMES,
    MODEL_SETTINGS,
    NO_PROGRESS,
    PROGRESS,
    SEED,
    WINDOW,
    criterion_rule,
    line_shape,
    map_on,
    needs_out,
    replay_on,
    shape_rule,
    writes_out,
)
from mri_audit.settings.spec import Setting
from mri_audit.settings.training import HARDEN

__all__ = ["CHECK", "COMMANDS", "HARDEN", "MAP", "REPORT", "RUN", "VERIFY"]

_MASK = (ACCEL, CENTER_FRACTION, MASK)
_DATA = (DATA, MAX_VOLUMES, MAX_SLICES)

SAMPLES = Setting(
    "samples",
    "int",
    low=1,
    help="Reconstructions averaged per input for a stochastic model (the dry run tells which "
    "are): r is their mean, with its standard error [default: 8 for a stochastic model, 1 "
    "otherwise].",
)

RUN: tuple[Setting, ...] = (
    *MODEL_SETTINGS,
    *_MASK,
    *_DATA,
    Setting(
        "attacks",
        "names",
        default=DEFAULT_ATTACKS,
        dest="attack_list",
        metavar="NAME,NAME,...",
        help="Comma-separated attacks (see `mri-audit attacks`).",
    ),
    Setting(
        "candidates",
        "int",
        default=11,
        low=1,
        help="Candidates (evaluation budget) per slice.",
    ),
    Setting(
        "feature_steps",
        "steps",
        default=10,
        metavar="N|LOW-HIGH",
        help="Random-walk length of a feature.",
        applies=shape_rule(
            "walk",
            what="is a random walk's length (--feature walk)",
            fix="size a disk or a line with --feature-size",
        ),
    ),
    Setting(
        "feature",
        "choice",
        default="walk",
        choices=FEATURE_SHAPES,
        help="Feature shape: the paper's random walk, a soft disk (a lesion) or a soft line (a "
        "tear) at a random angle. Size them with --feature-size and --feature-width (disk radius "
        "3, line length 10 and width 1 by default); per attack with --attack-param "
        "fnaf-rs.feature_size=4.",
    ),
    Setting(
        "feature_size",
        "float",
        low=0,
        low_open=True,
        help="--feature disk: radius in pixels; line: length in pixels (every FNAF attack).",
        applies=shape_rule(
            "disk",
            "line",
            what="sizes a disk or a line (--feature disk|line)",
            fix="a walk's length is --feature-steps",
        ),
    ),
    Setting(
        "feature_width",
        "float",
        low=0,
        low_open=True,
        help="--feature line: width in pixels (every FNAF attack; default 1).",
        applies=shape_rule("line", what="is the width of a line (--feature line)", fix="remove it"),
    ),
    CRITERION,
    replace(MARGIN, applies=criterion_rule("erasure", also=" (or --map)", when=map_on)),
    Setting(
        "min_recovery",
        "float",
        default=0.5,
        low=0,
        high=1,
        low_open=True,
        hint="a share of the feature's contrast",
        help="r_min of --criterion recovery: a hit when the model shows less than this share of "
        "the feature's contrast.",
        applies=criterion_rule("recovery"),
    ),
    Setting(
        "threshold",
        "float",
        default=1e-3,
        low=0,
        help="τ of --criterion paper: a hit when the FNAF loss L (over 320x320) >= τ.",
        applies=criterion_rule("paper"),
    ),
    Setting(
        "ip_epsilon",
        "float",
        default=1e-4,
        low=0,
        help="ε of --criterion paper: information preservation needs the IP distance D >= ε.",
        applies=criterion_rule("paper"),
    ),
    WINDOW,
    INSERT,
    SAMPLES,
    Setting(
        "attack_params",
        "text",
        default=(),
        flag="--attack-param",
        multiple=True,
        metavar="ATTACK.KEY=VALUE",
        help="An attack's own parameter, e.g. fnaf-pgd.steps=20 (repeatable; see `mri-audit "
        "attacks`).",
        api=False,  # the library takes attack_options={"fnaf-pgd": {"steps": 20}}
    ),
    COMPARE,
    BATCH,
    Setting(
        "precision",
        "choice",
        default="fp32",
        choices=("fp32", "bf16", "fp16"),
        help="Model precision for the candidate search; the chosen features are rescored in "
        "fp32. Pays on GPUs and, for bf16, on CPUs with native bf16 (AMX); elsewhere a warning "
        "says so.",
    ),
    Setting(
        "compile_model",
        "flag",
        default=False,
        flag="--compile",
        help="torch.compile the models (pays off on GPUs for long audits; compiling takes time).",
    ),
    SEED,
    DEVICE,
    Setting("out", "path", default="mri-audit-report", help="Output folder.", api=False),
    Setting(
        "out",
        "path",
        help="Output folder (None: a temporary journal; AuditResult.write keeps the files).",
        cli=False,
    ),
    Setting(
        "max_attack_rate",
        "float",
        low=0,
        high=1,
        hint="a fraction of the slices: 0.2 is 20%",
        help="Exit with status 3 when the model's worst attack rate exceeds this.",
    ),
    Setting(
        "recovery_map",
        "flag",
        default=False,
        flag="--map",
        dest="map",
        help="Add the feature-recovery map (walk, disk and line features over size x contrast, "
        "the default grid of `mri-audit map`) to results.json and the report.",
    ),
    Setting(
        "resume",
        "flag",
        default=False,
        help="Continue an interrupted audit in --out.",
        applies=needs_out,
    ),
    FORCE,
    Setting(
        "sign",
        "path",
        metavar="KEY",
        help="Sign the audit's chain head and file manifest with this Ed25519 private key "
        "(`mri-audit keygen`) into signature.json; needs the sign extra (pip install "
        "'mri-audit[sign]').",
        applies=writes_out,
    ),
    NO_PROGRESS,
    PROGRESS,
)

MAP: tuple[Setting, ...] = (
    replace(MODEL_SETTINGS[0], required=True),
    *MODEL_SETTINGS[1:],
    replace(
        COMPARE,
        help="Another model mapped on the same features (repeatable), e.g. "
        "robust=examples/unet.py:UNet=robust.pt; its constructor arguments are --model-arg "
        "NAME:KEY=VALUE.",
    ),
    *_MASK,
    *_DATA,
    Setting(
        "shapes",
        "names",
        default=FEATURE_SHAPES,
        metavar="SHAPE,SHAPE,...",
        help="Comma-separated feature shapes: walk (random walk), disk (soft-edged), line.",
    ),
    Setting(
        "sizes",
        "text",
        default=(),
        multiple=True,
        metavar="SHAPE=a,b,c",
        help="Sizes of one shape (repeatable): walk steps [3,5,10,20,50,100], disk radius in px "
        "[1,2,3,4,6,8], line length in px [4,8,12,20,30,40].",
    ),
    Setting(
        "contrasts",
        "text",
        default="0.05,0.1,0.2,0.3,0.5,0.75,1",
        metavar="a,b,c",
        help="Comma-separated feature contrasts, as shares of each slice's intensity range (0, 1].",
    ),
    Setting("draws", "int", default=4, low=1, help="Random placements of every feature per slice."),
    Setting(
        "line_width",
        "float",
        default=1.0,
        low=0,
        low_open=True,
        help="Width of line features in px.",
        applies=line_shape,
    ),
    replace(
        MARGIN,
        applies=None,
        help="δ of the erasure rate: a feature is a hit when the model removes at least this "
        "share of its contrast that the data carries (min(r0 - r, r0) >= δ).",
    ),
    replace(WINDOW, help="Centred window (fraction of each side) features are placed in."),
    INSERT,
    replace(
        SAMPLES,
        help="Reconstructions averaged per feature for a stochastic model [default: "
        "8 for a stochastic model, 1 otherwise].",
    ),
    replace(
        BATCH, help="Features per model batch (auto: as `run`). The map does not depend on it."
    ),
    replace(SEED, help="Seed of every placement (keyed by seed, volume, slice, cell and draw)."),
    DEVICE,
    Setting("out", "path", default="mri-audit-map", help="Output folder."),
    replace(FORCE, help="Replace the results already in --out."),
    Setting(
        "sign",
        "path",
        metavar="KEY",
        help="Sign the map's file manifest with this Ed25519 private key (`mri-audit keygen`) "
        "into signature.json; needs the sign extra (pip install 'mri-audit[sign]').",
    ),
    replace(NO_PROGRESS, help="Hide the progress lines.", api=True),
)

REPORT: tuple[Setting, ...] = (
    Setting(
        "out",
        "path",
        help="Where to write the HTML report (default: report.html beside results.json, or "
        "report.<criterion>.html for a re-read).",
    ),
    Setting(
        "criterion",
        "choice",
        choices=CRITERIA,
        help="Re-read the audit under this criterion from its journal (records.jsonl), without "
        "recomputing; writes results.<criterion>.json and report.<criterion>.html.",
    ),
    replace(
        MARGIN, default=None, applies=None, help="erasure: the margin δ (default: the audit's)."
    ),
    Setting(
        "min_recovery",
        "float",
        low=0,
        high=1,
        low_open=True,
        hint="a share of the feature's contrast",
        help="recovery: r_min (default: the audit's).",
    ),
    Setting("threshold", "float", low=0, help="paper: τ (default: the audit's)."),
)

FOR_REPLAY = replay_on("is for --replay; add --replay N")

VERIFY: tuple[Setting, ...] = (
    Setting(
        "key",
        "path",
        metavar="PUB",
        help="An Ed25519 public key (KEY.pub of `mri-audit keygen`): check signature.json with "
        "it (the signed files did not change since signing, by the key's holder).",
    ),
    Setting(
        "replay",
        "int",
        low=1,
        metavar="N",
        help="Re-run N records through the model and data the audit names (picked from the "
        "chain head and --nonce) and compare r, r0 and e within the stated tolerance.",
    ),
    Setting(
        "nonce",
        "text",
        metavar="TEXT",
        help="Your text mixed into the choice of replayed records, so whoever ran the audit "
        "cannot predict them [default: a random one, printed].",
        applies=replay_on("chooses the replayed records; add --replay N"),
    ),
    Setting(
        "models",
        "text",
        default=(),
        flag="--model",
        multiple=True,
        metavar="SPEC",
        help="The audit's models again, in order, for --replay (default: as recorded); each "
        "must match the recorded source hash.",
        applies=FOR_REPLAY,
    ),
    Setting(
        "weights",
        "text",
        default=(),
        multiple=True,
        metavar="FILE",
        help="The models' weights again, in order, for --replay (default: as recorded); each "
        "must match the recorded SHA-256.",
        applies=FOR_REPLAY,
    ),
    Setting(
        "data",
        "path",
        help="The audit's data again for --replay (default: as recorded); its files must match "
        "the recorded hashes.",
        applies=FOR_REPLAY,
    ),
    DEVICE,
)

CHECK: tuple[Setting, ...] = (
    replace(MODEL_SETTINGS[0], required=True),
    *MODEL_SETTINGS[1:5],
    *_MASK,
    *_DATA,
    Setting("batch_size", "int", default=8, low=1, help="Slices per model pass (speed only)."),
    DEVICE,
)

COMMANDS: dict[str, tuple[Setting, ...]] = {
    "check": CHECK,
    "run": RUN,
    "map": MAP,
    "harden": HARDEN,
    "report": REPORT,
    "verify": VERIFY,
}
