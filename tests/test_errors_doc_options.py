"""docs/errors.md, "Options, configuration, device": the rows about resuming under another threat
model, the command line itself, Ctrl-C, `harden`'s output and checkpoint, ART's files, the models
of an audit, the device and precision (see :mod:`tests.errors_doc`).

The slow work is done once per module: a finished tiny audit (:func:`audit_root`) and two tiny
`harden` runs, one stopped by Ctrl-C in its third epoch and one stopped during its before/after
audit and then finished (:func:`harden_runs`). Scenarios copy them into their own folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from click.testing import CliRunner

from mri_audit.cli import cli
from tests.errors_doc import SCENARIOS, Outcome, cases, check_row, scenario
from tests.journal_util import rechain

NET = textwrap.dedent("""
    import torch
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.body = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.head = torch.nn.Conv2d(4, 1, 3, padding=1)
            for p in self.parameters():
                p.data = torch.randn(p.shape, generator=g) * 0.1
        def forward(self, x):
            return x + self.head(torch.relu(self.body(x)))
""")

STOP = textwrap.dedent("""
    import torch
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))
        def forward(self, x):
            raise KeyboardInterrupt  # as if Ctrl-C came during the model's dry run
""")

# Runs its dry run (gradients on) but runs out of memory on every inference-mode batch.
OOM = textwrap.dedent("""
    import torch
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(1, 1, 3, padding=1)
        def forward(self, x):
            if torch.is_inference_mode_enabled():
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return x + self.c(x)
""")

TINY_RUN = ["--max-volumes", "1", "--max-slices", "1", "--attacks", "fnaf-rs", "--candidates", "2"]
AUDIT = ["run", "--model", "net.py:Net", "--data", "data", *TINY_RUN, "--out", "out"]
AUDIT += ["--no-progress"]

HARDEN = ["harden", "--model", "net.py:Net", "--weights", "w.pt", "--data", "data"]
HARDEN += ["--max-slices", "1", "--steps", "1", "--candidates", "3", "--out", "robust.pt"]
INTERRUPTED = [*HARDEN, "--epochs", "5", "--no-report"]  # stopped by Ctrl-C in epoch 3
FINISHED = [*HARDEN, "--epochs", "1"]  # stopped in its before/after audit, then resumed

_request: list[pytest.FixtureRequest] = []


def _fixture(name: str):
    """A fixture's value, for a scenario that needs it (evaluated only then)."""
    return _request[-1].getfixturevalue(name)


def invoke(args: list[str]) -> Outcome:
    result = CliRunner().invoke(cli, args, prog_name="mri-audit")
    assert "Traceback" not in result.output, result.output
    return Outcome(result.exit_code, result.output)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return dst


def _rehead(out: Path) -> None:
    """Record the (re-linked) journal's head in ``out/results.json``, as a forger would."""
    from mri_audit.evidence.manifest import chain_of

    results = json.loads((out / "results.json").read_text())
    results["chain"] = {**results["chain"], **chain_of(out / "records.jsonl")}
    (out / "results.json").write_text(json.dumps(results))


