"""`mri-audit run` end to end through CliRunner, on tiny models and synthetic fastMRI files."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from click.testing import CliRunner

from mri_audit.audit.verdict import gate
from mri_audit.cli import cli

NET = """
import torch
class Net(torch.nn.Module):
    def __init__(self, k=3, blur=False):
        super().__init__()
        self.c = torch.nn.Conv2d(1, 1, k, padding=k // 2)
        torch.nn.init.constant_(self.c.weight, 1.0 / k**2 if blur else 0.0)
        torch.nn.init.zeros_(self.c.bias)
        self.blur = blur
    def forward(self, x):
        return self.c(x) if self.blur else x + self.c(x)
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    (root / "net.py").write_text(NET)
    odd = root / "<script>alert(1)<"
    odd.mkdir()
    (odd / "<script>x.py").write_text(NET)
    return root


def _run(tmp_path, data, models, *extra, out="audit", check=True):
    args = [
        "run",
        "--model",
        f"{models}/net.py:Net",
        "--compare",
        f"{models}/net.py:Net",
        "--data",
        str(data),
        "--max-slices",
        "2",
        "--candidates",
        "4",
        "--attacks",
        "fnaf-rs,fnaf-fd,fnaf-pgd",
        "--out",
        str(tmp_path / out),
        "--no-progress",
        *extra,
    ]
    result = CliRunner().invoke(cli, args)
    if check:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def audit(tmp_path_factory, singlecoil_dir, models):
    tmp = tmp_path_factory.mktemp("run")
    _run(tmp, singlecoil_dir, models)
    return tmp / "audit"


def test_run_writes_all_files(audit):
    for name in ("records.jsonl", "records.csv", "results.json", "report.html"):
        assert (audit / name).stat().st_size > 0, name
    results = json.loads((audit / "results.json").read_text())
    assert results["schema_version"] == 2
    assert [m["name"] for m in results["models"]] == ["net.py:Net", "net.py:Net#2"]
    assert results["models"][0]["source_sha256"]
    assert set(results["attacks"]["net.py:Net"]) == {"fnaf-rs", "fnaf-fd", "fnaf-pgd"}
    assert results["config"]["candidates"] == 4
    assert results["config"]["criterion"] == "erasure" and results["config"]["margin"] == 0.1
    assert results["verdict"]["criterion"] == "erasure"


def _close(a, b):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def test_results_equal_a_recount_from_records_csv(audit):
    results = json.loads((audit / "results.json").read_text())
    df = pd.read_csv(audit / "records.csv")
    assert len(df) == 2 * 3 * 4  # models x attacks x (2 volumes x 2 slices)
    for (model, attack), g in df.groupby(["model", "attack"]):
        agg = results["attacks"][model][attack]
        assert agg["attack_rate"]["count"] == int(g["hit"].sum())
        assert agg["attack_rate"]["total"] == len(g)
        assert agg["ip_acceptance"]["count"] == int(g["accepted"].sum())
        assert agg["ip_acceptance"]["total"] == int(g["evaluated"].sum())
        assert agg["criterion"] == "erasure" and agg["control_rate"] is None
        # The hit column is the criterion's: erasure min(e, r0) >= margin.
        hit = (g[["e", "r0"]].min(axis=1) >= 0.1) & g["found"]
        assert (g["hit"] == hit).all()
        assert g["score"].dropna().tolist() == pytest.approx(
            g[["e", "r0"]].min(axis=1).dropna().tolist(), rel=1e-6
        )
        assert (g["e"] - (g["r0"] - g["r"])).abs().max() < 1e-6
        found = g[g["found"]]
        for q in ("score", "r", "r0", "e", "rho", "loss"):
            assert _close(agg[q]["mean"], float(found[q].mean())), q
        assert _close(agg["loss"]["q50"], float(found["loss"].median()))
        # Every criterion's pick among the same candidates is in the CSV too.
        for name in ("erasure", "recovery", "paper"):
            assert {f"{name}:score", f"{name}:r", f"{name}:r0", f"{name}:loss"} <= set(g.columns)
        assert (g["erasure:score"].fillna(-9) == g["score"].fillna(-9)).all()
        # Transfer, recounted: B's hit rate on all of A's features, A's hits that hit B, and
        # B's own rate on the same slices.
        other = [c for c in g.columns if c.startswith("transfer_hit:")]
        for col in other:
            target = col.split(":", 1)[1]
            if target == model:
                continue
            cell = results["transfer"][attack][model][target]
            replayed = g[g[col].notna()]
            assert cell["unconditional"]["total"] == len(replayed)
            assert cell["unconditional"]["count"] == int(replayed[col].astype(bool).sum())
            hits = replayed[replayed["hit"]]
            assert cell["conditional"]["total"] == len(hits)
            assert cell["conditional"]["count"] == int(hits[col].astype(bool).sum())
            mine = df[(df["model"] == target) & (df["attack"] == attack)]
            mine = mine.set_index(["volume", "slice"]).loc[
                list(zip(replayed["volume"], replayed["slice"], strict=True))
            ]
            assert cell["own"]["count"] == int(mine["hit"].sum())
    assert "all" not in results["transfer"]
    # Clean metrics: fastMRI per-volume SSIM/NMSE/PSNR, then the mean over volumes.
    for model, g in df[df["attack"] == "fnaf-rs"].groupby("model"):
        per_volume = g.groupby("volume").agg(
            ssim=("clean_ssim", "mean"),
            err=("clean_sq_err", "sum"),
            norm=("clean_sq_norm", "sum"),
            pix=("clean_pixels", "sum"),
            dr=("data_range", "max"),
        )
        nmse = (per_volume["err"] / per_volume["norm"]).mean()
        psnr = (
            10 * (per_volume["dr"] ** 2 / (per_volume["err"] / per_volume["pix"])).map(math.log10)
        ).mean()
        assert _close(results["clean"][model]["ssim"], float(per_volume["ssim"].mean()))
        assert _close(results["clean"][model]["nmse"], float(nmse))
        assert _close(results["clean"][model]["psnr"], float(psnr))


def test_records_hold_features_that_replay(audit):
    df = pd.read_csv(audit / "records.csv")
    row = df[df["found"]].iloc[0]
    feature = json.loads(row["feature"])
    assert len(feature["rows"]) == len(feature["values"]) >= 1
    columns = {"volume", "slice", "row", "col", "ip", "rho", "region_nmse", "r", "r0", "e"}
    assert columns | {"loss", "score", "criterion"} <= set(df.columns)
    fnaf = df[df["found"]]
    assert fnaf[["r", "r0", "e", "rho", "loss", "ip"]].notna().all().all()


def test_existing_output_is_never_silently_replaced(audit, singlecoil_dir, models):
    before = (audit / "results.json").read_bytes()
    result = _run(audit.parent, singlecoil_dir, models, check=False)
    assert result.exit_code == 2 and "--force" in result.output
    assert (audit / "results.json").read_bytes() == before


def test_resume_recomputes_nothing_and_refuses_changed_config(tmp_path, singlecoil_dir, models):
    _run(tmp_path, singlecoil_dir, models)
    out = tmp_path / "audit"
    full = json.loads((out / "results.json").read_text())
    lines = (out / "records.jsonl").read_text().splitlines(keepends=True)
    # Keep the header and the first batch, then a torn line, as after a crash.
    (out / "records.jsonl").write_text("".join(lines[:7]) + lines[7][:20])
    (out / "results.json").unlink()
    _run(tmp_path, singlecoil_dir, models, "--resume")
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["attacks"] == full["attacks"] and resumed["clean"] == full["clean"]
    result = _run(tmp_path, singlecoil_dir, models, "--resume", "--margin", "0.5", check=False)
    assert result.exit_code == 2 and "margin" in result.output
    result = _run(tmp_path, singlecoil_dir, models, "--resume", "--criterion", "paper", check=False)
    assert result.exit_code == 2 and "criterion" in result.output


def test_max_attack_rate_sets_exit_status(tmp_path, singlecoil_dir, models):
    # The gate's arithmetic (PASS / INCONCLUSIVE / FAIL from the rates and their intervals) is
    # tested on the library in test_stats.py; this is its plumbing: exit status, console, report.
    blur = ("--model-arg", "blur=True", "--model-arg", "k=9")
    args = ("--attacks", "fnaf-rs", "--max-attack-rate", "0.0", *blur)
    result = _run(tmp_path, singlecoil_dir, models, *args, check=False)
    assert result.exit_code == 3, result.output
    assert "exceeds --max-attack-rate" in result.output
    line = next(ln for ln in result.output.splitlines() if ln.startswith("FAIL:"))
    assert "fnaf-rs attack rate" in line and "95% CI" in line
    out = tmp_path / "audit"
    results = json.loads((out / "results.json").read_text())
    verdict = results["verdict"]
    assert verdict["status"] == "fail" and verdict["passed"] is False
    assert verdict["worst"]["high"] >= verdict["worst"]["attack_rate"]
    html = (out / "report.html").read_text()
    assert '<div class="verdict fail">' in html and ">FAIL<" in html
    # The same rates under other limits: what the gate decides and the exit status it gives.
    rate = verdict["worst"]
    for limit, status in ((1.0, "pass"), (rate["attack_rate"], "inconclusive")):
        if status == "inconclusive" and rate["high"] <= limit:
            continue  # a rate whose interval is a point cannot be inconclusive
        v = gate(results["attacks"], verdict["worst"]["model"], limit)
        assert v["status"] == status, (limit, v)


@pytest.mark.parametrize("limit, code, status", [("0.5", 0, "PASS"), ("0.2", 3, "INCONCLUSIVE")])
def test_gate_outcomes(tmp_path, singlecoil_dir, models, limit, code, status):
    # 0 of 4 slices hit: the upper bound (49%) is within 50% (PASS), not within 20%.
    args = ("--attacks", "fnaf-rs", "--candidates", "2", "--max-attack-rate", limit)
    result = _run(tmp_path, singlecoil_dir, models, *args, check=False)
    assert result.exit_code == code, result.output
    line = next(ln for ln in result.output.splitlines() if ln.startswith(status + ":"))
    assert "fnaf-rs attack rate" in line and "95% CI" in line
    verdict = json.loads((tmp_path / "audit" / "results.json").read_text())["verdict"]
    assert verdict["status"] == status.lower() and verdict["passed"] is (status == "PASS")
    html = (tmp_path / "audit" / "report.html").read_text()
    assert f'<div class="verdict {status.lower()}">' in html and f">{status}<" in html


def test_gate_over_no_fnaf_attack_is_a_usage_error(tmp_path, singlecoil_dir, models):
    args = ("--attacks", "kspace-pgd", "--max-attack-rate", "0.2")
    result = _run(tmp_path, singlecoil_dir, models, *args, check=False)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "no FNAF attack" in result.output
    assert not (tmp_path / "audit").exists()


def test_paired_comparisons_in_results_and_console(audit):
    results = json.loads((audit / "results.json").read_text())
    df = pd.read_csv(audit / "records.csv")
    for p in results["paired"]:
        a = df[(df["model"] == p["a"]) & (df["attack"] == p["attack"])].set_index(
            ["volume", "slice"]
        )
        b = df[(df["model"] == p["b"]) & (df["attack"] == p["attack"])].set_index(
            ["volume", "slice"]
        )
        both = a["hit"] & b["hit"]
        assert p["slices"] == len(a) and p["both"] == int(both.sum())
        assert p["a_only"] == int((a["hit"] & ~b["hit"]).sum())
        assert p["b_only"] == int((b["hit"] & ~a["hit"]).sum())
    assert {p["attack"] for p in results["paired"]} == {"fnaf-rs", "fnaf-fd", "fnaf-pgd"}


def test_config_file_and_flags_combine(tmp_path, singlecoil_dir, models):
    cfg = tmp_path / "audit.toml"
    cfg.write_text('candidates = 2\nmargin = 0.5\nattacks = "fnaf-rs"\nseed = 7\n')
    result = _run(tmp_path, singlecoil_dir, models, "--config", str(cfg), "--candidates", "3")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "audit" / "results.json").read_text())["config"]
    # The file sets threshold, seed and attacks... but --attacks on the command line wins.
    assert config["margin"] == 0.5 and config["seed"] == 7
    assert config["candidates"] == 3
    assert config["attacks"] == ["fnaf-rs", "fnaf-fd", "fnaf-pgd"]


