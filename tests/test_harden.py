"""`mri-audit harden`: the FNAF loss falls, resume is exact, frozen parameters stay, errors."""

from __future__ import annotations

import json
import textwrap
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from mri_audit.cli import cli
from mri_audit.data.datasets import SliceDataset, collate
from mri_audit.fnaf.engine import FnafEngine
from mri_audit.fnaf.features import prepare_context, random_walks
from mri_audit.fnaf.registry import load_attack
from mri_audit.harden.blending import blend_alphas, blend_weights
from mri_audit.harden.config import HardenConfig
from mri_audit.harden.losses import image_loss
from mri_audit.harden.trainer import Trainer
from mri_audit.models.estimator import Reconstructor
from mri_audit.mri.physics import make_mask_func, volume_seed

NET = textwrap.dedent("""
    import torch
    class Net(torch.nn.Module):
        def __init__(self, freeze_head=False):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.body = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.head = torch.nn.Conv2d(4, 1, 3, padding=1)
            for p in self.parameters():
                p.data = torch.randn(p.shape, generator=g) * 0.1
            if freeze_head:
                self.head.requires_grad_(False)
        def forward(self, x):
            return x + self.head(torch.relu(self.body(x)))
""")


# What a before/after audit that passed returns, where a test replaces that audit.
PASSED_AUDIT = SimpleNamespace(exit_code=0, out=None, results=None)


def _model(freeze_head=False):
    namespace: dict = {}
    exec(NET, namespace)  # noqa: S102 - test fixture
    return namespace["Net"](freeze_head=freeze_head)


def _trainer(tmp_path, data, model, **kw):
    ds = SliceDataset(data, max_slices=2)
    est = Reconstructor(model, target_shape=tuple(ds[0].target.shape))
    cfg = HardenConfig(
        **{
            "epochs": 2,
            "steps": 2,
            "batch_size": 2,
            "lr": 1e-2,
            "candidates": 4,
            "feature_steps": (5, 20),
            "lam": 4.0,
            "val_candidates": 4,
            "inner_steps": 1,
            "val_steps": 2,
            **kw,
        }
    )
    classes = {n: load_attack(n) for n in ("fnaf-rs", "fnaf-pgd")}
    return Trainer(
        est,
        ds,
        ds,
        cfg,
        attack_classes=classes,
        checkpoint=tmp_path / "w.pt.ckpt",
        out=tmp_path / "w.pt",
    )


def _fixed_loss(est, data):
    ds = SliceDataset(data, max_slices=2)
    batch = collate([ds[i] for i in range(len(ds))])
    func = make_mask_func("random", 4)
    ctx = prepare_context(
        batch.kspace,
        target_shape=tuple(batch.target.shape[-2:]),
        volumes=batch.volumes,
        slices=batch.slices,
        mask_for=lambda v, n: func(n, seed=volume_seed(v)),
    )
    si = torch.arange(ctx.num_slices).repeat_interleave(6)
    cand = torch.arange(6).repeat(ctx.num_slices)
    feats = random_walks(ctx, si, cand, steps=15, seed=123)
    with est.evaluation():
        scores = FnafEngine(est).evaluate(ctx, feats)
    return float(scores.loss.mean())


@pytest.mark.parametrize("loss", ["l1", "ssim+l1"])
def test_training_lowers_fnaf_loss_on_fixed_features(tmp_path, singlecoil_dir, loss):
    trainer = _trainer(tmp_path, singlecoil_dir, _model(), epochs=3, steps=3, loss=loss)
    before = _fixed_loss(trainer.est, singlecoil_dir)
    trainer.fit()
    after = _fixed_loss(trainer.est, singlecoil_dir)
    assert after < 0.9 * before, (before, after)
    assert (tmp_path / "w.pt").exists() and (tmp_path / "w.pt.ckpt").exists()
    assert len(trainer.history) == 3