class _Logged(logging.Handler):
    """The ``mri_audit`` log lines, as the CLI's log format writes them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def __enter__(self) -> _Logged:
        logging.getLogger("mri_audit").addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("mri_audit").removeHandler(self)


# ----------------------------------------------------------------------------- shared runs


@pytest.fixture(scope="module")
def audit_root(tmp_path_factory, singlecoil_dir) -> Path:
    """A folder holding ``net.py``, ``data/`` and ``out/``: a finished tiny audit (AUDIT)."""
    root = tmp_path_factory.mktemp("audit")
    (root / "net.py").write_text(NET)
    shutil.copytree(singlecoil_dir, root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        done = invoke(AUDIT)
    assert done.status == 0, done.output
    return root


class HardenRuns(NamedTuple):
    base: Path  # net.py (imports helper.py; has a subclass Other), w.pt, data/ (4 volumes)
    interrupted: Path  # INTERRUPTED stopped by Ctrl-C in epoch 3: robust.pt, robust.pt.ckpt
    interrupted_out: Outcome
    audit_stopped: Path  # FINISHED stopped by Ctrl-C in its before/after audit
    audit_stopped_out: Outcome
    finished: Path  # audit_stopped resumed to success: robust.pt, robust.pt.json, no checkpoint


def _stop_in_epoch(mp: pytest.MonkeyPatch, epoch: int) -> None:
    from mri_audit.harden.trainer import Trainer

    real = Trainer.train_step

    def step(self, e, s):
        if e == epoch:
            raise KeyboardInterrupt
        return real(self, e, s)

    mp.setattr(Trainer, "train_step", step)


def _audit_returns(mp: pytest.MonkeyPatch, what) -> None:
    """Replace the before/after audit (its own rows are tested elsewhere)."""
    from types import SimpleNamespace

    from mri_audit.harden import session

    def audit(*args, **kwargs):
        if isinstance(what, type):
            raise what
        return SimpleNamespace(exit_code=what, out=None, results=None)

    mp.setattr(session, "before_after_audit", audit)


@pytest.fixture(scope="module")
def harden_runs(tmp_path_factory) -> HardenRuns:
    from mri_audit.data.phantoms import synth_dataset
    from tests.conftest import SINGLE

    root = tmp_path_factory.mktemp("harden")
    base = root / "base"
    synth_dataset(base / "data", prefix="file", **{**SINGLE, "volumes": 4, "slices": 2})
    (base / "helper.py").write_text("SCALE = 1.0\n")
    source = NET.replace("return x +", "return helper.SCALE * x +")
    (base / "net.py").write_text(f"import helper\n{source}\nclass Other(Net):\n    pass\n")
    ns: dict = {}
    exec(NET, ns)  # noqa: S102 - test fixture
    torch.save(ns["Net"]().state_dict(), base / "w.pt")
    runs = {}
    for name, args, stop in (
        ("interrupted", INTERRUPTED, lambda mp: _stop_in_epoch(mp, 2)),
        ("audit_stopped", FINISHED, lambda mp: _audit_returns(mp, KeyboardInterrupt)),
    ):
        folder = _copy(base, root / name)
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(folder)
            stop(mp)
            runs[name] = invoke(args)
        assert runs[name].status == 130, runs[name].output
        assert (folder / "robust.pt.ckpt").exists()
    finished = _copy(root / "audit_stopped", root / "finished")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(finished)
        _audit_returns(mp, 0)
        done = invoke([*FINISHED, "--resume"])
    assert done.status == 0, done.output
    return HardenRuns(
        base,
        root / "interrupted",
        runs["interrupted"],
        root / "audit_stopped",
        runs["audit_stopped"],
        finished,
    )


# ----------------------------------------------------------------------------- resume


@scenario("`--resume` of an audit made under threat model version 1 (or another criterion)")
def _resume_threat_model_1(tmp_path):
    _copy(_fixture("audit_root"), tmp_path)
    out = tmp_path / "out"
    other = invoke([*AUDIT, "--resume", "--criterion", "recovery"])
    # The audit as threat model version 1 wrote it: no criterion in its configuration, no
    # selection per criterion, and no fingerprint (fingerprints came after version 2).
    lines = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("audit", None)
        line.pop("criteria", None)
        if line["kind"] == "header":
            del line["code"]
            for key in ("criterion", "margin", "min_recovery"):
                del line["config"][key]
    # Re-linked as a forger would (version 1 journals had no hash chain, which is refused
    # first: `has no hash-chain link`), so the check behind the chain answers.
    (out / "records.jsonl").write_text(rechain([json.dumps(line) + "\n" for line in lines]))
    results = json.loads((out / "results.json").read_text())
    for key in ("audit", "chain", "manifest"):  # version 1 recorded no fingerprint nor head
        del results[key]
    (out / "results.json").write_text(json.dumps(results))
    before = (out / "records.jsonl").read_text()
    version_1 = invoke([*AUDIT, "--resume"])
    assert (out / "records.jsonl").read_text() == before
    return [other, version_1]


@scenario("`harden --resume` of a checkpoint from threat model version 1")
def _harden_resume_threat_model_1(tmp_path):
    _copy(_fixture("harden_runs").interrupted, tmp_path)
    ckpt = tmp_path / "robust.pt.ckpt"
    state = torch.load(ckpt, weights_only=True)
    for key in ("threat_model", "criterion", "margin", "min_recovery"):
        del state["config"][key]
    identity = state.pop("identity")  # version 1 recorded neither model nor data
    torch.save(state, ckpt)
    version_1 = invoke([*INTERRUPTED, "--resume"])
    torch.save({**state, "identity": identity}, ckpt)  # as if it had recorded them
    recorded = invoke([*INTERRUPTED, "--resume"])
    assert recorded.output.strip().endswith(
        "Error: the checkpoint was made with other settings (threat_model)"
    ), recorded.output
    return [version_1, recorded]


# ----------------------------------------------------------------------------- the command line


@scenario("unknown option or command of `mri-audit` itself")
def _top_level_usage(tmp_path):
    outcomes = [invoke(["--bogus"]), invoke(["nosuchcommand"])]
    for o in outcomes:
        assert len(o.output.strip().splitlines()) == 1, o.output
    alone = invoke([])  # prints the help
    assert "Usage: mri-audit [OPTIONS] COMMAND" in alone.output, alone.output
    return [*outcomes, alone]


@scenario("Ctrl-C before any result is written (loading data, a model's dry run, `check`, ...)")
def _ctrl_c_before_any_result(tmp_path):
    from mri_audit.audit.auditor import Auditor

    (tmp_path / "stop.py").write_text(STOP)
    (tmp_path / "net.py").write_text(NET)
    data = str(_fixture("singlecoil_dir"))
    dry_run = invoke(["check", "--model", "stop.py:Net", "--data", data, "--max-slices", "1"])
    real = Auditor._run_batch
    calls = []

    def second_batch_stops(self, batch):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Auditor, "_run_batch", second_batch_stops)
        args = ["run", "--model", "net.py:Net", "--data", data, "--max-volumes", "2"]
        args += ["--max-slices", "1", "--attacks", "fnaf-rs", "--candidates", "2"]
        during = invoke([*args, "--batch-size", "1", "--out", "out", "--no-progress"])
    records = (tmp_path / "out" / "records.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["kind"] == "fnaf" for line in records) == 1, records
    return [dry_run, during]


@scenario("Ctrl-C during `data synth`")
def _ctrl_c_during_synth(tmp_path):
    import h5py

    import mri_audit.data.phantoms as phantoms

    real = phantoms.write_volume

    def stop_at_second(path, *args, **kwargs):
        if path.name.endswith("_0001.h5"):
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(phantoms, "write_volume", stop_at_second)
        args = ["data", "synth", "--out", "phantoms", "--volumes", "3", "--slices", "1"]
        stopped = invoke([*args, "--size", "16"])
    written = sorted(p.name for p in (tmp_path / "phantoms").iterdir())
    assert written == ["synth_0000.h5"], written
    with h5py.File(tmp_path / "phantoms" / "synth_0000.h5", "r") as f:
        assert f["kspace"].shape[0] == 1  # whole
    return [stopped]


def test_ctrl_c_during_data_info_says_nothing_was_written(tmp_path, singlecoil_dir):
    """`data info` writes nothing: an interruption says so, as for any command before a
    result."""
    import mri_audit.data.info as info

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(info, "inspect_files", stop)
        stopped = invoke(["data", "info", str(singlecoil_dir)])
    assert stopped.status == 130, stopped.output
    assert stopped.output.strip() == "Interrupted: nothing was written", stopped.output


# ----------------------------------------------------------------------------- harden


@scenario("Ctrl-C during `harden`")
def _ctrl_c_during_harden(tmp_path):
    runs = _fixture("harden_runs")
    _copy(runs.base, tmp_path)
    (tmp_path / "stop.py").write_text(STOP)
    args = [*INTERRUPTED]
    args[args.index("--model") + 1] = "stop.py:Net"
    del args[args.index("--weights") : args.index("--weights") + 2]
    dry_run = invoke(args)
    assert not (tmp_path / "robust.pt.ckpt").exists()
    return [runs.interrupted_out, dry_run, runs.audit_stopped_out]


@scenario("`harden` that fails or is interrupted")
def _harden_keeps_its_checkpoint(tmp_path):
    runs = _fixture("harden_runs")
    assert (runs.interrupted / "robust.pt.ckpt").exists()  # Ctrl-C in training
    assert (runs.audit_stopped / "robust.pt.ckpt").exists()  # Ctrl-C in the audit
    assert not (runs.finished / "robust.pt.ckpt").exists()  # removed on success
    assert (runs.finished / "robust.pt.json").exists()
    _copy(runs.audit_stopped, tmp_path)
    with pytest.MonkeyPatch.context() as mp:
        _audit_returns(mp, 0)
        kept = invoke([*FINISHED, "--resume", "--keep-checkpoint"])
    assert kept.status == 0, kept.output
    assert (tmp_path / "robust.pt.ckpt").exists()  # --keep-checkpoint
    return [runs.interrupted_out, runs.audit_stopped_out, Outcome(None, kept.output)]


@scenario("`harden` again on the `--out` of an interrupted run")
def _harden_again_interrupted(tmp_path):
    _copy(_fixture("harden_runs").interrupted, tmp_path)
    return [invoke(INTERRUPTED)]


@scenario("`harden` again on the `--out` of a finished run")
def _harden_again_finished(tmp_path):
    _copy(_fixture("harden_runs").finished, tmp_path)
    kept = (tmp_path / "robust.pt").read_bytes()
    again = invoke(FINISHED)
    assert (tmp_path / "robust.pt").read_bytes() == kept
    return [again]


@scenario("`harden --resume` after a run that succeeded (its checkpoint removed)")
def _harden_resume_finished(tmp_path):
    _copy(_fixture("harden_runs").finished, tmp_path)
    return [invoke([*FINISHED, "--resume"])]


@scenario("`harden` onto an existing weights file no harden run wrote")
def _harden_onto_weights(tmp_path):
    _copy(_fixture("harden_runs").base, tmp_path)
    shutil.copy(tmp_path / "w.pt", tmp_path / "robust.pt")
    kept = (tmp_path / "robust.pt").read_bytes()
    outcomes = [invoke(INTERRUPTED), invoke([*INTERRUPTED, "--resume"])]
    assert (tmp_path / "robust.pt").read_bytes() == kept
    return outcomes


@scenario(
    "`harden --resume` with another `--model`, model source (the file or any module it loaded from its folder), `--model-arg`, `--input`, `--normalize`, starting weights, or training/selection data"  # noqa: E501 - the row's case, whole (read by tests/test_errors_doc.py)
)
def _harden_resume_other(tmp_path):
    from mri_audit.data.phantoms import synth_dataset
    from tests.conftest import SINGLE

    _copy(_fixture("harden_runs").interrupted, tmp_path)
    (tmp_path / "helper.py").write_text("SCALE = 2.0\n")
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    torch.save({k: v + 0.01 for k, v in state.items()}, tmp_path / "w2.pt")
    synth_dataset(tmp_path / "other", prefix="file", **{**SINGLE, "volumes": 2, "seed": 99})
    (tmp_path / "other" / "file_0001.h5").replace(tmp_path / "data" / "file_0001.h5")
    args = [*INTERRUPTED, "--resume"]
    args[args.index("--model") + 1] = "net.py:Other"
    args[args.index("--weights") + 1] = "w2.pt"
    before = (tmp_path / "robust.pt.ckpt").read_bytes()
    refused = invoke(args)
    assert (tmp_path / "robust.pt.ckpt").read_bytes() == before
    return [refused]


@scenario(
    "`harden --resume` of a checkpoint from an older mri-audit (no model and data recorded), or an unreadable one"  # noqa: E501 - the row's case, whole
)
def _harden_resume_older(tmp_path):
    _copy(_fixture("harden_runs").interrupted, tmp_path)
    ckpt = tmp_path / "robust.pt.ckpt"
    state = torch.load(ckpt, weights_only=True)
    del state["identity"]
    torch.save(state, ckpt)
    older = invoke([*INTERRUPTED, "--resume"])
    ckpt.write_bytes(b"not a checkpoint")
    unreadable = invoke([*INTERRUPTED, "--resume"])
    return [older, unreadable]


@scenario("a second `harden` on the `--out` of a running one")
def _second_harden(tmp_path):
    from mri_audit.audit.outlock import hold_lock

    _copy(_fixture("harden_runs").base, tmp_path)
    (tmp_path / "stop.py").write_text(STOP)
    (tmp_path / "weights").mkdir()
    args = [*INTERRUPTED]
    args[args.index("--out") + 1] = "weights/robust.pt"
    other = [*args]
    other[other.index("--model") + 1] = "stop.py:Net"
    other[other.index("--out") + 1] = "weights/other.pt"
    del other[other.index("--weights") : other.index("--weights") + 2]
    # The running one: `harden --out weights/robust.pt` holds the lock beside its weights file.
    with hold_lock(tmp_path / "weights", "mri-audit harden", name=".robust.pt.mri-audit.lock"):
        refused = invoke(args)
        beside = invoke(other)  # another --out in the same folder is not locked out
    assert beside.status == 130 and "no epoch was finished" in beside.output, beside.output
    assert not (tmp_path / "weights" / "robust.pt").exists()
    return [refused]


@scenario("`harden --report-out` is the folder `--out` is written in")
def _harden_report_out(tmp_path):
    _copy(_fixture("harden_runs").base, tmp_path)
    args = [a for a in FINISHED]
    args[args.index("--out") + 1] = "weights/robust.pt"
    return [invoke([*args, "--report-out", "weights"])]


# ----------------------------------------------------------------------------- ART


ART_CHILD = textwrap.dedent("""
    import json, os
    from mri_audit.models.art_setup import art
    print(json.dumps({"data": art.config.ART_DATA_PATH, "home": os.environ.get("HOME")}))
