"""`mri-audit harden`: the FNAF loss falls, resume is exact, frozen parameters stay, errors."""

from __future__ import annotations

import textwrap

import pytest
import torch
from click.testing import CliRunner

from mri_audit.cli import cli
from mri_audit.data import SliceDataset, collate
from mri_audit.engine import FnafEngine
from mri_audit.features import prepare_context, random_walks
from mri_audit.harden import HardenConfig, Trainer
from mri_audit.physics import make_mask_func, volume_seed
from mri_audit.reconstructor import Reconstructor
from mri_audit.registry import load_attack

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
        scores = FnafEngine(est, ip_epsilon=0.0).evaluate(ctx, feats)
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


def test_cli_harden_end_to_end_and_resume(tmp_path, singlecoil_dir):
    (tmp_path / "net.py").write_text(NET)
    args = [
        "harden",
        "--model",
        f"{tmp_path}/net.py:Net",
        "--data",
        str(singlecoil_dir),
        "--max-slices",
        "1",
        "--epochs",
        "1",
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--candidates",
        "3",
        "--out",
        str(tmp_path / "robust.pt"),
        "--no-report",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "kept epoch 1" in result.output
    state = torch.load(tmp_path / "robust.pt", weights_only=True)
    assert set(state) == {"body.weight", "body.bias", "head.weight", "head.bias"}
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = CliRunner().invoke(cli, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output


@pytest.mark.parametrize(
    "extra, code, phrase",
    [
        (["--accel", "0.5"], 2, "--accel must be >= 1"),
        (["--feature-steps-range", "50-10"], 2, "--feature-steps-range"),
        (["--lr", "0"], 2, "--lr"),
        (["--loss", "huber"], 2, "--loss"),
        (["--nmse-tolerance", "-0.1"], 2, "--nmse-tolerance"),
    ],
)
def test_bad_options(tmp_path, singlecoil_dir, extra, code, phrase):
    (tmp_path / "net.py").write_text(NET)
    result = CliRunner().invoke(
        cli,
        [
            "harden",
            "--model",
            f"{tmp_path}/net.py:Net",
            "--data",
            str(singlecoil_dir),
            "--out",
            str(tmp_path / "o.pt"),
            *extra,
        ],
    )
    assert result.exit_code == code, result.output
    assert phrase in result.output and "Traceback" not in result.output


def test_torchscript_is_refused(tmp_path, singlecoil_dir):
    scripted = torch.jit.trace(_model(), torch.randn(1, 1, 64, 64))
    torch.jit.save(scripted, str(tmp_path / "m.ts"))
    result = CliRunner().invoke(
        cli,
        [
            "harden",
            "--model",
            str(tmp_path / "m.ts"),
            "--data",
            str(singlecoil_dir),
            "--out",
            str(tmp_path / "o.pt"),
        ],
    )
    assert result.exit_code == 5 and "TorchScript" in result.output


def test_ssim_plus_l1_is_the_sum_of_its_terms(tmp_path, singlecoil_dir):
    recon = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(1))
    target = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(2))
    std, data_range = torch.tensor([0.5, 2.0]), torch.tensor([1.0, 1.0])
    losses = {
        name: float(
            _trainer(tmp_path, singlecoil_dir, _model(), loss=name)._image_loss(
                recon, target, std, data_range
            )
        )
        for name in ("l1", "ssim", "ssim+l1")
    }
    l1 = float(((recon - target) / std[:, None, None]).abs().mean())
    assert losses["l1"] == pytest.approx(l1, rel=1e-6)
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
    monkeypatch.setattr(trainer, "validate", lambda: dict(next(script)))
    monkeypatch.setattr(trainer, "train_step", lambda epoch, step: {"loss": 0.0, "hits": 0.0})
    summary = trainer.fit()
    assert summary["best"]["epoch"] == kept
    assert not summary["best"].get("fallback")
