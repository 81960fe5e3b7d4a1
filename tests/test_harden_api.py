"""The library entry point ``mri_audit.harden(...) -> HardenResult``: its figures are the ones
``mri-audit harden`` prints and writes for the same settings, every keyword is checked as the
flag of the same name is, and the README's example calls it as the signature says."""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from click.testing import CliRunner

import mri_audit
from mri_audit.cli import cli
from mri_audit.cli.harden import epoch_line
from mri_audit.errors import ModelError, UsageError
from mri_audit.settings import HARDEN, check_settings
from tests.test_harden import NET
from tests.test_settings import NOT_APPLICABLE, _bad_values

ROOT = Path(__file__).resolve().parents[1]
# One step per epoch on one slice per volume: training, selection and report volumes apart.
FAST = {
    "max_slices": 1,
    "epochs": 2,
    "steps": 1,
    "candidates": 3,
    "inner_steps": 1,
    "val_candidates": 9,
    "val_steps": 4,
}
FLAGS = ["--max-slices", "1", "--epochs", "2", "--steps", "1", "--candidates", "3"]
FLAGS += ["--inner-steps", "1", "--val-candidates", "9", "--val-steps", "4"]


class Pair(NamedTuple):
    cli_out: Path  # robust.pt written by `mri-audit harden`
    cli_output: str
    lib: mri_audit.HardenResult  # the same settings through mri_audit.harden
    epochs: list[dict]  # what on_epoch was told
    trained: list[mri_audit.HardenResult]  # what on_trained was told
    printed: str  # what the library call printed (nothing)


def _net(folder: Path) -> str:
    (folder / "net.py").write_text(NET)
    return f"{folder}/net.py:Net"


@pytest.fixture(scope="module")
def pair(tmp_path_factory, harden_dir) -> Pair:
    """One run with the before/after audit through the CLI, one through the library."""
    root = tmp_path_factory.mktemp("harden_api")
    model = _net(root)
    cli_out, lib_out = root / "cli" / "robust.pt", root / "lib" / "robust.pt"
    args = ["harden", "--model", model, "--data", str(harden_dir), *FLAGS, "--out", str(cli_out)]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 0, done.output
    epochs, trained = [], []
    with pytest.MonkeyPatch.context() as mp:
        printed = io.StringIO()
        mp.setattr(sys, "stdout", printed)
        lib = mri_audit.harden(
            model,
            data=harden_dir,
            out=lib_out,
            on_epoch=epochs.append,
            on_trained=trained.append,
            **FAST,
        )
    return Pair(cli_out, done.output, lib, epochs, trained, printed.getvalue())


def test_the_package_is_the_entry_point():
    assert callable(mri_audit.harden) and mri_audit.HardenResult.__name__ == "HardenResult"
    params = inspect.signature(mri_audit.harden).parameters
    assert list(params)[0] == "model"
    assert all(p.kind is p.KEYWORD_ONLY for name, p in params.items() if name != "model")
    for s in HARDEN:  # every setting by its library name, with the CLI's default
        assert s.name in params, s.name
        if s.name not in ("model", "out", "accel", "feature_steps_range", "model_args"):
            assert params[s.name].default == s.default, s.name
    assert params["out"].default is inspect.Parameter.empty  # required, as --out is
    least = {"model": "m", "out": "o"}
    accel = check_settings(HARDEN, {**least, "accel": params["accel"].default})["accel"]
    assert accel == check_settings(HARDEN, least)["accel"] == (4.0,)
    import mri_audit.harden.trainer as trainer

    assert mri_audit.harden.trainer is trainer  # still a package of modules


