"""docs/errors.md: every row is a case with exactly one scenario, and every example is run.

The scenarios live in ``tests/test_errors_doc_*.py`` (see :mod:`tests.errors_doc`); this file
checks that they cover the document, row for row, and that the reader of the document works.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.errors_doc import SCENARIO_RE, Outcome, found_in, rows

TESTS = Path(__file__).resolve().parent


def _declared() -> Counter:
    found: Counter = Counter()
    for path in sorted(TESTS.glob("test_errors_doc_*.py")):
        for case in SCENARIO_RE.findall(path.read_text(encoding="utf-8")):
            found[case.encode().decode("unicode_escape")] += 1
    return found


def test_every_row_has_exactly_one_scenario():
    declared = _declared()
    documented = Counter(r.case for r in rows())
    twice_in_doc = sorted(c for c, n in documented.items() if n > 1)
    assert not twice_in_doc, f"rows named twice in docs/errors.md: {twice_in_doc}"
    missing = [c for c in documented if c not in declared]
    assert not missing, f"rows of docs/errors.md with no scenario: {missing}"
    stray = sorted(c for c in declared if c not in documented)
    assert not stray, f"scenarios naming no row of docs/errors.md: {stray}"
    twice = sorted(c for c, n in declared.items() if n > 1)
    assert not twice, f"rows with more than one scenario: {twice}"


def test_every_error_row_has_an_example():
    bare = [r.case for r in rows() if r.status is not None and not r.examples]
    assert not bare, f"error rows with no example message: {bare}"


def test_examples_match_with_ellipses_only_in_order():
    out = "Error: weights w.pt do not fit net.py:Net: missing keys: a.b"
    assert found_in("weights ... do not fit ...: missing keys: ...", out)
    assert not found_in("missing keys ... weights", out)
    assert found_in("weights  w.pt\n do not", out)  # whitespace folded
    assert Outcome(2, out).status == 2
