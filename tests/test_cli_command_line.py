"""The command line an audit, map or card records is the one a user would type again."""

from __future__ import annotations

import sys

from mri_audit.cli import command_line


def test_python_dash_m_is_recorded_as_mri_audit(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/site-packages/mri_audit/__main__.py", "run", "--x"])
    assert command_line() == ["mri-audit", "run", "--x"]


def test_the_installed_script_keeps_its_name(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/usr/bin/mri-audit", "harden", "--out", "r.pt"])
    assert command_line() == ["mri-audit", "harden", "--out", "r.pt"]
