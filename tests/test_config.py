"""``--config`` files: every value TOML allows but no option takes is refused in one line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mri_audit.cli import cli
from mri_audit.cli.config_files import read_config
from mri_audit.errors import UsageError
from mri_audit.settings import RUN


def _read(tmp_path, text: str) -> dict:
    path = tmp_path / "audit.toml"
    path.write_text(text)
    return read_config(path, RUN)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("accel = 8", {"accel": 8}),
        ("threshold = 0.002\nmargin = 0.5", {"threshold": 0.002, "margin": 0.5}),
        ('attacks = ["fnaf-rs", "fnaf-pgd"]', {"attack_list": ["fnaf-rs", "fnaf-pgd"]}),
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
        (
            "threshold = inf",
            "config key 'threshold' in {path}: --threshold must be a number >= 0, got inf",
        ),
        (
            "threshold = -inf",
            "config key 'threshold' in {path}: --threshold must be a number >= 0, got -inf",
        ),
        (
            "margin = nan",
            "config key 'margin' in {path}: --margin must be a number in (0, 1] (a share of "
            "the feature's contrast), got nan",
        ),
        (
            "accel = inf",
            "config key 'accel' in {path}: --accel must be a number >= 1 (the undersampling "
            "factor; 1 is fully sampled), got inf",
        ),
        (
            "center-fraction = nan",
            "config key 'center-fraction' in {path}: --center-fraction must be a number in (0, "
            "1], got nan",
        ),
        (
            "min-recovery = nan",
            "config key 'min-recovery' in {path}: --min-recovery must be a number in (0, 1] (a "
            "share of the feature's contrast), got nan",
        ),
        (
            "ip-epsilon = inf",
            "config key 'ip-epsilon' in {path}: --ip-epsilon must be a number >= 0, got inf",
        ),
        (
            "window = nan",
            "config key 'window' in {path}: --window must be a number in (0, 1], got nan",
        ),
        (
            "max-attack-rate = nan",
            "config key 'max-attack-rate' in {path}: --max-attack-rate must be a number in [0, "
            "1] (a fraction of the slices: 0.2 is 20%), got nan",
        ),
        (
            "max-slices = inf",
            "config key 'max-slices' in {path}: --max-slices must be an integer >= 1, got inf",
        ),
        (
            "seed = nan",
            "config key 'seed' in {path}: --seed must be an integer in [0, 4294967295], got nan",
        ),
        (
            "batch-size = inf",
            "config key 'batch-size' in {path}: --batch-size must be 'auto' or a positive "
            "integer, got inf",
        ),
        (
            "feature-steps = nan",
            "config key 'feature-steps' in {path}: --feature-steps must be a whole number N >= "
            "1 or a range LOW-HIGH with 1 <= LOW <= HIGH, got nan",
        ),
        (
            "seed = 1979-05-27",
            "config key 'seed' in {path}: --seed must be an integer in [0, 4294967295], got a "
            "date/time (1979-05-27)",
        ),
        (
            "accel = 07:32:00",
            "config key 'accel' in {path}: --accel must be a number >= 1 (the undersampling "
            "factor; 1 is fully sampled), got a date/time (07:32:00)",
        ),
        (
            "weights = 1979-05-27T07:32:00Z",
            "config key 'weights' in {path}: --weights must be a path, got a date/time "
            "(1979-05-27T07:32:00+00:00)",
        ),
        (
            'compare = ["a.py:X", 1979-05-27]',
            "config key 'compare' in {path}: --compare must be a string "
            "([NAME=]SPEC[=WEIGHTS]), got a date/time (1979-05-27)",
        ),
        (
            "accel = [4, 8]",
            "config key 'accel' in {path}: --accel must be a number >= 1 (the undersampling "
            "factor; 1 is fully sampled), got a list",
        ),
        (
            'model = ["a.py:X"]',
            "config key 'model' in {path}: --model must be a string (SPEC), got a list",
        ),
        (
            "model = {a = 1}",
            "config key 'model' in {path}: --model must be a string (SPEC), got a table",
        ),
        (
            '[[compare]]\nspec = "b.py:X"',
            "config key 'compare' in {path}: --compare must be a string "
            "([NAME=]SPEC[=WEIGHTS]), got a table",
        ),
        (
            'compare = [{spec = "b.py:X"}]',
            "config key 'compare' in {path}: --compare must be a string "
            "([NAME=]SPEC[=WEIGHTS]), got a table",
        ),
        (
            'compare = {spec = "b.py:X"}',
            "config key 'compare' in {path}: --compare must be a string "
            "([NAME=]SPEC[=WEIGHTS]), got a table",
        ),
        (
            "model-arg = [[1]]",
            "config key 'model-arg' in {path}: --model-arg must be a string (KEY=VALUE), got a "
            "list",
        ),
        (
            'model-arg = ["chans=8", 3]',
            "config key 'model-arg' in {path}: --model-arg must be a string (KEY=VALUE), got 3",
        ),
        (
            'attacks = ["fnaf-rs", 3]',
            "config key 'attacks' in {path}: --attacks must be comma-separated names (or a "
            "list of them), got a list",
        ),
        (
            "[run]\naccel = 8",
            "config file {path} has a table [run]; write this command's options as keys at the "
            "top of the file (e.g. accel = 8), not in a table",
        ),
        (
            "seed = 1.5",
            "config key 'seed' in {path}: --seed must be an integer in [0, 4294967295], got 1.5",
        ),
        (
            "seed = true",
            "config key 'seed' in {path}: --seed must be an integer in [0, 4294967295], got true",
        ),
        (
            "candidates = 2.0",
            "config key 'candidates' in {path}: --candidates must be an integer >= 1, got 2.0",
        ),
        (
            "resume = 1",
            "config key 'resume' in {path}: --resume must be true or false, got 1",
        ),
        (
            "out = 3",
            "config key 'out' in {path}: --out must be a path, got 3",
        ),
        (
            "mask = 3",
            "config key 'mask' in {path}: --mask must be one of 'random', 'equispaced', got 3",
        ),
        (
            'mask = "zigzag"',
            "config key 'mask' in {path}: --mask must be one of 'random', 'equispaced', got "
            "'zigzag'",
        ),
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