def test_resume_gives_the_same_weights(tmp_path, singlecoil_dir):
    full = _trainer(tmp_path / "a", singlecoil_dir, _model())
    full.fit()
    part = _trainer(tmp_path / "b", singlecoil_dir, _model(), epochs=1)
    part.fit()
    resumed = _trainer(tmp_path / "b", singlecoil_dir, _model())  # epochs=2 again
    with pytest.raises(ValueError, match="other settings"):
        resumed.load_checkpoint()  # epochs differs from the checkpoint's config
    resumed.config = part.config.__class__(**{**part.config.__dict__, "epochs": 1})
    resumed.load_checkpoint()
    resumed.config = full.config
    resumed.fit()
    for (k, a), b in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert [h["attack_rate"] for h in full.history] == [h["attack_rate"] for h in resumed.history]


def test_frozen_parameters_stay_unchanged(tmp_path, singlecoil_dir):
    model = _model(freeze_head=True)
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    body = model.body.weight.clone()
    _trainer(tmp_path, singlecoil_dir, model, epochs=1).fit()
    for k, v in model.head.state_dict().items():
        assert torch.equal(v, head[k])
    assert not torch.equal(model.body.weight, body)
    assert not any(p.requires_grad for p in model.head.parameters())


def _cli_args(tmp_path, data, *extra) -> list[str]:
    """A one-step ``harden`` of the tiny model on one slice per volume, without the audit."""
    (tmp_path / "net.py").write_text(NET)
    return [
        "harden",
        "--model",
        f"{tmp_path}/net.py:Net",
        "--data",
        str(data),
        "--max-slices",
        "1",
        "--epochs",
        "1",
        "--steps",
        "1",
        "--candidates",
        "3",
        "--inner-steps",
        "1",
        "--val-candidates",
        "9",
        "--val-steps",
        "4",
        "--out",
        str(tmp_path / "robust.pt"),
        "--no-report",
        *extra,
    ]


def _lines(output: str, label: str) -> list[str]:
    """The lines of ``output`` that report the validation of ``label`` (``start``, ``epoch 2``)."""
    return [line for line in output.splitlines() if line.startswith(f"{label:<11} SSIM ")]


def _each_once(output: str, *labels: str) -> None:
    for label in labels:
        assert len(_lines(output, label)) == 1, (label, output)


