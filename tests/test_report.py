"""The HTML report: values match results.json, escaping, self-containment, figures, CLI errors."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mri_audit.cli.report_cmd import report
from mri_audit.errors import DataError
from mri_audit.report.html import render_report
from tests.journal_util import rechain
from tests.report_fixture import FNAF_ATTACKS, build_audit_folder

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert(1)</script>"
LIGHT = {"slices": 2, "records": False, "images": False}  # no figures: fast
ARTIFACTS = Path(__file__).parent / "artifacts"
RECORD_FIGURES = 5  # heatmaps, score histograms, scatter, rate-vs-threshold, r/r₀ distributions


class _Tables(HTMLParser):
    """Collects each table (by id or data-attack) as rows of (attributes, cell texts)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[tuple[dict, list[str]]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or f"transfer:{a.get('data-attack')}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append((a, []))
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table:
            text = " ".join("".join(self._cell).split())
            self.tables[self._table][-1][1].append(text)
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def tables(html: str) -> dict[str, list[tuple[dict, list[str]]]]:
    parser = _Tables()
    parser.feed(html)
    return parser.tables


def data_uris(html: str) -> list[bytes]:
    return [
        base64.b64decode(b, validate=True)
        for b in re.findall(r'src="data:image/png;base64,([^"]*)"', html)
    ]


@pytest.fixture(scope="module")
def audit(tmp_path_factory) -> tuple[Path, dict, str]:
    folder = tmp_path_factory.mktemp("audit")
    results = build_audit_folder(folder)
    out = render_report(results)
    return results, json.loads(results.read_text()), out.read_text(encoding="utf-8")


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _rate_text(w: dict) -> str:
    return (
        f"{_pct(w['value'])} 95% CI [{_pct(w['low'])}, {_pct(w['high'])}] {w['count']}/{w['total']}"
    )


def test_report_written_beside_results(audit):
    results, _, html = audit
    assert (results.parent / "report.html").is_file()
    assert html.startswith("<!DOCTYPE html>")
    for section in (
        "verdict",
        "clean",
        "attacks",
        "volumes",
        "threshold",
        "locations",
        "scores",
        "recovery",
        "distributions",
        "transfer",
        "worst",
        "method",
        "reproduce",
    ):
        assert f'<section id="{section}">' in html


def test_attack_table_matches_results(audit):
    _, res, html = audit
    rows = {
        (a["data-model"], a["data-attack"]): cells for a, cells in tables(html)["attack-table"] if a
    }
    expected = {(m, a) for m, by in res["attacks"].items() for a in by}
    assert set(rows) == expected and len(expected) == 2 * (len(FNAF_ATTACKS) + 1)
    for (model, attack), cells in rows.items():
        agg = res["attacks"][model][attack]
        assert cells[:3] == [model, attack, str(agg["slices"])]
        if agg["kind"] == "fnaf":
            assert agg["criterion"] == "erasure" and agg["control_rate"] is None
            assert cells[3] == _rate_text(agg["attack_rate"])
            assert cells[4] == _rate_text(agg["ip_acceptance"])
            assert cells[5:] == [f"{agg[q]['mean']:.3f}" for q in ("score", "r", "r0", "e")]
        else:
            s0, s1 = agg["ssim_clean"]["mean"], agg["ssim_adv"]["mean"]
            p0, p1 = agg["psnr_clean"]["mean"], agg["psnr_adv"]["mean"]
            assert f"SSIM {s0:.4f} → {s1:.4f}" in cells[3]
            assert f"PSNR {p0:.2f} → {p1:.2f} dB" in cells[3]


def test_clean_table_and_verdict(audit):
    _, res, html = audit
    rows = {a["data-model"]: cells for a, cells in tables(html)["clean-table"] if a}
    assert set(rows) == set(res["clean"])
    for model, c in res["clean"].items():
        assert rows[model] == [
            model,
            f"{c['ssim']:.4f}",
            f"{c['nmse']:.4f}",
            f"{c['psnr']:.2f}",
            str(c["volumes"]),
            str(c["slices"]),
        ]
    verdict = res["verdict"]
    assert verdict["passed"] is False
    assert 'class="verdict fail"' in html and ">FAIL<" in html
    assert f"Worst FNAF attack rate: {_pct(verdict['worst']['attack_rate'])}" in html
    assert f"of {_pct(verdict['max_attack_rate'])}" in html


def test_transfer_tables_match(audit):
    _, res, html = audit
    found = tables(html)
    names = [m["name"] for m in res["models"]]
    assert "all" not in res["transfer"]  # no row pools attacks over the same slices
    for key, sources in res["transfer"].items():
        rows = found[f"transfer:{key}"]
        assert rows[0][1] == ["source \\ target", *names]
        for _, cells in rows[1:]:
            src = cells[0]
            for tgt, text in zip(names, cells[1:], strict=True):
                if src == tgt:
                    assert text == "—"
                    continue
                c = sources[src][tgt]
                u, o = c["unconditional"], c["own"]
                assert text == (
                    f"{_rate_text(c['conditional'])} source hits all source features: "
                    f"{_pct(u['value'])} ({u['count']}/{u['total']}) · target's own: "
                    f"{_pct(o['value'])} ({o['count']}/{o['total']})"
                )


def _text(html: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", "", html)).split())


def test_methodology_states_config(audit):
    _, res, html = audit
    cfg = res["config"]
    text = _text(html)
    assert "This audit used the criterion erasure: hit when the erasure" in text
    assert f"here δ = {cfg['margin']:g}" in text and f"here r_min = {cfg['min_recovery']:g}" in text
    assert f"here τ = {cfg['threshold']:g}" in text and f"here ε = {cfg['ip_epsilon']:g}" in text
    for definition in (
        "r = ΣS (m(x+d) − m(x))·d / ΣS d²",
        "r₀ = ΣS (z(x+d) − z(x))·d / ΣS d²",
        "e = r₀ − r",
        "ρ = ‖M F d‖² / ‖F d‖²",
        "L = Σp∈Ω (recon′p − t′p)² / 320²",
        "D = Σp (N(zf(x′)) − N(zf(x)))² / 320²",
        "IP: r₀ ≥ r₀_min = 0.1",
        "repeats the same K-candidate search with no feature inserted",
        "Selection never depends on the hit thresholds",
        "100% of slices at 160×160 and 0% at 320×320",
        "equals MIDL 2020 at 320×320",
        "Table 2 are only meaningful with --criterion paper on 320×320 data",
    ):
        assert definition in text, definition
    assert "(used here)" in text and 'id="criterion-erasure" class="used"' in html
    assert f"evaluates {cfg['candidates']} candidate features" in text
    assert f"random walk of {cfg['feature_steps']} steps" in text
    assert "centre fraction 0.08 (fastMRI default for 4×)" in text
    assert "Wilson" in text and "mri-audit report results.json" in text
    assert all(m["weights_sha256"] in text for m in res["models"])


def test_rerender_is_identical(audit, tmp_path):
    results, _, html = audit
    again = render_report(results.parent, tmp_path / "again.html").read_text(encoding="utf-8")
    assert tables(again) == tables(html)
    assert again == html


def test_user_strings_are_escaped(tmp_path):
    results = build_audit_folder(tmp_path, models=(EVIL, 'v$a$r "net" & <b>'), slices=2)
    html = render_report(results).read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower()
    assert "<b>" not in html and "&lt;b&gt;" in html


def test_self_contained(audit):
    _, _, html = audit
    for attr, value in re.findall(r"""\b(src|href|action|srcset)\s*=\s*["']?([^"'\s>]*)""", html):
        assert value.startswith("data:image/png;base64," if attr == "src" else "#"), (attr, value)
    assert not re.search(r"(?i)url\(|@import|<link|<iframe|<object|<embed|<script", html)
    assert "default-src 'none'" in html


def test_figures_are_valid_pngs(audit):
    import matplotlib.image as mpimg
    from PIL import Image

    _, res, html = audit
    images = data_uris(html)
    # heatmaps, losses, scatter, curves, distributions, transfer, one panel per worst case
    assert len(images) == RECORD_FIGURES + 1 + len(res["worst_cases"])
    assert len(re.findall(r'<img src="data:image/png;base64,[^"]+" alt="[^"]+">', html)) == len(
        images
    )
    for png in images:
        assert png.startswith(PNG_SIGNATURE)
        with Image.open(io.BytesIO(png)) as im:
            im.verify()
        arr = mpimg.imread(io.BytesIO(png), format="png")
        assert arr.ndim == 3 and arr.shape[0] > 100 and arr.shape[1] > 100


def test_missing_records_and_images_are_noted(tmp_path):
    results = build_audit_folder(tmp_path, models=("solo",), records=False, images=False)
    html = render_report(results).read_text(encoding="utf-8")
    assert "records.csv was not found" in html and "audit_images.npz was not found" in html
    assert "Only one model was audited" in html
    assert data_uris(html) == []
    assert "attack-table" in html


def test_no_threshold_and_pass(tmp_path):
    html = render_report(build_audit_folder(tmp_path / "a", max_attack_rate=None, **LIGHT))
    assert ">NO THRESHOLD<" in html.read_text(encoding="utf-8")
    html = render_report(build_audit_folder(tmp_path / "b", max_attack_rate=0.99, **LIGHT))
    assert 'class="verdict pass"' in html.read_text(encoding="utf-8")


def test_cli_renders(tmp_path):
    build_audit_folder(tmp_path / "audit", **LIGHT)
    result = CliRunner().invoke(
        report, [str(tmp_path / "audit"), "--out", str(tmp_path / "r.html")]
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "results file not found"),
        ("{not json", "is not valid JSON"),
        (json.dumps({"schema_version": 99}), "schema_version 99"),
        (json.dumps([1, 2]), "not an mri-audit results file"),
    ],
)
def test_cli_bad_results(tmp_path, content, message):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(report, [str(path)])
    assert result.exit_code == DataError.exit_code
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
    assert not (tmp_path / "report.html").exists()


