"""Reading ``docs/errors.md`` so that every example in it is run by a test.

Each table row of the document is a *case*: its first cell names it, its second gives the exit
status (``—`` where the case is not an error), and every backtick-quoted text in its third cell
is an *example* of what mri-audit prints. A test file covers a row with a scenario::

    @scenario("model file missing")
    def _(tmp_path):
        return [run_cli(["run", "--model", "x/net.py:Net"], cwd=tmp_path)]

and runs its scenarios with :func:`check_row`. A scenario returns one :class:`Outcome` per
example it exercises (or more); every example of the row must be found in one of them: the
example's text, split at ``...``, must appear piece by piece, in order, in the outcome's output
(whitespace folded), and the outcome's exit status must be the row's.
``tests/test_errors_doc.py`` checks that every row of the document has exactly one scenario.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
"""The CLI's console log format (``mri_audit.cli``)."""

SCENARIO_RE = re.compile(r'@scenario\(\s*"((?:[^"\\]|\\.)*)"', re.S)
"""How test files declare the rows they cover (read from their source by the coverage test)."""


class Row(NamedTuple):
    """One case of docs/errors.md."""

    section: str
    case: str
    status: int | None  # None: not an error (``—``)
    examples: tuple[str, ...]


class Outcome(NamedTuple):
    """What one scenario run printed (stdout and stderr together) and its exit status."""

    status: int | None
    output: str


def _cells(line: str) -> list[str]:
    """A markdown table row's cells; a ``|`` inside backticks belongs to the cell."""
    cells, current, quoted = [], [], False
    for ch in line.strip().strip("|"):
        if ch == "`":
            quoted = not quoted
        if ch == "|" and not quoted:
            cells.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    cells.append("".join(current).strip())
    return cells


def rows() -> list[Row]:
    """Every case row of docs/errors.md, in document order."""
    out, section = [], ""
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = _cells(line)
        if len(cells) < 3 or cells[0] in ("case", "status"):
            continue
        status = None if cells[1] in ("—", "-", "") else int(cells[1])
        examples = tuple(re.findall(r"`([^`]+)`", cells[2]))
        out.append(Row(section, cells[0], status, examples))
    return out


def row(case: str) -> Row:
    """The row whose first cell is ``case`` (exactly)."""
    found = [r for r in rows() if r.case == case]
    assert len(found) == 1, f"docs/errors.md has {len(found)} rows named {case!r}"
    return found[0]


def _fold(text: str) -> str:
    return " ".join(text.replace("\u2026", "...").split())


def found_in(example: str, output: str) -> bool:
    """Whether ``example`` (``...`` standing for any text) appears in ``output``."""
    text, pos = _fold(output), 0
    for piece in (p.strip() for p in _fold(example).split("...")):
        if not piece:
            continue
        at = text.find(piece, pos)
        if at < 0:
            return False
        pos = at + len(piece)
    return True


class SharedFiles:
    """Files several rows share, made on first use (a module-scoped folder; copy, don't edit).

    Subclasses add one method per file, each ``return self._once(name, make)``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[str, Path] = {}

    def _once(self, name: str, make) -> Path:
        if name not in self._made:
            self._made[name] = make(self.root / name)
        return self._made[name]


SCENARIOS: dict[str, Callable] = {}


def scenario(case: str) -> Callable[[Callable], Callable]:
    """Register ``func`` as the scenario of the row named ``case`` (in its test module)."""

    def register(func: Callable) -> Callable:
        SCENARIOS[case] = func
        return func

    return register


def cli_outcome(*args: str) -> Outcome:
    """Run ``mri-audit ARGS`` in this process (click's runner), with no traceback allowed.

    Run the CLI; its output, then what it logged as its console handler prints it (under
    pytest, whose handlers are installed first, the CLI's ``logging.basicConfig`` adds none)."""
    from click.testing import CliRunner

    from mri_audit.cli import cli

    logged = io.StringIO()
    handler = logging.StreamHandler(logged)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger = logging.getLogger("mri_audit")
    logger.addHandler(handler)
    try:
        result = CliRunner().invoke(cli, list(args), prog_name="mri-audit")
    finally:
        logger.removeHandler(handler)
    assert "Traceback" not in result.output, result.output
    return Outcome(result.exit_code, result.output + logged.getvalue())


def cases(module: str) -> list[str]:
    """The rows whose scenarios ``module`` (a test module's ``__name__``) defines, for
    ``pytest.mark.parametrize``."""
    return [c for c, f in SCENARIOS.items() if f.__module__ == module]


def check_row(case: str, outcomes: list[Outcome]) -> None:
    """Assert that the outcomes show every example of the row, with the row's exit status."""
    r = row(case)
    assert outcomes, f"{case!r}: the scenario ran nothing"
    for outcome in outcomes:
        if r.status is not None:
            assert outcome.status == r.status, (
                f"{case!r}: exit {outcome.status}, documented {r.status}\n{outcome.output}"
            )
    for example in r.examples:
        assert any(found_in(example, o.output) for o in outcomes), (
            f"{case!r}: the documented example\n  {example}\nis not in what the scenario "
            "printed:\n" + "\n---\n".join(o.output for o in outcomes)
        )