def test_cli_harden_end_to_end_and_resume(tmp_path, harden_dir):
    args = _cli_args(tmp_path, harden_dir, "--batch-size", "2", "--keep-checkpoint")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "kept epoch 1" in result.output
    _each_once(result.output, "start", "epoch 1")
    assert "train loss" in _lines(result.output, "epoch 1")[0]
    state = torch.load(tmp_path / "robust.pt", weights_only=True)
    assert set(state) == {"body.weight", "body.bias", "head.weight", "head.bias"}
    assert (tmp_path / "robust.pt.ckpt").exists()  # --keep-checkpoint
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = CliRunner().invoke(cli, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    _each_once(resumed.output, "start", "epoch 1")  # the checkpoint's lines, once


def test_success_removes_the_checkpoint_and_a_resume_says_the_run_finished(tmp_path, harden_dir):
    args = _cli_args(tmp_path, harden_dir, "--epochs", "2")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    _each_once(result.output, "start", "epoch 1", "epoch 2")
    out = tmp_path / "robust.pt"
    assert out.exists() and (tmp_path / "robust.pt.json").exists()
    assert not (tmp_path / "robust.pt.ckpt").exists()
    kept = out.read_bytes()
    for extra, start in (
        (["--resume"], f"Error: nothing to resume: {out} holds the kept weights of a finished"),
        ([], f"Error: {out} holds the kept weights of a finished harden run"),
    ):
        again = CliRunner().invoke(cli, [*args, *extra])
        assert again.exit_code == 2, again.output
        lines = again.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(start), again.output
        assert lines[0].endswith("use another --out to train again")
    assert out.read_bytes() == kept
    (tmp_path / "robust.pt.json").unlink()  # a weights file that no harden run wrote
    other = CliRunner().invoke(cli, args)
    assert other.exit_code == 2 and f"{out} exists; harden does not overwrite it" in other.output
    resumed = CliRunner().invoke(cli, [*args, "--resume"])
    assert resumed.exit_code == 2, resumed.output
    assert "nothing to resume: " in resumed.output and "robust.pt.ckpt does not" in resumed.output


@pytest.mark.parametrize("how", ["ctrl-c", "audit-ctrl-c", "error"])
def test_a_stopped_before_after_audit_keeps_the_checkpoint(tmp_path, harden_dir, monkeypatch, how):
    from mri_audit.audit.api import AuditInterrupted
    from mri_audit.errors import OutputError
    from mri_audit.harden import session

    def audit(*args, **kwargs):
        if how == "audit-ctrl-c":  # what the audit raises when Ctrl-C stops its attacks
            raise AuditInterrupted(tmp_path / "robust.pt.audit", 3)
        raise KeyboardInterrupt if how == "ctrl-c" else OutputError("cannot write the audit")

    monkeypatch.setattr(session, "before_after_audit", audit)
    args = [a for a in _cli_args(tmp_path, harden_dir) if a != "--no-report"]
    result = CliRunner().invoke(cli, args)
    ckpt = tmp_path / "robust.pt.ckpt"
    assert ckpt.exists(), result.output
    last = result.output.strip().splitlines()[-1]
    if how != "error":
        assert result.exit_code == 130, result.output
        assert last == (
            f"Interrupted: the kept weights are in {tmp_path / 'robust.pt'} and {ckpt} holds the "
            "finished training; run the same command with --resume to write the card and the "
            "before/after audit"
        )
    else:
        assert result.exit_code == 7 and last == "Error: cannot write the audit", result.output
    monkeypatch.setattr(session, "before_after_audit", lambda *a, **k: PASSED_AUDIT)
    resumed = CliRunner().invoke(cli, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    _each_once(resumed.output, "start", "epoch 1")
    assert not ckpt.exists()


@pytest.mark.parametrize(
    "extra, code, phrase",
    [
        (["--accel", "0.5"], 2, "--accel must be a number >= 1"),
        (["--feature-steps-range", "50-10"], 2, "--feature-steps-range"),
        (["--lr", "0"], 2, "--lr"),
        (["--loss", "huber"], 2, "--loss"),
        (["--nmse-tolerance", "-0.1"], 2, "--nmse-tolerance"),
        (["--interpolate", "-1"], 2, "--interpolate"),
    ],
)
def test_bad_options(tmp_path, harden_dir, extra, code, phrase):
    (tmp_path / "net.py").write_text(NET)
    result = CliRunner().invoke(
        cli,
        [
            "harden",
            "--model",
            f"{tmp_path}/net.py:Net",
            "--data",
            str(harden_dir),
            "--out",
            str(tmp_path / "o.pt"),
            *extra,
        ],
    )
    assert result.exit_code == code, result.output
    assert phrase in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("suffix", [".ts", ".pt2"])
def test_programs_are_refused_before_any_work(tmp_path, harden_dir, suffix):
    from mri_audit.models.exported import quiet_torchscript

    path = tmp_path / f"m{suffix}"
    if suffix == ".ts":
        with quiet_torchscript():
            torch.jit.save(torch.jit.trace(_model(), torch.randn(1, 1, 64, 64)), str(path))
    else:
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(
            _model().eval(), (torch.randn(2, 1, 64, 64),), dynamic_shapes=({0: batch},)
        )
        torch.export.save(program, str(path))
    result = CliRunner().invoke(
        cli,
        [
            "harden",
            "--model",
            str(path),
            "--data",
            str(harden_dir),
            "--out",
            str(tmp_path / "o.pt"),
        ],
    )
    assert result.exit_code == 5, result.output
    assert "TorchScript and exported (.pt2) models cannot be trained here" in result.output
    assert not (tmp_path / "o.pt").exists() and not (tmp_path / "o.pt.ckpt").exists()


def test_ssim_plus_l1_is_the_sum_of_its_terms():
    recon = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(1))
    target = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(2))
    std, data_range = torch.tensor([0.5, 2.0]), torch.tensor([1.0, 1.0])
    losses = {
        name: float(image_loss(name, recon, target, std, data_range))
        for name in ("l1", "ssim", "ssim+l1", "mse")
    }
    l1 = float(((recon - target) / std[:, None, None]).abs().mean())
    assert losses["l1"] == pytest.approx(l1, rel=1e-6)
    mse = float(((recon - target) / std[:, None, None]).double().square().mean())
    assert losses["mse"] == pytest.approx(mse, rel=1e-5)
    with pytest.raises(ValueError, match="loss must be one of"):
        image_loss("huber", recon, target, std, data_range)
    assert losses["ssim+l1"] == pytest.approx(losses["ssim"] + l1, rel=1e-6)
    assert 0 < losses["ssim"] < 2