def test_the_figures_are_the_ones_the_cli_prints_and_writes(pair):
    lib, card = pair.lib, json.loads(pair.cli_out.with_suffix(".pt.json").read_text())
    assert json.loads(json.dumps(lib.summary)) == card["summary"]
    assert lib.config == card["config"]
    assert lib.selected_epoch == card["summary"]["best"]["epoch"]
    assert lib.blend is None and lib.fallback is bool(card["summary"]["best"].get("fallback"))
    assert (lib.attack_rate_before, lib.attack_rate_after) == (
        card["summary"]["start"]["attack_rate"],
        card["summary"]["best"]["attack_rate"],
    )
    assert (lib.ssim_before, lib.ssim_after, lib.nmse_before, lib.nmse_after) == tuple(
        card["summary"][k][m] for m in ("ssim", "nmse") for k in ("start", "best")
    )
    lines = [epoch_line(e) for e in lib.validation]
    assert [e["epoch"] for e in lib.validation] == [0, 1, 2]
    printed = re.compile(r"(start|epoch \d+|blend [0-9.]+) +SSIM ")
    assert lines == [line for line in pair.cli_output.splitlines() if printed.match(line)]
    note = " (nothing kept SSIM and NMSE within tolerance" if lib.fallback else " ("
    assert f"kept epoch {lib.selected_epoch} -> {pair.cli_out}{note}" in pair.cli_output
    # The same weights, card and before/after audit as the CLI's.
    kept, cli_kept = (torch.load(p, weights_only=True) for p in (lib.out, pair.cli_out))
    assert all(torch.equal(kept[k], cli_kept[k]) for k in cli_kept)
    assert json.loads(lib.card.read_text())["summary"] == card["summary"]
    assert isinstance(lib.audit, mri_audit.AuditResult)
    assert json.loads(json.dumps(lib.before_after)) == card["before_after_audit"]
    assert lib.report_out == lib.out.parent / "robust.pt.audit"
    assert (lib.report_out / "results.json").is_file() and lib.exit_code == 0
    assert lib.checkpoint is None and not lib.out.with_suffix(".pt.ckpt").exists()
    assert lib.original == lib.out.with_suffix(".pt.start.pt")  # no weights: the start's


def test_the_hooks_are_told_and_nothing_is_printed(pair):
    assert pair.printed == ""
    assert pair.epochs == pair.lib.validation
    (trained,) = pair.trained
    assert trained.audit is None and trained.best == pair.lib.best
    assert dataclasses.replace(trained, audit=pair.lib.audit, checkpoint=None) == pair.lib


# ------------------------------------------------------------------------------ the keywords


def _keyword_cases() -> list:
    cases = []
    for s in HARDEN:
        if not (s.api and s.cli) or s.name in ("model", "out"):
            continue
        for fault, value in _bad_values(s):
            cases.append(pytest.param(s, {}, value, id=f"{s.name}-{fault}"))
        if ("harden", s.name) in NOT_APPLICABLE:
            others, value = NOT_APPLICABLE["harden", s.name]
            cases.append(pytest.param(s, others, value, id=f"{s.name}-inapplicable"))
    return cases


@pytest.mark.parametrize("setting, others, value", _keyword_cases())
def test_a_bad_keyword_is_the_flags_one_line_error_before_any_work(
    setting, others, value, tmp_path
):
    out = tmp_path / "robust.pt"
    native = {**others, setting.name: value}
    try:
        check_settings(HARDEN, {"model": "net.py:Net", "out": str(out), **native})
    except UsageError as err:
        expected = str(err)
    else:
        pytest.fail(f"{native} passes the settings' check")
    with pytest.raises(UsageError) as info:
        mri_audit.harden(str(tmp_path / "net.py") + ":Net", out=out, **native)
    assert str(info.value) == expected and setting.flag in expected and "\n" not in expected
    assert list(tmp_path.iterdir()) == []  # refused before any work


@pytest.mark.parametrize(
    "flags, keywords",
    [
        (["--epochs", "0"], {"epochs": 0}),
        (["--lambda", "-1"], {"lam": -1}),
        (["--accel", "0.5"], {"accel": 0.5}),
        (["--feature-steps-range", "50-10"], {"feature_steps_range": "50-10"}),
        (["--loss", "huber"], {"loss": "huber"}),
        (["--no-report", "--report-out", "x"], {"no_report": True, "report_out": "x"}),
    ],
)
def test_the_flag_and_the_keyword_give_the_same_line(flags, keywords, tmp_path, harden_dir):
    model = _net(tmp_path)
    out = tmp_path / "o.pt"
    result = CliRunner().invoke(
        cli, ["harden", "--model", model, "--data", str(harden_dir), "--out", str(out), *flags]
    )
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    with pytest.raises(UsageError) as info:
        mri_audit.harden(model, data=harden_dir, out=out, **keywords)
    # A flag's value is text ('0'), a keyword's a number (0); the words are the same.
    assert line.replace("'", "") == "Error: " + str(info.value).replace("'", "")


def test_outputs_it_would_overwrite_are_refused_as_the_cli_refuses_them(tmp_path, harden_dir):
    model = _net(tmp_path)
    out = tmp_path / "robust.pt"
    out.write_bytes(b"someone's weights")
    for kw in ({}, {"resume": True}):
        flags = ["--resume"] if kw else []
        done = CliRunner().invoke(cli, ["harden", "--model", model, "--out", str(out), *flags])
        assert done.exit_code == 2, done.output
        with pytest.raises(UsageError) as info:
            mri_audit.harden(model, out=out, **kw)
        assert done.output.strip() == f"Error: {info.value}"
    weights = tmp_path / "w.pt"
    with pytest.raises(UsageError, match="--out must differ from --weights"):
        mri_audit.harden(model, weights=weights, out=weights)
    with pytest.raises(UsageError, match=re.escape(f"--report-out {tmp_path} is the folder")):
        mri_audit.harden(model, out=tmp_path / "new.pt", report_out=tmp_path)
    assert out.read_bytes() == b"someone's weights"


