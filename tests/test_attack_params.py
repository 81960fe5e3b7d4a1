"""``--attack-param ATTACK.KEY=VALUE`` sets every parameter `mri-audit attacks` lists, and an
attack parameter wins over the global option (README), for that attack alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mri_audit.audit.auditor import AuditConfig, AuditModel, Auditor
from mri_audit.fnaf.registry import attack_parameters, available_attacks, load_attack

EX = Path(__file__).resolve().parent.parent / "examples"

# A value of each parameter other than its default (and valid for every attack taking it).
VALUES = {
    "candidates": 3,
    "feature_steps": 4,
    "feature": "disk",
    "feature_size": 2.0,
    "feature_width": 2.0,
    "feature_contrast": 0.5,
    "window": 0.25,
    "criterion": "recovery",
    "margin": 0.2,
    "min_recovery": 0.4,
    "threshold": 0.01,
    "ip_epsilon": 0.001,
    "seed": 3,
    "batch_size": 5,
    "verbose": True,
}


COMPANIONS = {"feature_size": {"feature": "disk"}}


def _params():
    for name in available_attacks():
        for key, default in attack_parameters(load_attack(name)).items():
            yield pytest.param(name, key, default, id=f"{name}.{key}")


@pytest.fixture(scope="module")
def opened():
    from mri_audit.data.opening import open_data
    from mri_audit.models.opening import open_model
    from mri_audit.mri.physics import make_mask_func

    dataset, probe = open_data(None, 1, 1)
    mask = make_mask_func("random", 4, None)
    opened = open_model(
        f"{EX}/zero_filled.py:ZeroFilled",
        weights=None,
        model_args={},
        input_domain=None,
        normalize="instance",
        device=torch.device("cpu"),
        probe=probe,
        mask_func=mask,
        need_gradient=True,
        name="zf",
    )
    return opened.estimator, dataset


@pytest.mark.parametrize("attack, key, default", list(_params()))
def test_every_listed_parameter_can_be_set(opened, attack, key, default):
    estimator, dataset = opened
    if key in VALUES:
        value = VALUES[key]
    elif isinstance(default, bool):
        value = not default
    elif isinstance(default, int):
        value = default + 1
    elif isinstance(default, float):
        value = default * 0.5
    else:
        pytest.fail(f"{attack}.{key}: no test value for a default of {default!r}")
    # A parameter that needs another one set with it (a disk's radius needs a disk).
    options = {**COMPANIONS.get(key, {}), key: value}
    config = AuditConfig(attacks=(attack,), attack_options={attack: options})
    auditor = Auditor(
        [AuditModel("zf", estimator)],
        dataset,
        config,
        attack_classes={attack: load_attack(attack)},
        progress=False,
    )
    built = auditor.attacks[("zf", attack)]
    assert getattr(built, key) == value, (attack, key)
    # The global setting stays for the others (here: the shared config's own value).
    if key in config.attack_kwargs():
        assert config.attack_kwargs()[key] != value