@pytest.mark.parametrize(
    ("nmse_tolerance", "kept"),
    [(None, 3), (0.1, 2), (0.0, 1)],
)
def test_kept_epoch_respects_ssim_and_nmse_tolerances(
    tmp_path, singlecoil_dir, monkeypatch, nmse_tolerance, kept
):
    """Scripted validations: the kept epoch is the lowest attack rate within both tolerances."""
    trainer = _trainer(
        tmp_path, singlecoil_dir, _model(), epochs=4, steps=1, nmse_tolerance=nmse_tolerance
    )
    script = iter(
        [
            {"ssim": 0.900, "nmse": 0.0030, "attack_rate": 0.80},  # start
            {"ssim": 0.899, "nmse": 0.0030, "attack_rate": 0.50},  # epoch 1
            {"ssim": 0.897, "nmse": 0.0032, "attack_rate": 0.20},  # epoch 2: NMSE +6.7%
            {"ssim": 0.891, "nmse": 0.0035, "attack_rate": 0.10},  # epoch 3: NMSE +17%
            {"ssim": 0.880, "nmse": 0.0040, "attack_rate": 0.00},  # epoch 4: SSIM out
        ]
    )
    monkeypatch.setattr(trainer, "validate", lambda: dict(next(script), strict=True))
    monkeypatch.setattr(trainer, "train_step", lambda epoch, step: {"loss": 0.0, "hits": 0.0})
    summary = trainer.fit()
    assert summary["best"]["epoch"] == kept
    assert not summary["best"].get("fallback")


def test_blend_weights_by_hand():
    start = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(3)}
    final = {"w": torch.tensor([1.0, 0.0]), "n": torch.tensor(7)}
    mid = blend_weights(start, final, 0.25)
    torch.testing.assert_close(mid["w"], torch.tensor([0.25, 1.5]))
    assert int(mid["n"]) == 7  # counters come from the final weights
    torch.testing.assert_close(blend_weights(start, final, 0.0)["w"], start["w"])
    torch.testing.assert_close(blend_weights(start, final, 1.0)["w"], final["w"])
    assert blend_alphas(3) == [0.25, 0.5, 0.75] and blend_alphas(0) == []


def _scripted(trainer, monkeypatch, values):
    script = iter(values)
    monkeypatch.setattr(
        trainer,
        "validate",
        lambda: dict(zip(("ssim", "nmse", "attack_rate"), next(script), strict=True)),
    )


