"""``--config`` files: every value TOML allows but no option takes is refused in one line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mri_audit.cli import cli
from mri_audit.cli.config_files import read_config
from mri_audit.cli.run import run
from mri_audit.errors import UsageError


def _read(tmp_path, text: str) -> dict:
    path = tmp_path / "audit.toml"
    path.write_text(text)
    return read_config(path, run)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("accel = 8", {"accel": 8}),
        ("threshold = 0.002\nmargin = 0.5", {"threshold": 0.002, "margin": 0.5}),
        ('attacks = ["fnaf-rs", "fnaf-pgd"]', {"attack_list": "fnaf-rs,fnaf-pgd"}),
        ('compare = "a.py:Net=w.pt"', {"compare": ["a.py:Net=w.pt"]}),
        ('compare = ["a.py:Net", "b.py:Net"]', {"compare": ["a.py:Net", "b.py:Net"]}),
        ('model-arg = ["chans=8"]', {"model_args": ["chans=8"]}),
        ("batch-size = 4", {"batch_size": 4}),
        ('batch_size = "auto"', {"batch_size": "auto"}),
        ("feature-steps = 10", {"feature_steps": 10}),
        ('feature-steps = "10-40"', {"feature_steps": "10-40"}),
        ("resume = true\nseed = 7", {"resume": True, "seed": 7}),
        ('mask = "equispaced"\nout = "audit"', {"mask_type": "equispaced", "out": "audit"}),
    ],
)
def test_good_values_pass(tmp_path, text, expected):
    assert _read(tmp_path, text) == expected


@pytest.mark.parametrize(
    "text, phrase",
    [
        # inf and nan, which TOML allows, for every kind of numeric key
        ("threshold = inf", "'threshold' in {path}: expected a finite number (x>=0), got inf"),
        ("threshold = -inf", "got -inf"),
        ("margin = nan", "'margin' in {path}: expected a finite number (0<x<=1), got nan"),
        ("accel = inf", "'accel' in {path}: expected a finite number, got inf"),
        ("center-fraction = nan", "'center-fraction' in {path}: expected a finite number"),
        ("min-recovery = nan", "'min-recovery'"),
        ("ip-epsilon = inf", "'ip-epsilon'"),
        ("window = nan", "'window'"),
        ("max-attack-rate = nan", "'max-attack-rate'"),
        ("max-slices = inf", "'max-slices' in {path}: expected an integer (x>=1), got inf"),
        ("seed = nan", "'seed' in {path}: expected an integer, got nan"),
        ("batch-size = inf", "'batch-size' in {path}: expected 'auto' or a positive integer"),
        ("feature-steps = nan", "'feature-steps'"),
        # dates and times
        ("seed = 1979-05-27", "'seed' in {path}: expected an integer, got a TOML date/time"),
        ("accel = 07:32:00", "'accel' in {path}: expected a finite number, got a TOML date"),
        ("weights = 1979-05-27T07:32:00Z", "'weights' in {path}: expected a path (a string)"),
        ('compare = ["a.py:X", 1979-05-27]', "'compare'"),
        # tables and arrays where one value is expected
        ("accel = [4, 8]", "'accel' in {path}: expected a finite number, got an array"),
        ('model = ["a.py:X"]', "'model' in {path}: expected a string (SPEC), got an array"),
        ("model = {a = 1}", "'model' in {path}: expected a string (SPEC), got a table"),
        ('[[compare]]\nspec = "b.py:X"', "'compare' in {path}: expected a string"),
        ('compare = [{spec = "b.py:X"}]', "got an array of tables"),
        ('compare = {spec = "b.py:X"}', "got a table"),
        ("model-arg = [[1]]", "got an array of arrays"),
        ('model-arg = ["chans=8", 3]', "'model-arg' in {path}: expected a string (KEY=VALUE)"),
        ('attacks = ["fnaf-rs", 3]', "'attacks' in {path}: expected a string or an array"),
        ("[run]\naccel = 8", "has a table [run]"),
        # numbers of the wrong kind
        ("seed = 1.5", "'seed' in {path}: expected an integer, got 1.5"),
        ("seed = true", "'seed' in {path}: expected an integer, got true"),
        ("candidates = 2.0", "expected an integer (x>=1), got 2.0"),
        ("resume = 1", "'resume' in {path}: expected true or false, got 1"),
        ("out = 3", "'out' in {path}: expected a path (a string), got 3"),
        ("mask = 3", "'mask' in {path}: expected one of 'random', 'equispaced', got 3"),
        ('mask = "zigzag"', "'mask' in {path}: 'zigzag' is not one of"),
    ],
)
def test_bad_values_are_refused_naming_key_file_and_expectation(tmp_path, text, phrase):
    with pytest.raises(UsageError) as info:
        _read(tmp_path, text)
    message = str(info.value)
    assert phrase.format(path=tmp_path / "audit.toml") in message
    assert "\n" not in message and str(tmp_path / "audit.toml") in message


@pytest.mark.parametrize(
    "text",
    ["threshold = inf", "seed = 1979-05-27", '[[compare]]\nspec = "b.py:X"', "margin = nan"],
)
def test_cli_refuses_before_any_work(tmp_path, text):
    """Exit 2 in one line before the model is even looked at (it does not exist here)."""
    cfg = tmp_path / "audit.toml"
    cfg.write_text(text)
    out = tmp_path / "audit"
    result = CliRunner().invoke(
        cli, ["run", "--model", "missing.py:Net", "--config", str(cfg), "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: config "), result.output
    assert not out.exists()