""")


@pytest.fixture(scope="module")
def art_child(tmp_path_factory):
    """ART imported in a fresh interpreter with HOME and XDG_CACHE_HOME in a temporary folder
    (started early, read by the scenario)."""
    root = tmp_path_factory.mktemp("art")
    (root / "home").mkdir()
    env = {**os.environ, "HOME": str(root / "home"), "XDG_CACHE_HOME": str(root / "cache")}
    package = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(package), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-c", ART_CHILD],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield root, proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module", autouse=True)
def _art_starts_first(art_child):
    """Start the ART interpreter before the other scenarios: it runs beside them."""


@scenario("importing ART (not an error)")
def _importing_art(tmp_path):
    root, proc = _fixture("art_child")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    got = json.loads(stdout.strip().splitlines()[-1])
    folder = root / "cache" / "mri-audit" / "art"
    assert json.loads((folder / ".art" / "config.json").read_text()) == {
        "ART_DATA_PATH": str(folder / "data")
    }
    assert got["data"] == str(folder / "data") and (folder / "data").is_dir()
    assert not (root / "home" / ".art").exists() and list((root / "home").iterdir()) == []
    assert got["home"] == str(root / "home")  # restored after the import
    return [Outcome(None, stdout + stderr)]


# ----------------------------------------------------------------------------- report


@scenario("`report --criterion` the records lack")
def _report_criterion_lacking(tmp_path):
    _copy(_fixture("audit_root"), tmp_path)
    journal = tmp_path / "out" / "records.jsonl"
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    for r in lines:  # records of an older mri-audit, that selected for its criterion only
        (r.get("criteria") or {}).pop("paper", None)
    # Re-linked, and results.json's chain head with it, as a forger would: the check behind
    # the chain answers.
    journal.write_text(rechain([json.dumps(r) + "\n" for r in lines]))
    _rehead(tmp_path / "out")
    refused = invoke(["report", "out", "--criterion", "paper"])
    assert not (tmp_path / "out" / "results.paper.json").exists()
    return [refused]


# ----------------------------------------------------------------------------- device


@scenario("CUDA asked but unavailable")
def _cuda_unavailable(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: False)
        return [
            invoke(["check", "--model", "net.py:Net", "--device", "cuda"]),
            invoke([*AUDIT, "--device", "cuda"]),
        ]


@scenario("out of GPU memory")
def _out_of_memory(tmp_path):
    (tmp_path / "oom.py").write_text(OOM)
    args = ["run", "--model", "oom.py:Net", "--data", str(_fixture("singlecoil_dir"))]
    args += [*TINY_RUN, "--batch-size", "4", "--out", "out", "--no-progress"]
    with _Logged() as log:
        failed = invoke(args)
    halved = [line for line in log.lines if "out of memory: retrying with --batch-size" in line]
    assert [line.rsplit(" ", 1)[-1] for line in halved] == ["2", "1"], log.lines
    return [failed]


@scenario("`--precision bf16` on a CPU without native bf16, or `fp16` on any CPU")
def _precision_on_cpu(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "stop.py").write_text(STOP)
    shutil.copytree(_fixture("singlecoil_dir"), tmp_path / "data")
    with pytest.MonkeyPatch.context() as mp, _Logged() as log:  # no AMX or AVX512-BF16 here
        mp.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False, raising=False)
        done = invoke([*AUDIT, "--precision", "bf16"])  # warned, then audited
        bf16 = Outcome(None, "\n".join(log.lines))
        # fp16 warns on any CPU, before the models are opened (here Ctrl-C in the dry run).
        args = [*AUDIT, "--precision", "fp16", "--model", "stop.py:Net", "--out", "fp16"]
        stopped = invoke(args)
        fp16 = Outcome(None, "\n".join(log.lines[1:]))
    assert done.status == 0 and (tmp_path / "out" / "results.json").exists(), done.output
    assert stopped.status == 130, stopped.output
    assert len(log.lines) == 2 and "this CPU runs fp16 slowly" in fp16.output, log.lines
    return [bf16, fp16]


# ----------------------------------------------------------------------------- models


@scenario("`--compare` malformed (an empty NAME, SPEC or WEIGHTS), or a bad `--model-name`")
def _compare_malformed(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "a.py").write_text(NET.replace("class Net", "class A"))
    run = ["run", "--model", "net.py:Net", *TINY_RUN, "--out", "out", "--no-progress"]
    outcomes = [
        invoke([*run, "--compare", value]) for value in ("x=a.py:A=", "=a.py:A", "robust==w.pt")
    ]
    outcomes.append(invoke([*run, "--model-name", "1x"]))
    assert not (tmp_path / "out").exists()
    return outcomes


@scenario("`--model-arg NAME:KEY=VALUE` for a model that does not exist")
def _model_arg_unknown_model(tmp_path):
    (tmp_path / "a.py").write_text(NET.replace("class Net", "class A"))
    run = ["run", "--model", "a.py:A", *TINY_RUN, "--out", "out", "--no-progress"]
    return [invoke([*run, "--model-arg", "c:k=1"])]


@scenario("two models with one name")
def _two_models_one_name(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    run = ["run", "--model", "net.py:Net", *TINY_RUN, "--out", "out", "--no-progress"]
    return [invoke([*run, "--model-name", "x", "--compare", "x=net.py:Net"])]


@scenario("`--model` and `[[models]]` both given, or neither")
def _model_and_models_tables(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "audit.toml").write_text('[[models]]\nspec = "net.py:Net"\n')
    run = ["run", *TINY_RUN, "--out", "out", "--no-progress"]
    return [
        invoke([*run, "--config", "audit.toml", "--model", "net.py:Net"]),
        invoke(run),
    ]


@scenario("a bad `[[models]]` table")
def _bad_models_table(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    run = ["run", *TINY_RUN, "--out", "out", "--no-progress", "--config", "audit.toml"]
    outcomes = []
    for table, phrase in (
        ('spec = "net.py:Net"\ncolour = "red"', "unknown key 'colour'"),
        ('name = "a"', 'needs spec = "path/to/file.py:Name"'),
        ('spec = "net.py:Net"\nargs = 3', "args must be a table"),
        ('spec = "net.py:Net"\ninput = "sinogram"', "input must be 'image' or 'kspace'"),
        ('spec = "net.py:Net"\nname = "1x"', "model name '1x' must start with a letter"),
    ):
        (tmp_path / "audit.toml").write_text(f"[[models]]\n{table}\n")
        outcomes.append(invoke(run))
        assert f"[[models]] table 1 in audit.toml: {phrase}" in outcomes[-1].output, outcomes[-1]
    return outcomes


@scenario("`[[compare]]` tables in `--config`")
def _compare_tables(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "audit.toml").write_text('[[compare]]\nspec = "net.py:Net"\n')
    run = ["run", "--model", "net.py:Net", *TINY_RUN, "--out", "out", "--no-progress"]
    return [invoke([*run, "--config", "audit.toml"])]


@scenario("an error of a compared (or named) model")
def _compared_model_error(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    run = ["run", "--model", "net.py:Net", "--data", str(_fixture("singlecoil_dir"))]
    run += [*TINY_RUN, "--out", "out", "--no-progress"]
    unnamed = invoke([*run, "--compare", "fastmri.models:Unet"])
    named = invoke([*run, "--compare", "unet=fastmri.models:Unet"])
    assert named.output.startswith("Error: model 2 'unet': constructing fastmri.models:Unet()")
    assert "(give its arguments with --model-arg unet:KEY=VALUE" in named.output, named.output
    return [unnamed, named]


@scenario("a model or weights file missing (`run`)")
def _model_or_weights_missing(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    # --data names no folder: the model's files are checked before the data is read.
    run = ["run", "--data", "nowhere", *TINY_RUN, "--out", "out", "--no-progress"]
    outcomes = [
        invoke([*run, "--model", "x.py:Net"]),
        invoke([*run, "--model", "net.py:Net", "--weights", "w.pt"]),
    ]
    assert not (tmp_path / "out").exists()
    return outcomes


# ----------------------------------------------------------------------------- the test


@pytest.mark.parametrize("case", cases(__name__))
def test_documented(case, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)  # so documented relative paths like x/net.py can be made
    _request.append(request)
    try:
        check_row(case, SCENARIOS[case](tmp_path))
    finally:
        _request.pop()