def test_interpolate_keeps_the_best_blend_and_writes_its_weights(
    tmp_path, singlecoil_dir, monkeypatch
):
    """Blends compete with epochs; the kept file holds exactly that blend; training resumes."""
    trainer = _trainer(
        tmp_path, singlecoil_dir, _model(), epochs=2, steps=1, interpolate=3, nmse_tolerance=0.1
    )
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    _scripted(
        trainer,
        monkeypatch,
        [
            (0.900, 0.0030, 0.80),  # start
            (0.899, 0.0031, 0.50),  # epoch 1
            (0.880, 0.0040, 0.00),  # epoch 2: SSIM out of tolerance
            (0.899, 0.0030, 0.40),  # blend 0.25
            (0.897, 0.0032, 0.20),  # blend 0.5: the best within both tolerances
            (0.895, 0.0034, 0.10),  # blend 0.75: NMSE +13%
        ],
    )
    summary = trainer.fit()
    assert [b["alpha"] for b in summary["blends"]] == [0.25, 0.5, 0.75]
    assert summary["best"]["alpha"] == 0.5 and summary["best"]["epoch"] == 2
    assert not summary["best"].get("fallback")
    final = trainer.model.state_dict()  # the model is left at the final epoch's weights
    assert any(not torch.equal(final[k], start[k]) for k in start)
    kept = torch.load(tmp_path / "w.pt", weights_only=True)
    for k, v in blend_weights(start, final, 0.5).items():
        torch.testing.assert_close(kept[k], v, rtol=0, atol=0, msg=k)
    ckpt = torch.load(tmp_path / "w.pt.ckpt", weights_only=True)
    assert ckpt["best"]["alpha"] == 0.5 and len(ckpt["blends"]) == 3
    for k, v in final.items():
        assert torch.equal(ckpt["model"][k], v), k
    # Resuming a finished run validates nothing again and keeps the same choice.
    again = _trainer(
        tmp_path, singlecoil_dir, _model(), epochs=2, steps=1, interpolate=3, nmse_tolerance=0.1
    )
    monkeypatch.setattr(again, "validate", lambda: pytest.fail("validated again"))
    assert again.fit(resume=True)["best"] == summary["best"]


@pytest.mark.parametrize(
    ("blend_nmse", "kept_alpha"),
    [(0.0031, 0.5), (0.0050, None)],
)
def test_blend_replaces_a_fallback_epoch_only_when_it_is_eligible(
    tmp_path, singlecoil_dir, monkeypatch, blend_nmse, kept_alpha
):
    trainer = _trainer(
        tmp_path, singlecoil_dir, _model(), epochs=1, steps=1, interpolate=1, nmse_tolerance=0.1
    )
    _scripted(
        trainer,
        monkeypatch,
        [(0.900, 0.0030, 0.80), (0.890, 0.0040, 0.0), (0.899, blend_nmse, 0.30)],
    )
    monkeypatch.setattr(trainer, "train_step", lambda epoch, step: {"loss": 0.0, "hits": 0.0})
    best = trainer.fit()["best"]
    assert best.get("alpha") == kept_alpha
    assert bool(best.get("fallback")) == (kept_alpha is None)


def test_checkpoint_without_newer_settings_still_resumes(tmp_path, singlecoil_dir):
    trainer = _trainer(tmp_path, singlecoil_dir, _model(), epochs=1, steps=1)
    trainer.fit()
    state = torch.load(tmp_path / "w.pt.ckpt", weights_only=True)
    del state["config"]["interpolate"], state["blends"]
    torch.save(state, tmp_path / "w.pt.ckpt")
    resumed = _trainer(tmp_path, singlecoil_dir, _model(), epochs=1, steps=1)
    resumed.load_checkpoint()
    assert resumed.epoch == 1 and resumed.blends is None


def test_checkpoint_of_threat_model_1_is_refused(tmp_path, singlecoil_dir):
    """Its validation rates counted version-1 hits: mixing them in would be a wrong figure."""
    trainer = _trainer(tmp_path, singlecoil_dir, _model(), epochs=1, steps=1)
    trainer.fit()
    state = torch.load(tmp_path / "w.pt.ckpt", weights_only=True)
    assert state["config"]["threat_model"] == 2 and state["config"]["criterion"] == "erasure"
    del state["config"]["threat_model"], state["config"]["criterion"], state["config"]["margin"]
    torch.save(state, tmp_path / "w.pt.ckpt")
    resumed = _trainer(tmp_path, singlecoil_dir, _model(), epochs=1, steps=1)
    with pytest.raises(ValueError, match="threat_model"):
        resumed.load_checkpoint()


