"""The package's shape: subpackages without import cycles, nothing importing ``attacks``, modules
of a readable size, dependency bounds that CI tests, a licence and type information."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mri_audit"
SUBPACKAGES = ("mri", "data", "models", "fnaf", "audit", "report", "harden", "cli")
MAX_LINES = 420  # "about 400"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every module named by an import anywhere in the file (function-level ones included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def _unit(module: str) -> str:
    """The subpackage a module belongs to (or the top-level module itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else module


def test_every_subpackage_of_the_design_exists():
    for sub in SUBPACKAGES:
        assert (PACKAGE / sub / "__init__.py").is_file(), sub


def test_no_module_imports_attacks():
    offenders = [
        name
        for name, path in _modules().items()
        if any(m == "attacks" or m.startswith("attacks.") for m in _imports(path))
    ]
    assert offenders == []


def test_subpackages_import_each_other_without_cycles():
    """The graph of subpackage dependencies (every import, deferred ones too) is acyclic."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        src = _unit(name)
        for target in _imports(path):
            if target in modules and target.startswith("mri_audit."):
                dst = _unit(target)
                if dst != src and dst in SUBPACKAGES:
                    graph.setdefault(src, set()).add(dst)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail(f"import cycle: {' -> '.join([*path, node, nxt])}")
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert "report" not in {d for s, ds in graph.items() for d in ds if s in ("mri", "data")}
    # No library subpackage imports the CLI (only ``python -m mri_audit`` does).
    assert "cli" not in {d for s, ds in graph.items() if s in SUBPACKAGES for d in ds}


def test_modules_stay_small():
    long = {
        str(p.relative_to(ROOT)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def _lower_bounds() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)", dep)
        assert m, f"dependency without a lower bound: {dep}"
        out[m.group(1).lower()] = m.group(2)
    return out


def test_ci_tests_every_declared_lower_bound():
    from packaging.version import Version

    pins = {}
    for line in (ROOT / ".ci" / "min-versions.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    bounds = {k: v for k, v in _lower_bounds().items() if k != "tomli"}  # Python < 3.11 only
    assert set(pins) == set(bounds)
    for name, bound in bounds.items():
        assert Version(pins[name]) == Version(bound), name
    assert Version(bounds["torch"]) >= Version("2.5")  # torch.OutOfMemoryError
    # The README states the torch bound users may rely on; it is the tested one.
    stated = re.search(r"Any `torch>=([0-9.]+)` works", (ROOT / "README.md").read_text())
    assert stated and Version(stated.group(1)) == Version(bounds["torch"])


def test_licence_and_type_information_ship():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == {"text": "MIT"}
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert (PACKAGE / "py.typed").is_file()
    assert "py.typed" in meta["tool"]["setuptools"]["package-data"]["mri_audit"]
    config_reader = (PACKAGE / "cli" / "config_files.py").read_text()
    if "import tomli" in config_reader:
        assert any(d.startswith("tomli") for d in meta["project"]["dependencies"])


def test_the_package_is_the_library_entry_point():
    import inspect

    import mri_audit

    assert callable(mri_audit.audit)
    params = inspect.signature(mri_audit.audit).parameters
    for name in ("model", "data", "accel", "attacks", "criterion", "compare", "seed", "out"):
        assert name in params, name
    import mri_audit.audit.identity as identity

    assert mri_audit.audit.identity is identity  # still a package of modules