def test_library_only_arguments_are_checked_by_their_type(tmp_path, harden_dir):
    out = tmp_path / "o.pt"
    with pytest.raises(UsageError, match="model must be a spec .* got 42"):
        mri_audit.harden(42, out=out)
    with pytest.raises(UsageError, match="model must be a spec"):
        mri_audit.harden(torch.nn.Conv2d(1, 1, 3), out=out)
    with pytest.raises(UsageError, match="model_args must be a dict"):
        mri_audit.harden("net.py:Net", model_args="chans=4", out=out)
    with pytest.raises(UsageError, match="--progress must be true or false"):
        mri_audit.harden("net.py:Net", progress="yes", out=out)
    with pytest.raises(ModelError, match="bad --model-arg 'chans'"):
        mri_audit.harden("net.py:Net", model_args=["chans"], out=out)
    with pytest.raises(TypeError, match="out"):
        mri_audit.harden("net.py:Net")  # out is required, as --out is
    with pytest.raises(UsageError, match="at least 3 volumes"):  # the data's split: exit 2
        mri_audit.harden(_net(tmp_path), data=next(harden_dir.glob("*.h5")), out=out, **FAST)


def test_model_args_as_a_dict_or_as_strings_train_the_same(tmp_path, harden_dir):
    model = _net(tmp_path)
    runs = [
        mri_audit.harden(
            model, model_args=args, data=harden_dir, out=tmp_path / f"{i}.pt", no_report=True,
            **{**FAST, "epochs": 1},
        )
        for i, args in enumerate((["freeze_head=True"], {"freeze_head": True}))
    ]  # fmt: skip
    assert runs[0].summary == runs[1].summary
    a, b = (torch.load(r.out, weights_only=True) for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = torch.load(runs[0].original, weights_only=True)
    assert torch.equal(a["head.weight"], start["head.weight"])  # the frozen head stays
    assert runs[0].audit is None and runs[0].report_out is None and runs[0].exit_code == 0


# ------------------------------------------------------------------------------ the README


def _readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use it from Python", 1)[1].split("\n## ", 1)[0]
    (block,) = [b.split("```", 1)[0] for b in section.split("```python")[1:] if ".harden(" in b]
    return block


def test_the_readme_example_calls_harden_as_its_signature_says(monkeypatch, tmp_path):
    """The call binds to the signature and every attribute it reads exists (it trains the
    U-Net on the built-in phantoms for minutes: `-m slow` runs it as written)."""
    real = inspect.signature(mri_audit.harden)
    calls = []

    def harden(*args, **kwargs):
        calls.append(real.bind(*args, **kwargs))
        start = {"ssim": 0.9, "nmse": 0.003, "psnr": 30.0, "attack_rate": 0.5}
        best = {**start, "epoch": 1, "attack_rate": 0.25}

        def tree():  # any figure the example reads
            return defaultdict(tree)

        audit = type("Audit", (), {"results": tree(), "exit_code": 0})
        return mri_audit.HardenResult(
            Path("robust.pt"), Path("w.pt"), None, None, None, {}, start, [best], [], best, 1.0,
            audit(),
        )  # fmt: skip

    monkeypatch.setattr(type(mri_audit.harden), "__call__", lambda self, *a, **k: harden(*a, **k))
    monkeypatch.setattr("builtins.print", lambda *a, **k: None)
    block = _readme_block()
    exec(compile(block, "README.md", "exec"), {"mri_audit": mri_audit})  # noqa: S102
    assert len(calls) == 1 and "out" in calls[0].arguments


@pytest.mark.slow  # trains the example U-Net and audits it before/after
def test_the_readme_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    block = _readme_block().replace('out="robust.pt"', f"out={str(tmp_path / 'robust.pt')!r}")
    namespace: dict = {}
    exec(compile("import mri_audit\n" + block, "README.md", "exec"), namespace)  # noqa: S102
    hardened = namespace["hardened"]
    assert isinstance(hardened, mri_audit.HardenResult) and hardened.exit_code == 0
    assert (tmp_path / "robust.pt.json").is_file() and hardened.audit is not None