def test_cli_interpolate_prints_and_records_the_blends(tmp_path, harden_dir):
    result = CliRunner().invoke(cli, _cli_args(tmp_path, harden_dir, "--interpolate", "2"))
    assert result.exit_code == 0, result.output
    assert "blend 0.33" in result.output and "blend 0.67" in result.output
    card = json.loads((tmp_path / "robust.pt.json").read_text())
    assert card["config"]["interpolate"] == 2
    assert [round(b["alpha"], 4) for b in card["summary"]["blends"]] == [0.3333, 0.6667]
    assert "kept " in result.output


def test_card_gets_the_before_after_audit_and_sha256(tmp_path):
    import hashlib

    from mri_audit.harden.outputs import add_audit_to_card

    out = tmp_path / "w.pt"
    out.write_bytes(b"weights")
    card = tmp_path / "w.pt.json"
    card.write_text(json.dumps({"kind": "harden"}))
    report = tmp_path / "w.pt.audit"
    add_audit_to_card(out, report)  # no audit yet: the card is left alone
    assert json.loads(card.read_text()) == {"kind": "harden"}
    report.mkdir()
    results = {"clean": {"m": {"ssim": 0.9}}, "attacks": {"m": {"fnaf-rs": {}}}, "other": 1}
    (report / "results.json").write_text(json.dumps(results))
    add_audit_to_card(out, report)
    got = json.loads(card.read_text())
    assert got["sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert got["before_after_audit"] == {"clean": results["clean"], "attacks": results["attacks"]}
    assert got["kind"] == "harden"


def test_cli_criterion_reaches_the_card_and_bad_margin_exits_2(tmp_path, harden_dir):
    args = _cli_args(tmp_path, harden_dir, "--criterion", "recovery")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "robust.pt.json").read_text())
    assert card["config"]["criterion"] == "recovery" and card["config"]["threat_model"] == 2
    bad = CliRunner().invoke(cli, _cli_args(tmp_path, harden_dir, "--margin", "0"))
    assert bad.exit_code == 2 and "--margin" in bad.output


def test_kept_weights_are_chosen_on_slices_the_audit_never_reports(tmp_path, harden_dir):
    result = CliRunner().invoke(cli, _cli_args(tmp_path, harden_dir))
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "robust.pt.json").read_text())
    select = {f["name"] for f in card["select_data"]["files"]}
    report = {f["name"] for f in card["report_data"]["files"]}
    assert select and report and not select & report


def test_selection_needs_its_own_held_out_volumes(tmp_path, harden_dir, singlecoil_dir):
    # Two volumes cannot hold out both a selection and a report set.
    result = CliRunner().invoke(cli, _cli_args(tmp_path, singlecoil_dir))
    assert result.exit_code == 2 and "at least 3 volumes" in result.output, result.output
    # --val-data that overlaps --data is refused.
    result = CliRunner().invoke(cli, _cli_args(tmp_path, harden_dir, "--val-data", str(harden_dir)))
    assert result.exit_code == 2 and "--val-data shares 3 file(s)" in result.output, result.output


def test_builtin_splits_are_disjoint():
    from mri_audit.data.datasets import BUILTIN_SELECT, BUILTIN_VAL, SyntheticDataset

    seeds = {
        split: {
            SyntheticDataset(split=split, **spec).volume_seed(i) for i in range(spec["volumes"])
        }
        for split, spec in (("select", BUILTIN_SELECT), ("val", BUILTIN_VAL))
    }
    assert not seeds["select"] & seeds["val"]


