"""The report printed to PDF from headless Chromium (what a vendor attaches to a submission).

Both reports (an audit's and a map's) are printed with ``--print-to-pdf`` and read back with
pypdf. Chromium draws only what is visible, so a table wider than the page shows in two ways: its
glyphs cross the right margin (an overflowing table), or its glyphs are missing from the PDF (a
table clipped by a scroll box). Both are checked: every glyph's right edge, computed from the
text matrix, the font size and the embedded font's advance widths, lies within the page's width
less the ``@page`` margin, and every cell of every table is in the PDF's text, in order. Also:
each figure is painted once (not split over two pages), no page ends with a section heading, and
the verdict and the journal's chain head are on page 1. A control prints the report with the
screen stylesheet alone, whose scroll box cuts the attack table off, and expects the check to
fail.

The chain head is put into the report's context here (``evidence``), so that the test does not
depend on how the audit computes it.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from pypdf import PdfReader
from pypdf.generic import ContentStream, IndirectObject

from mri_audit.cli import cli
from mri_audit.report.html import build_context, load_audit, render_html, render_report
from tests.report_fixture import build_audit_folder
from tests.test_report import _chromium, headless

pytestmark = pytest.mark.browser

MM = 72 / 25.4  # PDF points per millimetre
SLACK = 0.5  # points: Chromium rounds the margin to whole CSS px (12 mm: 45 px = 33.75 pt)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MAP = ["--max-volumes", "1", "--max-slices", "1", "--shapes", "disk,line", "--sizes", "disk=1,4",
       "--sizes", "line=4,20", "--contrasts", "0.2,1", "--draws", "1", "--no-progress"]  # fmt: skip
HEAD = "3b9c" * 16  # a made-up journal chain head (64 hex digits)
EVIDENCE = {"lines": 145, "head": HEAD, "folder": "audit-out"}


# ------------------------------------------------------------------------------ printing


def _print(chromium: str, html: Path, tmp_path: Path) -> PdfReader:
    """Print ``html`` to a PDF beside it (Chromium's default paper, no header or footer)."""
    pdf = html.with_suffix(".pdf")
    run = subprocess.run(
        [
            *headless(chromium, tmp_path),
            "--no-pdf-header-footer",
            f"--print-to-pdf={pdf}",
            html.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and pdf.is_file(), run.stderr[-2000:]
    return PdfReader(pdf)


def _page_margin(html: str) -> float:
    """The report's ``@page`` margin, in points (one length, millimetres)."""
    found = re.search(r"@page\s*\{\s*margin:\s*([\d.]+)mm;?\s*\}", html)
    assert found, "the report sets no @page { margin: ...mm } for print"
    return float(found.group(1)) * MM


# ------------------------------------------------------------------ glyph positions in a PDF


def _mul(a: list[float], b: list[float]) -> list[float]:
    """The product a·b of two PDF matrices [a b c d e f]."""
    return [
        a[0] * b[0] + a[1] * b[2],
        a[0] * b[1] + a[1] * b[3],
        a[2] * b[0] + a[3] * b[2],
        a[2] * b[1] + a[3] * b[3],
        a[4] * b[0] + a[5] * b[2] + b[4],
        a[4] * b[1] + a[5] * b[3] + b[5],
    ]


def _hex_text(hex_digits: str) -> str:
    return bytes.fromhex(hex_digits).decode("utf-16-be", errors="replace")


def _unicode(font) -> dict[int, str]:
    """The font's ToUnicode map: character code to text."""
    cmap = font.get("/ToUnicode")
    if cmap is None:
        return {}
    data = cmap.get_object().get_data().decode("latin-1")
    out: dict[int, str] = {}
    for block in re.findall(r"beginbfchar(.*?)endbfchar", data, re.S):
        for src, dst in re.findall(r"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]*)>", block):
            out[int(src, 16)] = _hex_text(dst)
    for block in re.findall(r"beginbfrange(.*?)endbfrange", data, re.S):
        ranges = r"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>\s*(<[0-9A-Fa-f]*>|\[[^\]]*\])"
        for lo, hi, dst in re.findall(ranges, block):
            lo, hi = int(lo, 16), int(hi, 16)
            if dst.startswith("["):
                for k, item in enumerate(re.findall(r"<([0-9A-Fa-f]*)>", dst)):
                    out[lo + k] = _hex_text(item)
            else:
                first = int(dst[1:-1], 16)
                width = len(dst[1:-1]) // 2
                for k in range(hi - lo + 1):
                    out[lo + k] = _hex_text(format(first + k, f"0{2 * width}x"))
    return out


def _font(font) -> tuple[int, dict[int, float], float, dict[int, str]]:
    """(bytes per code, advance width by code, default width, text by code) of a font; widths
    in 1/1000 em."""
    font = font.get_object()
    if font["/Subtype"] == "/Type0":
        assert font.get("/Encoding") == "/Identity-H", font.get("/Encoding")
        cid = font["/DescendantFonts"][0].get_object()
        widths: dict[int, float] = {}
        w = list(cid.get("/W") or [])
        i = 0
        while i < len(w):
            first = int(w[i])
            if isinstance(w[i + 1], list):
                for k, v in enumerate(w[i + 1]):
                    widths[first + k] = float(v)
                i += 2
            else:
                for c in range(first, int(w[i + 1]) + 1):
                    widths[c] = float(w[i + 2])
                i += 3
        return 2, widths, float(cid.get("/DW", 1000)), _unicode(font)
    assert font["/Subtype"] in ("/TrueType", "/Type1"), font["/Subtype"]
    first = int(font.get("/FirstChar", 0))
    widths = {first + k: float(v) for k, v in enumerate(font.get("/Widths") or [])}
    missing = float((font.get("/FontDescriptor") or {}).get("/MissingWidth", 0))
    return 1, widths, missing, {c: chr(c) for c in range(256)} | _unicode(font)


@dataclass
class Printed:
    """What one PDF page draws: each glyph but spaces, as (right edge x, baseline y, text) in
    page space, in painting order; and how many images."""

    glyphs: list[tuple[float, float, str]] = field(default_factory=list, repr=False)
    images: int = 0

    def lines(self) -> list[str]:
        """The text, a line per baseline change (painting order)."""
        out: list[list[str]] = []
        y = None
        for _, gy, char in self.glyphs:
            if y is None or abs(gy - y) > 1:
                out.append([])
            out[-1].append(char)
            y = gy
        return ["".join(line) for line in out]

    def bottom_line(self) -> str:
        """The text of the lowest baseline on the page."""
        low = min(y for _, y, _ in self.glyphs)
        return "".join(c for _, y, c in self.glyphs if abs(y - low) <= 1)


def read_page(reader, page) -> Printed:
    """A small interpreter of a page's content stream (and of the form XObjects it draws): the
    current transformation matrix, the text matrix and state, and the embedded fonts' advance
    widths and ToUnicode maps. A space is not kept: Chromium draws a line's trailing space,
    blank, past the line's end."""
    out = Printed()
    cache: dict[int, tuple] = {}

    def run(content, resources, ctm: list[float]) -> None:
        fonts = resources.get("/Font") or {}
        xobjects = resources.get("/XObject") or {}
        stack: list[list[float]] = []
        tm = tlm = [1.0, 0, 0, 1, 0, 0]
        font, size, tc, tw, th, tl, rise = None, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0

        def show(string) -> None:
            nonlocal tm
            data = string.original_bytes  # pypdf decodes some strings as text
            n, widths, default, text = font
            for k in range(0, len(data), n):
                code = int.from_bytes(data[k : k + n], "big")
                w = widths.get(code, default) / 1000
                trm = _mul([size * th, 0, 0, size, 0, rise], _mul(tm, ctm))
                char = text.get(code, "\ufffd")
                if not char.isspace():  # the glyph's origin and its advance, in page space
                    out.glyphs.append((max(trm[4], w * trm[0] + trm[4]), trm[5], char))
                space = tw if n == 1 and code == 32 else 0.0
                tm = _mul([1, 0, 0, 1, (w * size + tc + space) * th, 0], tm)

        for operands, op in ContentStream(content, reader).operations:
            op = op.decode("latin-1")
            args = [float(a) if isinstance(a, int | float) else a for a in operands]
            if op == "q":
                stack.append(ctm)
            elif op == "Q":
                ctm = stack.pop()
            elif op == "cm":
                ctm = _mul(args, ctm)
            elif op == "BT":
                tm = tlm = [1.0, 0, 0, 1, 0, 0]
            elif op == "Tf":
                ref = fonts.raw_get(operands[0])
                key = ref.idnum if isinstance(ref, IndirectObject) else id(ref)
                if key not in cache:
                    cache[key] = _font(ref)
                font, size = cache[key], args[1]
            elif op == "Tc":
                tc = args[0]
            elif op == "Tw":
                tw = args[0]
            elif op == "Tz":
                th = args[0] / 100
            elif op == "TL":
                tl = args[0]
            elif op == "Ts":
                rise = args[0]
            elif op in ("Td", "TD"):
                if op == "TD":
                    tl = -args[1]
                tm = tlm = _mul([1, 0, 0, 1, args[0], args[1]], tlm)
            elif op == "Tm":
                tm = tlm = args
            elif op in ("T*", "'", '"'):
                if op == '"':
                    tw, tc = args[0], args[1]
                tm = tlm = _mul([1, 0, 0, 1, 0, -tl], tlm)
                if op != "T*":
                    show(operands[-1])
            elif op == "Tj":
                show(operands[0])
            elif op == "TJ":
                for part in operands[0]:
                    if isinstance(part, int | float):
                        tm = _mul([1, 0, 0, 1, -float(part) / 1000 * size * th, 0], tm)
                    else:
                        show(part)
            elif op == "Do":
                xobject = xobjects[operands[0]].get_object()
                if xobject["/Subtype"] == "/Image":
                    out.images += 1
                elif xobject["/Subtype"] == "/Form":
                    matrix = [float(a) for a in xobject.get("/Matrix", [1, 0, 0, 1, 0, 0])]
                    run(xobject, xobject.get("/Resources") or resources, _mul(matrix, ctm))

    run(page.get_contents(), page["/Resources"], [1.0, 0, 0, 1, 0, 0])
    return out


# ------------------------------------------------------------------------------ HTML side


class _Html(HTMLParser):
    """Every table cell's text (tables inside a closed ``<details>`` apart), every heading's
    text and the number of ``<img>`` elements."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[str, str]] = []  # (table id, cell text)
        self.headings: list[str] = []
        self.images = 0
        self._table: str | None = None
        self._text: list[str] | None = None
        self._details = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "details" and "open" not in a:
            self._details += 1
        elif tag == "table":
            self._table = a.get("id") or a.get("data-attack") or "table"
        elif tag in ("td", "th", "h2", "h3") and (tag[0] == "h" or self._table):
            self._text = []
        elif tag == "img":
            self.images += 1

    def handle_endtag(self, tag):
        if tag == "details" and self._details:
            self._details -= 1
        elif tag == "table":
            self._table = None
        elif tag in ("td", "th", "h2", "h3") and self._text is not None:
            text = " ".join("".join(self._text).split())
            if tag[0] == "h":
                self.headings.append(text)
            elif text and not self._details:
                self.cells.append((self._table, text))
            self._text = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)


def _squash(text: str) -> str:
    """Text without whitespace, ligatures unfolded (the PDF's "ﬁ" is "fi")."""
    return "".join(unicodedata.normalize("NFKC", text).split())


# ------------------------------------------------------------------------------- checks


def check_print(html: str, reader) -> dict:
    """Assert that the printed report fits its pages; returns what was measured."""
    parsed = _Html()
    parsed.feed(html)
    pages = [read_page(reader, p) for p in reader.pages]
    # Nothing clipped away: every cell of every table is in the text, in document order.
    flat = _squash("".join(line for p in pages for line in p.lines()))
    at = 0
    for table, cell in parsed.cells:
        found = flat.find(_squash(cell), at)
        assert found >= 0, f"table {table}: cell {cell!r} is not in the PDF (cut off?)"
        at = found
    # Nothing overflows: every glyph ends left of the right margin.
    width = float(reader.pages[0].mediabox.width)
    limit = width - _page_margin(html) + SLACK
    glyphs = [(x, c, n) for n, p in enumerate(pages, 1) for x, _, c in p.glyphs]
    assert len(glyphs) > 1000, len(glyphs)
    over = sorted({(round(x, 1), c, n) for x, c, n in glyphs if x > limit}, reverse=True)
    assert not over, f"glyphs right of the margin x = {limit:.1f} pt (x, glyph, page): {over[:8]}"
    # Figures whole: each image painted once (a figure split by a page break is painted twice).
    assert sum(p.images for p in pages) == parsed.images
    # No page ends with a section heading.
    headings = {_squash(h) for h in parsed.headings}
    for n, p in enumerate(pages[:-1], 1):
        assert _squash(p.bottom_line()) not in headings, f"page {n} ends with {p.bottom_line()!r}"
    return {"pages": pages, "width": width, "limit": limit, "right": max(x for x, _, _ in glyphs)}


# ------------------------------------------------------------------------------- the tests


@pytest.fixture
def chromium() -> str:
    found = _chromium()
    if found is None:
        pytest.skip("no chromium or chromium-browser binary on PATH (apt-get install chromium)")
    return found


def test_audit_report_prints(chromium, tmp_path):
    # The widest attack table (criterion paper: control columns), two models, every figure;
    # one slice a volume, so three worst cases.
    results = build_audit_folder(tmp_path / "audit", criterion="paper", volumes=3, slices=1)
    context = build_context(load_audit(results)) | {"evidence": EVIDENCE}
    html = render_html(context)
    page = tmp_path / "audit" / "report.html"
    page.write_text(html, encoding="utf-8")
    pages = check_print(html, _print(chromium, page, tmp_path))["pages"]
    # Page 1: the verdict and the journal's chain head.
    first = _squash("".join(pages[0].lines()))
    verdict = context["verdict"]
    assert _squash(verdict["label"]) in first
    assert _squash(f"Worst FNAF attack rate: {verdict['rate']['value']}") in first
    assert _squash(f"Journal chain head: {HEAD[:16]}… ({EVIDENCE['lines']} lines)") in first
    assert _squash("check it with mri-audit verify audit-out") in first
    # The Reproduce section: the whole head and both verify commands.
    text = _squash("".join(line for p in pages for line in p.lines()))
    assert _squash(f"Journal chain head ({EVIDENCE['lines']} lines): {HEAD}") in text
    assert _squash("mri-audit verify audit-out --replay 5 --nonce TEXT re-runs 5 records") in text


def test_map_report_prints(chromium, tmp_path):
    out = tmp_path / "map"
    models = ["--model", str(EXAMPLES / "zero_filled.py") + ":ZeroFilled"]
    models += ["--compare", f"median={EXAMPLES / 'median_filter.py'}:MedianFilter"]
    result = CliRunner().invoke(cli, ["map", *models, *MAP, "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out / "report.html"
    check_print(page.read_text(encoding="utf-8"), _print(chromium, page, tmp_path))


def test_the_check_sees_a_table_cut_off(chromium, tmp_path):
    """The screen stylesheet alone scrolls the attack table in its box, which prints cut off at
    the right edge: the check must say so."""
    results = build_audit_folder(
        tmp_path / "light", criterion="paper", slices=2, records=False, images=False
    )
    html = render_report(results).read_text(encoding="utf-8")
    screen = re.sub(r"\n@media print \{.*?\n\}\n", "\n", html, count=1, flags=re.S)
    assert "@media print" not in screen
    page = tmp_path / "light" / "screen.html"
    page.write_text(screen, encoding="utf-8")
    with pytest.raises(AssertionError, match="table attack-table: cell .* is not in the PDF"):
        check_print(screen, _print(chromium, page, tmp_path))