def headless(chromium: str, tmp_path) -> list[str]:
    """Headless Chromium's command with a profile of its own and nothing reaching a network
    (shared by the browser and print tests)."""
    return [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHECKER = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e.type)), true);
const __ce = console.error;
console.error = (...a) => { window.__errors.push(a.map(String).join(" ")); __ce(...a); };
window.addEventListener("load", () => {
  const images = [...document.images].map(i => i.complete && i.naturalWidth > 0);
  const width = document.documentElement.scrollWidth, viewport = window.innerWidth;
  document.title = "CHECK:" + JSON.stringify({images, errors: window.__errors, width, viewport});
});
</script>"""


@pytest.mark.browser
def test_report_in_headless_chromium(audit, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium or chromium-browser binary on PATH (apt-get install chromium)")
    results, res, html = audit
    # Test copy: the report's CSP forbids scripts, so allow inline ones for the checker only.
    checked = html.replace("script-src 'none'", "script-src 'unsafe-inline'")
    checked = checked.replace("<head>", "<head>\n" + CHECKER, 1)
    page = tmp_path / "checked.html"
    page.write_text(checked, encoding="utf-8")
    base = headless(chromium, tmp_path)
    run = subprocess.run(
        [
            *base,
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            "--window-size=900,1200",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    title = re.search(r"<title>CHECK:(.*?)</title>", run.stdout, re.S)
    assert title, "the checker did not run: " + run.stdout[:500]
    summary = json.loads(unescape(title.group(1)))
    assert summary["errors"] == []
    assert len(summary["images"]) == RECORD_FIGURES + 1 + len(res["worst_cases"])
    assert all(summary["images"]), summary["images"]
    # readable at 900 px: nothing makes the page scroll sideways (wide tables scroll in place)
    assert summary["viewport"] == 900 and summary["width"] <= 900, summary
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report_top.png"
    shot.unlink(missing_ok=True)
    run = subprocess.run(
        [
            *base,
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1280,1600",
            (results.parent / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert shot.read_bytes().startswith(PNG_SIGNATURE)
    # A worst case as a reader sees it at 900 px: the report with every other section hidden.
    only = "<style>header.top, nav.toc, section:not(#worst) { display: none; }</style></head>"
    worst = tmp_path / "worst.html"
    worst.write_text(html.replace("</head>", only, 1), encoding="utf-8")
    shot = ARTIFACTS / "report_worst_case.png"
    shot.unlink(missing_ok=True)
    run = subprocess.run(
        [*base, "--hide-scrollbars", f"--screenshot={shot}", "--window-size=900,1300"]
        + [worst.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert shot.read_bytes().startswith(PNG_SIGNATURE)


def test_heatmap_without_images_uses_blank_backdrop(tmp_path):
    results = build_audit_folder(tmp_path, images=False, slices=2)
    html = render_report(results).read_text(encoding="utf-8")
    assert "audit_images.npz was not found" in html
    # the record figures and transfer; no worst-case panels
    assert len(data_uris(html)) == RECORD_FIGURES + 1
    assert "Images of this case are not available." in html


def test_no_fnaf_attack_result(tmp_path):
    results = build_audit_folder(tmp_path, records=False, images=False, slices=2)
    res = json.loads(results.read_text())
    res["attacks"] = {m: {"kspace-pgd": a["kspace-pgd"]} for m, a in res["attacks"].items()}
    res["verdict"].update(worst=None, passed=None, status="none")
    res["transfer"], res["worst_cases"] = {}, []
    results.write_text(json.dumps(res))
    html = render_report(results).read_text(encoding="utf-8")
    assert ">NO RESULT<" in html and "No hits to replay" in html
    assert "No FNAF feature was found" in html


# ------------------------------------------------------------------ criteria and re-reading


def test_paper_audit_shows_control(tmp_path):
    results = build_audit_folder(tmp_path, criterion="paper", slices=2, images=False)
    res = json.loads(results.read_text())
    html = render_report(results).read_text(encoding="utf-8")
    rows = {(a["data-model"], a["data-attack"]): c for a, c in tables(html)["attack-table"] if a}
    for (model, attack), cells in rows.items():
        agg = res["attacks"][model][attack]
        if agg["kind"] != "fnaf":
            continue
        assert agg["criterion"] == "paper"
        assert cells[5] == f"{agg['score']['mean']:.2e}"
        assert cells[9] == _rate_text(agg["control_rate"])
        assert cells[10] == f"{agg['control_loss']['mean']:.2e}"
    assert "Mean control L" in html and "This audit used the criterion paper" in _text(html)
    assert 'id="criterion-paper" class="used"' in html
    assert len(data_uris(html)) == RECORD_FIGURES + 1  # histograms show the control


def _journal(results: Path) -> list[dict]:
    from mri_audit.audit.journal import Journal

    return [r for r in Journal(results.parent / "records.jsonl").read() if r["kind"] != "header"]


def _one_error(result, code: int, message: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines


@pytest.fixture(scope="module")
def reread(tmp_path_factory) -> tuple[Path, object]:
    results = build_audit_folder(tmp_path_factory.mktemp("reread"), slices=2, images=False)
    return results, CliRunner().invoke(report, [str(results), "--criterion", "recovery"])


def test_reread_recounts_from_the_journal(reread):
    from mri_audit.audit.aggregates import aggregate
    from mri_audit.files import to_jsonable
    from mri_audit.fnaf.criteria import make_criterion

    results, result = reread
    assert result.exit_code == 0, result.output
    folder = results.parent
    lines = result.output.strip().splitlines()
    assert lines[-2:] == [
        f"Wrote {folder / 'results.recovery.json'}",
        str(folder / "report.recovery.html"),
    ]
    assert "admissible" in result.output and "fnaf-pgd" in result.output
    stored, new = (
        json.loads(results.read_text()),
        json.loads((folder / "results.recovery.json").read_text()),
    )
    crit = make_criterion("recovery", min_recovery=0.5)
    fresh = json.loads(
        json.dumps(
            to_jsonable(
                aggregate(_journal(results), criterion=crit, max_attack_rate=0.1, primary="unet")
            )
        )
    )
    for key in ("clean", "attacks", "verdict", "failures"):
        assert new[key] == fresh[key], key
    assert new["transfer"] == {} and stored["transfer"]
    assert new["reread_from"] == "erasure" and new["config"]["criterion"] == "recovery"
    assert new["verdict"]["criterion"] == "recovery" and new["worst_cases"] == stored["worst_cases"]
    assert new["files"]["report"] == "report.recovery.html"
    assert {k: v for k, v in new["config"].items() if k != "criterion"} == {
        k: v for k, v in stored["config"].items() if k != "criterion"
    }


def test_reread_report(reread):
    results, _ = reread
    folder = results.parent
    html = (folder / "report.recovery.html").read_text(encoding="utf-8")
    new = json.loads((folder / "results.recovery.json").read_text())
    rows = {(a["data-model"], a["data-attack"]): c for a, c in tables(html)["attack-table"] if a}
    for (model, attack), cells in rows.items():
        agg = new["attacks"][model][attack]
        if agg["kind"] == "fnaf":
            assert cells[3] == _rate_text(agg["attack_rate"])
            assert cells[5:] == [f"{agg[q]['mean']:.3f}" for q in ("score", "r", "r0", "e")]
    text = _text(html)
    assert "ran under the criterion erasure; this report reads its stored records under" in text
    assert "so its re-read equals a fresh audit under recovery" in text
    assert "fnaf-fd and fnaf-pgd searched under erasure" in text
    assert "the best recovery selection among the candidates that search evaluated" in text
    assert "The worst-case panels are the erasure selections" in text
    assert "Transfer is omitted in this re-read" in text and "transfer:" not in " ".join(
        tables(html)
    )
    assert "re-reads its records under the criterion recovery" in text
    # the re-read results re-render to the same report, and the audit's own report is untouched
    from mri_audit.audit.reread import render_reread

    again = render_reread(folder / "results.recovery.json", folder / "again.html")
    assert again.read_text(encoding="utf-8") == html
    assert not (folder / "report.html").exists()


def test_reread_thresholds_of_the_same_criterion(tmp_path):
    results = build_audit_folder(tmp_path, **LIGHT)
    result = CliRunner().invoke(report, [str(results), "--margin", "0.25"])
    assert result.exit_code == 0, result.output
    new = json.loads((tmp_path / "results.erasure.json").read_text())
    assert new["config"]["margin"] == 0.25 and new["verdict"]["margin"] == 0.25
    for model, by in new["attacks"].items():
        for attack, agg in by.items():
            if agg["kind"] != "fnaf":
                continue
            rows = [r for r in _journal(results) if (r["model"], r["attack"]) == (model, attack)]
            hits = sum(r["found"] and min(r["e"], r["r0"]) >= 0.25 for r in rows)
            assert agg["attack_rate"]["count"] == hits and agg["attack_rate"]["total"] == len(rows)
    assert new["transfer"]  # same criterion: the replays are kept, their hits re-derived
    html = (tmp_path / "report.erasure.html").read_text(encoding="utf-8")
    assert "every number here equals a fresh audit with these thresholds" in _text(html)
    assert "here δ = 0.25" in _text(html)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--criterion", "nope"],
            "--criterion must be one of 'erasure', 'recovery', 'paper', got 'nope'",
        ),
        (["--criterion", "erasure", "--margin", "0"], "--margin must be a number in (0, 1]"),
        (
            ["--margin", "1.5"],
            "must be a number in (0, 1] (a share of the feature's contrast), got '1.5'",
        ),
        (["--margin", "nan"], "must be a number in (0, 1]"),
        (["--criterion", "paper", "--margin", "0.2"], "--margin applies to --criterion erasure"),
        (["--criterion", "recovery", "--min-recovery", "0"], "--min-recovery"),
        (["--criterion", "paper", "--threshold", "-1"], "--threshold must be a number >= 0"),
    ],
)
def test_reread_usage_errors(tmp_path, args, message):
    results = build_audit_folder(tmp_path, **LIGHT)
    before = sorted(p.name for p in tmp_path.iterdir())
    _one_error(CliRunner().invoke(report, [str(results), *args]), 2, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_reread_criterion_the_records_lack(tmp_path):
    results = build_audit_folder(tmp_path, **LIGHT)
    journal = tmp_path / "records.jsonl"
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    for r in lines:
        (r.get("criteria") or {}).pop("paper", None)
    # Re-linked as a forger would: the check behind the hash chain answers.
    journal.write_text(rechain([json.dumps(r) + "\n" for r in lines]))
    result = CliRunner().invoke(report, [str(results), "--criterion", "paper"])
    _one_error(result, 2, "hold no 'paper' selection")
    assert not (tmp_path / "results.paper.json").exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", "records.jsonl was not found"),
        ("corrupt", "records.jsonl line 3: is not valid JSON (a torn or edited line)"),
        ("foreign", "belongs to another audit than results.json (configuration differs in seed)"),
        ("edited", "records.jsonl line 3: does not link to the line before it: line 2 was edited"),
    ],
)
def test_reread_journal_missing_or_corrupt(tmp_path, damage, message):
    results = build_audit_folder(tmp_path, **LIGHT)
    journal = tmp_path / "records.jsonl"
    if damage == "missing":
        journal.unlink()
    elif damage == "foreign":
        lines = [json.loads(line) for line in journal.read_text().splitlines()]
        lines[0]["config"]["seed"] = 7
        journal.write_text(rechain([json.dumps(r) + "\n" for r in lines]))  # re-linked
    elif damage == "edited":  # one number of line 2 edited by hand, its link kept
        lines = [json.loads(line) for line in journal.read_text().splitlines()]
        lines[1]["r"] = 0.5
        journal.write_text("".join(json.dumps(r) + "\n" for r in lines))
    else:
        lines = journal.read_text().splitlines()
        lines[2] = lines[2][: len(lines[2]) // 2]
        journal.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(report, [str(results), "--criterion", "paper"])
    _one_error(result, DataError.exit_code, message)
    assert not (tmp_path / "results.paper.json").exists()


@pytest.mark.slow  # end to end, > 15 s on 2 cores
def test_reread_real_audit_equals_fresh_audit(tmp_path):
    """A real audit re-read under `paper` gives fnaf-rs the numbers of a fresh `paper` audit."""
    import torch

    from mri_audit.cli import cli
    from tests.fixtures.models.tiny_image import TinyImageNet

    torch.manual_seed(0)
    weights = tmp_path / "tiny.pt"
    torch.save(TinyImageNet().state_dict(), weights)
    root = Path(__file__).parent.parent
    common = [
        "run",
        "--model",
        f"{root / 'tests/fixtures/models/tiny_image.py'}:TinyImageNet",
        "--weights",
        str(weights),
        "--compare",
        f"{root / 'examples/zero_filled.py'}:ZeroFilled",
        "--max-volumes",
        "1",
        "--max-slices",
        "2",
        "--attacks",
        "fnaf-rs",
        "--candidates",
        "4",
        "--no-progress",
    ]
    runner = CliRunner()
    for name, extra in (("erasure", []), ("paper", ["--criterion", "paper"])):
        result = runner.invoke(cli, [*common, *extra, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    audit = json.loads((tmp_path / "erasure" / "results.json").read_text())
    zero = audit["attacks"]["zero_filled.py:ZeroFilled"]["fnaf-rs"]["attack_rate"]
    assert zero["value"] == 0 and zero["total"] == 2
    result = runner.invoke(cli, ["report", str(tmp_path / "erasure"), "--criterion", "paper"])
    assert result.exit_code == 0, result.output
    assert "fnaf-rs" in result.output and "Re-read under paper without recomputing" in result.output
    reread = json.loads((tmp_path / "erasure" / "results.paper.json").read_text())
    fresh = json.loads((tmp_path / "paper" / "results.json").read_text())
    for key in ("clean", "attacks", "verdict", "failures"):
        assert reread[key] == fresh[key], key
    assert reread["config"] == fresh["config"] and reread["reread_from"] == "erasure"
    html = (tmp_path / "erasure" / "report.paper.html").read_text(encoding="utf-8")
    assert "so its re-read equals a fresh audit under paper" in _text(html)
    assert "searched under erasure" not in _text(html)  # only fnaf-rs ran
    _one_error(
        runner.invoke(cli, ["report", str(tmp_path / "erasure"), "--criterion", "x"]),
        2,
        "--criterion must be one of 'erasure', 'recovery', 'paper', got 'x'",
    )


# ------------------------------------------------- per volume, thresholds, worst cases (issue 13)


def _records(results: Path):
    import pandas as pd

    from mri_audit.report.records_csv import spreadsheet_unsafe
    from mri_audit.report.sections import frame_groups

    frame = pd.read_csv(results.parent / "records.csv", dtype={"volume": str})
    return frame_groups(spreadsheet_unsafe(frame))


def test_per_volume_table_recounts_records(audit):
    results, res, html = audit
    rows = tables(html)["volume-table"]
    groups = _records(results)
    cells = {}
    for attrs, texts in rows[2:]:
        if attrs.get("data-volume"):
            cells[attrs["data-volume"]] = texts[1:]
    columns = [(m["name"], a) for m in res["models"] for a in FNAF_ATTACKS]
    assert rows[1][1] == list(FNAF_ATTACKS) * 2
    volumes = sorted({v for g in groups.values() for v in g["volume"]})
    assert sorted(cells) == volumes and len(volumes) == 3
    for volume, texts in cells.items():
        for (model, attack), text in zip(columns, texts, strict=True):
            g = groups[(model, attack)]
            g = g[g["volume"] == volume]
            assert text == f"{int(g['hit'].sum())}/{len(g)} ({g['hit'].sum() / len(g):.0%})"
    total = rows[-1][1][1:]
    for (model, attack), text in zip(columns, total, strict=True):
        agg = res["attacks"][model][attack]["attack_rate"]
        assert text.startswith(f"{agg['count']}/{agg['total']} ")


def test_rate_curve_is_exact(audit):
    from mri_audit.fnaf.criteria import make_criterion
    from mri_audit.report.curves import rate_curve, threshold_grid

    results, res, _ = audit
    groups = _records(results)
    crit = make_criterion("erasure", margin=res["config"]["margin"])
    for (model, attack), g in groups.items():
        grid = threshold_grid(crit, g["score"].to_numpy())
        assert grid[0] == 0 and grid[-1] == 1 and res["config"]["margin"] in grid
        curve = rate_curve(g, crit, grid)
        agg = res["attacks"][model][attack]["attack_rate"]
        assert curve[list(grid).index(res["config"]["margin"])] == agg["count"] / agg["total"]
        for margin in (0.05, 0.25, 1.0):
            other = make_criterion("erasure", margin=margin)
            q = {k: __import__("torch").tensor(g[k].to_numpy()) for k in ("r", "r0", "e")}
            hits = (other.hit(q).numpy() & g["found"].to_numpy()).sum()
            assert rate_curve(g, crit, [margin])[0] == hits / len(g)
        assert all(a >= b for a, b in zip(curve, curve[1:], strict=False))  # never rises


@pytest.mark.parametrize("criterion", ["recovery", "paper"])
def test_rate_curve_other_criteria(tmp_path, criterion):
    from mri_audit.fnaf.criteria import criterion_of
    from mri_audit.report.curves import THRESHOLD, rate_curve, threshold_grid

    results = build_audit_folder(tmp_path, criterion=criterion, slices=2, images=False)
    res = json.loads(results.read_text())
    crit = criterion_of(res["config"])
    used = crit.params()[THRESHOLD[criterion]]
    for (model, attack), g in _records(results).items():
        grid = threshold_grid(crit, g["loss"].to_numpy())
        assert used in grid and (criterion != "paper" or grid[0] > 0)
        agg = res["attacks"][model][attack]["attack_rate"]
        assert rate_curve(g, crit, [used])[0] == agg["count"] / agg["total"]


def test_worst_cases_across_attacks_with_disagreement(audit):
    results, res, html = audit
    cases = res["worst_cases"]
    assert len(cases) == 6 and len({(c["volume"], c["slice"]) for c in cases}) == 6
    assert len({c["attack"] for c in cases if c["why"] == "worst"}) == len(FNAF_ATTACKS)
    groups = _records(results)
    disagree = [c for c in cases if c["why"] == "disagree"]
    assert disagree
    for c in disagree:
        g = groups[(c["model"], c["attack"])]
        row = g[(g["volume"] == c["volume"]) & (g["slice"] == c["slice"])].iloc[0]
        others = [k for k in row.index if k.startswith("transfer_hit:") and str(row[k]) != "nan"]
        assert any((str(row[k]).lower() == "true") != bool(row["hit"]) for k in others)
    assert html.count('case-models"') == len(cases)
    assert "models disagree" in html


def test_header_names_weights(audit):
    _, res, html = audit
    header = html[html.index('id="header-weights"') : html.index("</header>")]
    for m in res["models"]:
        assert Path(m["weights"]).name in header and m["weights_sha256"] in header


def _case_images(n_models: int = 2, size: int = 96):
    rng = np.random.default_rng(1)
    truth = rng.uniform(0.2, 0.8, (size, size)).astype(np.float32)
    rows, cols = [40, 40, 41, 42, 42, 43, 43, 44, 45, 45], [50, 51, 51, 51, 52, 52, 53, 53, 53, 54]
    images = [("zero-filled", truth * 0.9), ("ground truth", truth)]
    images += [(f"model {j}\nr = 0.5", truth * (1 - 0.1 * j)) for j in range(n_models)]
    return images, rows, cols


def test_worst_case_ticks_beside_the_feature():
    """The corner ticks never cover a feature pixel: in data units and as drawn."""
    from matplotlib.collections import LineCollection

    from mri_audit.report.figures import feature_ticks, worst_case_figure

    images, rows, cols = _case_images()
    ticks = feature_ticks(rows, cols)
    assert ticks.shape == (8, 2, 2)
    for r, c in zip(rows, cols, strict=True):  # pixel (r, c) spans [c ± ½] × [r ± ½]
        gx = np.maximum(
            0, np.maximum(ticks[..., 0].min(1) - (c + 0.5), (c - 0.5) - ticks[..., 0].max(1))
        )
        gy = np.maximum(
            0, np.maximum(ticks[..., 1].min(1) - (r + 0.5), (r - 0.5) - ticks[..., 1].max(1))
        )
        assert np.hypot(gx, gy).min() >= 1.5
    fig, zooms = worst_case_figure(images, rows=rows, cols=cols)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    height = rgba.shape[0]
    for ax in zooms:
        (lines,) = [c for c in ax.collections if isinstance(c, LineCollection)]
        half_width = lines.get_linewidth()[0] * fig.dpi / 72 / 2
        segments = [ax.transData.transform(seg) for seg in lines.get_segments()]
        for r, c in zip(rows, cols, strict=True):
            (x0, y0), (x1, y1) = ax.transData.transform([(c - 0.5, r + 0.5), (c + 0.5, r - 0.5)])
            for seg in segments:
                gx = max(0, seg[:, 0].min() - x1, x0 - seg[:, 0].max())
                gy = max(0, seg[:, 1].min() - y1, y0 - seg[:, 1].max())
                assert np.hypot(gx, gy) > half_width + 1, (r, c)
            # as drawn: every screen pixel inside the feature's pixel is grey, not the marker's
            box = rgba[
                round(height - y1) + 1 : round(height - y0) - 1, round(x0) + 1 : round(x1) - 1
            ]
            assert box.size and np.abs(box[..., 0] - box[..., 2]).max() <= 2, (r, c)
        # the zoom shows the feature large: each of its pixels at least 5 screen pixels wide
        assert x1 - x0 >= 5