# ---------------------------------------------------------------- resume identity, lock, Ctrl-C


def _copy_data(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    "change, phrase",
    [
        ("class", "--model {net}:Net -> {net}:Other"),
        ("weights", "the starting weights (sha256 differs)"),
        ("sibling", "the model's source (helper.py)"),
        ("model-arg", "--model-arg"),
        ("data", "training data (files file_hd"),
        ("normalize", "--normalize instance -> none"),
    ],
)
def test_resume_refuses_another_model_weights_or_data(tmp_path, harden_dir, change, phrase):
    """Each change is refused in one line naming it; the checkpoint is left untouched."""
    from mri_audit.data.phantoms import synth_dataset

    net = tmp_path / "mynet.py"  # _cli_args writes net.py
    (tmp_path / "helper.py").write_text("SCALE = 1.0\n")
    net.write_text(
        "import helper\n"
        + NET.replace("return x +", "return helper.SCALE * x +")
        + "\nclass Other(Net):\n    pass\n"
    )
    torch.save(_model().state_dict(), tmp_path / "a.pt")
    other = _model()
    with torch.no_grad():
        other.head.bias.add_(1.0)
    torch.save(other.state_dict(), tmp_path / "b.pt")
    data = _copy_data(harden_dir, tmp_path / "data")
    base = [a if a != str(harden_dir) else str(data) for a in _cli_args(tmp_path, harden_dir)]
    base[base.index("--model") + 1] = f"{net}:Net"
    base += ["--epochs", "2", "--weights", str(tmp_path / "a.pt")]
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as mp:  # stop after the first epoch, as a Ctrl-C would
        real = Trainer.train_step

        def step(self, epoch, s):
            if epoch == 1:
                raise KeyboardInterrupt
            return real(self, epoch, s)

        mp.setattr(Trainer, "train_step", step)
        first = runner.invoke(cli, base)
    assert first.exit_code == 130, first.output
    ckpt = tmp_path / "robust.pt.ckpt"
    before = ckpt.read_bytes()
    args = [*base, "--resume"]
    if change == "class":
        args[args.index("--model") + 1] = f"{net}:Other"
    elif change == "weights":
        args[args.index("--weights") + 1] = str(tmp_path / "b.pt")
    elif change == "sibling":
        (tmp_path / "helper.py").write_text("SCALE = 2.0\n")
    elif change == "model-arg":
        args += ["--model-arg", "freeze_head=True"]
    elif change == "data":
        victim = sorted(data.glob("*.h5"))[0]
        synth_dataset(
            tmp_path / "other",
            prefix=victim.stem[:-5],
            volumes=1,
            slices=2,
            size=64,
            coils=1,
            kspace_shape=(128, 72),
            seed=99,
        )
        (tmp_path / "other" / victim.name).replace(victim)
    elif change == "normalize":
        args += ["--normalize", "none"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"Error: cannot resume from {ckpt}: the checkpoint was made with")
    assert phrase.format(net=net) in line, line
    assert ckpt.read_bytes() == before
    unchanged = runner.invoke(cli, base + ["--resume"]) if change in ("class", "weights") else None
    if unchanged is not None:  # the same settings resume and finish
        assert unchanged.exit_code == 0, unchanged.output
        assert "epoch 2" in unchanged.output


