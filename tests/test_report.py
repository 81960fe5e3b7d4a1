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

import pytest
from click.testing import CliRunner

from mri_audit.cli.report_cmd import report
from mri_audit.errors import DataError
from mri_audit.report import render_report
from tests.report_fixture import FNAF_ATTACKS, build_audit_folder

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert(1)</script>"
LIGHT = {"slices": 2, "records": False, "images": False}  # no figures: fast
ARTIFACTS = Path(__file__).parent / "artifacts"


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
        "locations",
        "losses",
        "loss-ip",
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
            assert cells[3] == _rate_text(agg["attack_rate"])
            assert cells[4] == _rate_text(agg["ip_acceptance"])
            assert cells[5] == _rate_text(agg["control_rate"])
            loss = agg["loss"]
            assert cells[6:10] == [f"{loss[k]:.2e}" for k in ("mean", "q05", "q50", "q95")]
            assert cells[10] == f"{agg['ip_distance']['mean']:.2e}"
            assert cells[11] == f"{agg['rho']['mean']:.3f}"
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
    for key, sources in res["transfer"].items():
        title = "all FNAF attacks" if key == "all" else key
        rows = found[f"transfer:{title}"]
        assert rows[0][1] == ["source \\ target", *names]
        for _, cells in rows[1:]:
            src = cells[0]
            for tgt, text in zip(names, cells[1:], strict=True):
                assert text == ("—" if src == tgt else _rate_text(sources[src][tgt]))


def test_methodology_states_config(audit):
    _, res, html = audit
    cfg = res["config"]
    text = unescape(re.sub(r"<[^>]+>", "", html))
    assert f"τ = {cfg['threshold']:g}" in text and f"ε = {cfg['ip_epsilon']:g}" in text
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
    # heatmaps, losses, scatter, transfer, one panel per worst case
    assert len(images) == 4 + len(res["worst_cases"])
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


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHECKER = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e.type)), true);
const __ce = console.error;
console.error = (...a) => { window.__errors.push(a.map(String).join(" ")); __ce(...a); };
window.addEventListener("load", () => {
  const images = [...document.images].map(i => i.complete && i.naturalWidth > 0);
  document.title = "CHECK:" + JSON.stringify({images: images, errors: window.__errors});
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
    base = [
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
    run = subprocess.run(
        [
            *base,
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
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
    assert len(summary["images"]) == 4 + len(res["worst_cases"])
    assert all(summary["images"]), summary["images"]
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


def test_heatmap_without_images_uses_blank_backdrop(tmp_path):
    results = build_audit_folder(tmp_path, images=False, slices=2)
    html = render_report(results).read_text(encoding="utf-8")
    assert "audit_images.npz was not found" in html
    # heatmaps, losses, scatter and transfer; no worst-case panels
    assert len(data_uris(html)) == 4
    assert "Images of this case are not available." in html


def test_no_fnaf_attack_result(tmp_path):
    results = build_audit_folder(tmp_path, records=False, images=False, slices=2)
    res = json.loads(results.read_text())
    res["attacks"] = {m: {"kspace-pgd": a["kspace-pgd"]} for m, a in res["attacks"].items()}
    res["verdict"].update(worst=None, passed=None)
    res["transfer"], res["worst_cases"] = {}, []
    results.write_text(json.dumps(res))
    html = render_report(results).read_text(encoding="utf-8")
    assert ">NO RESULT<" in html and "No hits to replay" in html
    assert "No FNAF feature was found" in html