@pytest.mark.parametrize(
    "text, phrase",
    [
        ("nonsense_key = 1\n", "unknown key 'nonsense_key'"),
        ('candidates = "many"\n', "config key 'candidates'"),
        ("candidates = [\n", "not valid TOML"),
    ],
)
def test_bad_config_files(tmp_path, singlecoil_dir, models, text, phrase):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    result = _run(tmp_path, singlecoil_dir, models, "--config", str(cfg), check=False)
    assert result.exit_code == 2
    assert phrase in result.output and "Traceback" not in result.output
    assert not (tmp_path / "audit").exists()


def test_model_name_with_script_tag_is_escaped(tmp_path, singlecoil_dir, models):
    spec = f"{models}/<script>alert(1)</<script>x.py:Net"  # folder "<script>alert(1)<"
    result = CliRunner().invoke(
        cli,
        [
            "run",
            "--model",
            spec,
            "--data",
            str(singlecoil_dir),
            "--max-volumes",
            "1",
            "--max-slices",
            "1",
            "--candidates",
            "2",
            "--attacks",
            "fnaf-rs",
            "--out",
            str(tmp_path / "x"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    html = (tmp_path / "x" / "report.html").read_text()
    assert "&lt;script&gt;x.py:Net" in html
    assert "<script" not in html


@pytest.mark.parametrize(
    "flags, phrase",
    [
        (["--criterion", "loudest"], "--criterion"),
        (["--margin", "0"], "--margin"),
        (["--margin", "1.5"], "--margin"),
        (["--min-recovery", "-1"], "--min-recovery"),
    ],
)
def test_bad_criterion_options_exit_2_before_any_work(
    tmp_path, singlecoil_dir, models, flags, phrase
):
    result = _run(tmp_path, singlecoil_dir, models, *flags, check=False)
    assert result.exit_code == 2 and phrase in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("Error: ") and "must be" in result.output
    assert not (tmp_path / "audit").exists()


def test_criterion_recovery_and_paper_end_to_end(tmp_path, singlecoil_dir, models):
    """The hit column follows --criterion; paper has a control, the others do not."""
    common = ("--max-volumes", "1", "--attacks", "fnaf-rs")
    _run(tmp_path, singlecoil_dir, models, *common, "--criterion", "recovery", out="rec")
    df = pd.read_csv(tmp_path / "rec" / "records.csv")
    assert set(df["criterion"]) == {"recovery"}
    hit = (df["r"] < 0.5) & (df["r0"] >= 0.1) & df["found"]
    assert (df["hit"] == hit).all()
    _run(tmp_path, singlecoil_dir, models, *common, "--criterion", "paper", out="pap")
    results = json.loads((tmp_path / "pap" / "results.json").read_text())
    agg = results["attacks"]["net.py:Net"]["fnaf-rs"]
    assert agg["criterion"] == "paper" and agg["control_rate"]["total"] == 2
    df = pd.read_csv(tmp_path / "pap" / "records.csv")
    hit = (df["loss"] >= 1e-3) & (df["ip"] >= 1e-4) & df["found"]
    assert (df["hit"] == hit).all()


def test_unknown_attack_lists_known(tmp_path, singlecoil_dir, models):
    result = _run(tmp_path, singlecoil_dir, models, "--attacks", "fnaf-nope", check=False)
    assert result.exit_code == 2 and "fnaf-rs" in result.output


def test_attack_params(tmp_path, singlecoil_dir, models):
    result = _run(
        tmp_path,
        singlecoil_dir,
        models,
        "--max-volumes",
        "1",
        "--attack-param",
        "fnaf-pgd.steps=2",
        "--attack-param",
        "fnaf-fd.h=1",
    )
    config = json.loads((tmp_path / "audit" / "results.json").read_text())["config"]
    assert config["attack_options"] == {"fnaf-pgd": {"steps": 2}, "fnaf-fd": {"h": 1}}
    assert result.exit_code == 0
    for bad, phrase in [
        ("fnaf-pgd.nope=1", "no parameter nope"),
        ("fnaf-pgd.steps=-1", "steps must be"),
        ("kspace-pgd.eps=1", "not among --attacks"),
        ("junk", "ATTACK.KEY=VALUE"),
    ]:
        result = _run(
            tmp_path, singlecoil_dir, models, "--attack-param", bad, out="bad", check=False
        )
        assert result.exit_code == 2 and phrase in result.output, (bad, result.output)


def test_nan_kspace_slices_are_skipped_and_counted(tmp_path, models):
    import h5py
    import numpy as np

    from mri_audit.data.phantoms import synth_dataset

    folder = tmp_path / "data"
    (path,) = synth_dataset(folder, volumes=1, slices=3, size=48, coils=1, seed=4)
    with h5py.File(path, "r+") as hf:
        k = hf["kspace"][1]
        k[5, 5] = np.nan
        hf["kspace"][1] = k
    result = CliRunner().invoke(
        cli,
        [
            "run",
            "--model",
            f"{models}/net.py:Net",
            "--data",
            str(folder),
            "--attacks",
            "fnaf-rs",
            "--candidates",
            "2",
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["failures"]["skipped"] == 1
    assert results["failures"]["slices"][0]["slice"] == 1
    assert results["attacks"]["net.py:Net"]["fnaf-rs"]["slices"] == 2
    assert "Slices not audited" in (tmp_path / "o" / "report.html").read_text()


FLAKY = """
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.calls = 0
    def forward(self, x):
        self.calls += 1
        if self.calls > 6 and self.calls % 4 == 0:  # the dry run makes 6 calls
            raise RuntimeError("fails on every fourth call after the dry run")
        return x + self.c(x)
"""


def test_model_failures_are_isolated_and_reported(tmp_path, singlecoil_dir):
    (tmp_path / "flaky.py").write_text(FLAKY)
    result = CliRunner().invoke(
        cli,
        [
            "run",
            "--model",
            f"{tmp_path}/flaky.py:Net",
            "--data",
            str(singlecoil_dir),
            "--max-slices",
            "2",
            "--attacks",
            "fnaf-rs",
            "--candidates",
            "1",
            "--batch-size",
            "1",
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    failures = results["failures"]
    audited = results["attacks"]["flaky.py:Net"]["fnaf-rs"]["slices"]
    assert failures["errors"] + audited == 4
    assert failures["errors"] >= 1
    assert all("RuntimeError" in f["reason"] for f in failures["slices"])


def test_records_csv_is_spreadsheet_safe(tmp_path):
    """Formula-looking text gets a leading quote; numbers (negative ones too) stay numbers;
    the report reads the names back unchanged."""
    from mri_audit.report.html import AuditInputs, _load_csv_records
    from mri_audit.report.records_csv import write_csv

    records = [
        {"model": '=HYPERLINK("x")', "attack": "fnaf-rs", "volume": "-2+3", "slice": 0,
         "e": -0.25, "r": 0.5, "hit": False, "note": "@sum", "ok": "plain"},
        {"model": "+cmd", "attack": "fnaf-rs", "volume": "\tv", "slice": 1,
         "e": 0.1, "r": -1.0, "hit": True, "note": "\rx", "ok": "a-b"},
    ]  # fmt: skip
    path = tmp_path / "records.csv"
    write_csv(path, records)
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert raw["model"].tolist() == ['\'=HYPERLINK("x")', "'+cmd"]
    assert raw["volume"].tolist() == ["'-2+3", "'\tv"]
    assert raw["note"].tolist() == ["'@sum", "'\rx"] and raw["ok"].tolist() == ["plain", "a-b"]
    assert raw["e"].tolist() == ["-0.25", "0.1"] and raw["r"].tolist() == ["0.5", "-1.0"]
    audit = AuditInputs(tmp_path / "results.json", {})
    _load_csv_records(audit, path)
    assert audit.records["model"].tolist() == ['=HYPERLINK("x")', "+cmd"]
    assert audit.records["e"].tolist() == [-0.25, 0.1]


def test_data_provenance_names_and_hashes_every_file(audit, singlecoil_dir):
    import hashlib

    results = json.loads((audit / "results.json").read_text())
    files = results["data"]["files"]
    on_disk = sorted(singlecoil_dir.glob("*.h5"))
    assert [f["name"] for f in files] == [p.name for p in on_disk]
    for f, path in zip(files, on_disk, strict=True):
        assert f["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert f["slices"] >= 1 and f["target"] == "reconstruction_esc"
    html = (audit / "report.html").read_text()
    assert 'id="data-files"' in html and all(f["sha256"] in html for f in files)


def test_models_record_the_packages_their_code_imports(audit):
    import torch

    results = json.loads((audit / "results.json").read_text())
    for m in results["models"]:
        assert m["packages"] == {"torch": torch.__version__}
    html = (audit / "report.html").read_text()
    assert f"torch {torch.__version__}" in html