def test_resume_without_weights_starts_from_the_saved_start(tmp_path, harden_dir):
    """A model whose constructor draws random weights resumes from <out>.start.pt."""
    (tmp_path / "rnd.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)\n"
        "    def forward(self, x):\n"
        "        return x + 0.1 * self.conv(x)\n"
    )
    args = _cli_args(tmp_path, harden_dir)
    args[args.index("--model") + 1] = f"{tmp_path}/rnd.py:Net"
    first = CliRunner().invoke(cli, [*args, "--keep-checkpoint"])
    assert first.exit_code == 0, first.output
    torch.manual_seed(12345)  # another constructor draw
    resumed = CliRunner().invoke(cli, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output


def test_checkpoint_without_identity_is_refused(tmp_path, harden_dir):
    args = _cli_args(tmp_path, harden_dir, "--keep-checkpoint")
    assert CliRunner().invoke(cli, args).exit_code == 0
    ckpt = tmp_path / "robust.pt.ckpt"
    state = torch.load(ckpt, weights_only=True)
    del state["identity"]
    torch.save(state, ckpt)
    result = CliRunner().invoke(cli, [*args, "--resume"])
    assert result.exit_code == 2, result.output
    assert "made by an older mri-audit" in result.output
    ckpt.write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(cli, [*args, "--resume"])
    assert result.exit_code == 2 and "is not a readable checkpoint" in result.output, result.output
    assert "Traceback" not in result.output


def test_a_second_harden_on_the_same_out_is_refused(tmp_path, harden_dir):
    from mri_audit.audit.outlock import hold_lock

    with hold_lock(tmp_path, "mri-audit harden", name=".robust.pt.mri-audit.lock"):
        other = CliRunner().invoke(
            cli, [*_cli_args(tmp_path, harden_dir), "--out", str(tmp_path / "other.pt")]
        )
        result = CliRunner().invoke(cli, _cli_args(tmp_path, harden_dir))
    assert other.exit_code == 0, other.output  # another weights file in the folder: its own lock
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'robust.pt'} is in use by process" in result.output
    assert "(mri-audit harden)" in result.output
    assert not (tmp_path / "robust.pt").exists()
    after = CliRunner().invoke(cli, _cli_args(tmp_path, harden_dir))  # released: it runs
    assert after.exit_code == 0, after.output


def test_report_out_cannot_be_the_folder_of_out(tmp_path, harden_dir):
    args = [a for a in _cli_args(tmp_path, harden_dir) if a != "--no-report"]
    result = CliRunner().invoke(cli, [*args, "--report-out", str(tmp_path)])
    assert result.exit_code == 2 and "--report-out" in result.output, result.output


def test_ctrl_c_during_training_exits_130_naming_the_checkpoint(tmp_path, harden_dir, monkeypatch):
    real = Trainer.train_step

    def step(self, epoch, s):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch, s)

    monkeypatch.setattr(Trainer, "train_step", step)
    args = _cli_args(tmp_path, harden_dir, "--epochs", "2")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 130, result.output
    ckpt = tmp_path / "robust.pt.ckpt"
    assert result.output.strip().splitlines()[-1] == (
        f"Interrupted: {ckpt} holds epoch 1 of 2; run the same command with --resume to continue"
    )
    assert "Aborted" not in result.output
    assert ckpt.exists() and (tmp_path / "robust.pt").exists()
    monkeypatch.setattr(Trainer, "train_step", real)
    resumed = CliRunner().invoke(cli, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    _each_once(resumed.output, "start", "epoch 1", "epoch 2")
    assert not ckpt.exists()  # the resumed run succeeded


def test_ctrl_c_during_the_dry_run_exits_130(tmp_path, harden_dir):
    (tmp_path / "stop.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.w = torch.nn.Parameter(torch.ones(()))\n"
        "    def forward(self, x):\n"
        "        raise KeyboardInterrupt\n"
    )
    args = _cli_args(tmp_path, harden_dir)
    args[args.index("--model") + 1] = f"{tmp_path}/stop.py:Net"
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines()[-1] == (
        "Interrupted: no epoch was finished, so there is nothing to resume; run the command again"
    )


def test_max_slices_limits_the_builtin_held_out_phantoms_too():
    from mri_audit.harden.splits import datasets

    opts = {"data": None, "val_data": None, "max_volumes": 2, "max_slices": 1}
    train, select, report = datasets(opts)
    assert len(select.valid_indices()) == 6 and len(report.valid_indices()) == 6  # 6 volumes
    assert len(train.valid_indices()) == 2
