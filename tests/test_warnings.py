"""Warnings beside the numbers: no weights, worse than zero-filling, card mismatch, few slices."""

from __future__ import annotations

import json

import pytest
import torch

from mri_audit.audit.cautions import audit_warnings, slices_needed
from mri_audit.audit.stats import wilson
from tests.test_run import NET, _run, models  # noqa: F401 - the fixture is used


def _warnings(out) -> list[str]:
    return json.loads((out / "results.json").read_text())["warnings"]


def test_untrained_and_worse_than_zero_filling(tmp_path, singlecoil_dir, models):  # noqa: F811
    extra = ("--attacks", "fnaf-rs", "--model-arg", "blur=True", "--model-arg", "k=9")
    result = _run(tmp_path, singlecoil_dir, models, *extra, "--max-volumes", "1")
    found = _warnings(tmp_path / "audit")
    assert any("net.py:Net has 82 parameters but no --weights" in w for w in found), found
    assert any("net.py:Net is worse than zero-filling: SSIM" in w for w in found), found
    assert "Warning: net.py:Net is worse than zero-filling" in result.output
    html = (tmp_path / "audit" / "report.html").read_text()
    assert 'id="warnings"' in html and "is worse than zero-filling" in html
    res = json.loads((tmp_path / "audit" / "results.json").read_text())
    assert res["zero_filled"]["ssim"] > res["clean"]["net.py:Net"]["ssim"]


def test_weights_card_mismatch_and_too_few_slices(tmp_path, singlecoil_dir, models):  # noqa: F811
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "net.py").write_text(NET)
    weights = tmp_path / "m" / "net.pt"
    torch.manual_seed(0)
    ns: dict = {}
    exec(NET, ns)  # noqa: S102 - test fixture
    torch.save(ns["Net"]().state_dict(), weights)
    card = {"acceleration": 8, "data": {"train": {"size": 320}}}
    (tmp_path / "m" / "net.pt.json").write_text(json.dumps(card))
    args = ["--attacks", "fnaf-rs", "--weights", str(weights), "--max-attack-rate", "0.2"]
    result = _run(tmp_path, singlecoil_dir, tmp_path / "m", *args, check=False)
    assert result.exit_code == 3, result.output  # 4 slices cannot pass 20%: INCONCLUSIVE
    found = _warnings(tmp_path / "audit")
    assert any("runs at 4x but its weights' card says they were trained for 8x" in w for w in found)
    assert any("trained on 320x320 images" in w for w in found), found
    assert any("a PASS needs at least 16 slices" in w for w in found), found
    assert not any(w.startswith("net.py:Net has") for w in found)  # it has weights
    assert any(w.startswith("net.py:Net#2 has 10 parameters") for w in found), found


def test_slices_needed_is_the_first_n_that_can_pass():
    for p in (0.5, 0.2, 0.1, 0.05):
        n = slices_needed(p)
        assert wilson(0, n)["high"] <= p < wilson(0, n - 1)["high"]


def test_no_warning_for_a_good_weighted_model():
    entries = [{"name": "m", "parameters": 10, "weights": "w.pt"}]
    assert (
        audit_warnings(
            models=entries,
            clean={"m": {"ssim": 0.9}},
            zero_filled={"ssim": 0.6},
            attacks={"m": {"fnaf-rs": {"attack_rate": {"total": 100}}}},
            config={"accel": 4},
            data={"target_shapes": [[160, 160]]},
            max_attack_rate=0.2,
        )
        == []
    )


@pytest.mark.parametrize(
    "kind, warned", [("file", True), ("torchscript", False), ("exported", False)]
)
def test_programs_carry_their_own_weights(kind, warned):
    found = audit_warnings(
        models=[{"name": "m", "parameters": 10, "weights": None, "kind": kind}],
        clean={"m": {"ssim": 0.9}},
        zero_filled={"ssim": 0.6},
        attacks={"m": {"fnaf-rs": {"attack_rate": {"total": 100}}}},
        config={"accel": 4},
        data={"target_shapes": [[160, 160]]},
        max_attack_rate=0.2,
    )
    assert any("no --weights" in w for w in found) == warned
