"""The library entry point ``mri_audit.audit(...) -> AuditResult``: the README's example, a
constructed module against its spec, the result's records and report against the CLI's files."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import mri_audit
from mri_audit.cli import cli
from mri_audit.errors import ModelError, UsageError
from mri_audit.models.entries import ModelEntry

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples"
SMALL = {"max_volumes": 2, "max_slices": 1, "attacks": ("fnaf-rs",), "candidates": 3}


@pytest.fixture(scope="module")
def unet_result():
    return mri_audit.audit(
        f"{EX}/unet.py:UNet",
        weights=f"{EX}/weights/unet_4x.pt",
        compare=[f"{EX}/zero_filled.py:ZeroFilled"],
        batch_size=4,
        **SMALL,
    )


def test_readme_example_runs_as_written(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    block = text.split("## Use it from Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(ROOT)
    out = tmp_path / "my-audit"
    code = block.replace('result.write("my-audit")', f"result.write({str(out)!r})")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert isinstance(result, mri_audit.AuditResult)
    assert {p.name for p in out.iterdir()} >= {
        "results.json",
        "records.csv",
        "records.jsonl",
        "report.html",
        "audit_images.npz",
    }
    assert result.results["complete"] is True and result.out == out


def test_records_are_the_csv_the_audit_writes(unet_result, tmp_path):
    out = unet_result.write(tmp_path / "a")
    from_file = pd.read_csv(out / "records.csv", dtype={"model": str, "volume": str})
    frame = unet_result.records
    assert list(frame.columns) == list(from_file.columns)
    assert len(frame) == 2 * 2  # 2 slices x 2 models x 1 attack
    pd.testing.assert_series_equal(frame["r"], from_file["r"])
    assert frame["hit"].dtype == bool
    # The report rendered from memory is the one `mri-audit report` renders from the files.
    again = CliRunner().invoke(cli, ["report", str(out), "--out", str(tmp_path / "again.html")])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again.html").read_text() == (out / "report.html").read_text()
    # A re-read under another criterion works from the journal the result wrote.
    reread = CliRunner().invoke(cli, ["report", str(out), "--criterion", "recovery"])
    assert reread.exit_code == 0, reread.output


def test_a_constructed_module_audits_like_its_spec(unet_result):
    from examples.unet import UNet

    module = UNet()
    module.load_state_dict(torch.load(EX / "weights" / "unet_4x.pt", weights_only=True))
    result = mri_audit.audit(
        module, compare=[f"{EX}/zero_filled.py:ZeroFilled"], batch_size=4, **SMALL
    )
    info = result.results["models"][0]
    assert info["kind"] == "object" and info["target"] == "unet.py:UNet"
    assert re.fullmatch(r"[0-9a-f]{64}", info["weights_sha256"])
    assert result.results["audit"] != unet_result.results["audit"]  # another model identity
    a, b = result.records, unet_result.records
    assert list(a["volume"]) == list(b["volume"])
    pd.testing.assert_series_equal(a["r"], b["r"], rtol=1e-5)
    pd.testing.assert_series_equal(a["r0"], b["r0"], rtol=1e-6)
    with pytest.raises(ModelError, match="do not apply to a constructed UNet"):
        mri_audit.audit(module, model_args={"chans": 4}, **SMALL)


def test_batch_size_does_not_change_the_library_result(unet_result):
    other = mri_audit.audit(
        f"{EX}/unet.py:UNet",
        weights=f"{EX}/weights/unet_4x.pt",
        compare=[f"{EX}/zero_filled.py:ZeroFilled"],
        batch_size=2,
        **SMALL,
    )
    assert other.results["audit"] == unet_result.results["audit"]
    pd.testing.assert_series_equal(other.records["score"], unet_result.records["score"], rtol=1e-5)


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(UsageError, match="two models are named 'm'"):
        mri_audit.audit(
            f"{EX}/zero_filled.py:ZeroFilled",
            name="m",
            compare=[ModelEntry(f"{EX}/zero_filled.py:ZeroFilled", "m")],
        )
    with pytest.raises(UsageError, match="an nn.Module, a .spec, weights. pair or a ModelEntry"):
        mri_audit.audit(42)
    with pytest.raises(ModelError, match="model file not found"):
        mri_audit.audit(str(tmp_path / "missing.py") + ":Net")


def test_out_keeps_a_journal_that_resumes(tmp_path):
    out = tmp_path / "audit"
    first = mri_audit.audit(f"{EX}/zero_filled.py:ZeroFilled", out=out, batch_size=4, **SMALL)
    assert first.out == out and (out / "records.jsonl").is_file()
    again = mri_audit.audit(
        f"{EX}/zero_filled.py:ZeroFilled", out=out, resume=True, batch_size=4, **SMALL
    )
    assert again.results["audit"] == first.results["audit"]
    pd.testing.assert_frame_equal(again.records, first.records)
    with pytest.raises(UsageError, match="already holds an audit"):
        mri_audit.audit(f"{EX}/zero_filled.py:ZeroFilled", out=out, **SMALL)
