"""The settings of a hardening run and the tolerance its kept weights must meet."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["HardenConfig", "within_tolerance"]


@dataclass(frozen=True)
class HardenConfig:
    """Settings of a hardening run (stored in every checkpoint)."""

    accels: tuple[float, ...] = (4.0,)
    center_fraction: float | None = None
    mask_type: str = "random"
    epochs: int = 5
    steps: int | None = None
    lr: float = 1e-4
    batch_size: int = 4
    lam: float = 1.0
    feature_steps: tuple[int, int] = (10, 100)
    inner_steps: int = 4  # fnaf-pgd steps of the inner maximisation (0: random search only)
    candidates: int = 11
    attack_fraction: float = 1.0  # part of each batch attacked
    recovery: float = 0.0  # weight of the feature-recovery term
    recovery_target: str = "feature"  # "feature": r -> 1; "data": r >= r0 + margin/2
    loss: str = "l1"
    seed: int = 0
    amp: bool = False
    ssim_tolerance: float = 0.01
    nmse_tolerance: float | None = None
    criterion: str = "erasure"
    threat_model: int = 2  # FNAF threat model version of the validation rates (DESIGN §4)
    margin: float = 0.1
    min_recovery: float = 0.5
    threshold: float = 1e-3
    ip_epsilon: float = 1e-4
    window: float = 0.375
    candidate_batch: int = 16
    val_candidates: int = 33  # the validation attacks' candidates (>= 3x the training's)
    val_steps: int = 32  # the validation fnaf-pgd's steps (>= 4x inner_steps)
    interpolate: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["accels"] = list(self.accels)
        d["feature_steps"] = list(self.feature_steps)
        return d


def within_tolerance(val: dict, start: dict, config: HardenConfig) -> bool:
    """Whether validation metrics ``val`` are within the SSIM (and NMSE) tolerance of the
    starting model's ``start``."""
    return val["ssim"] >= start["ssim"] - config.ssim_tolerance and (
        config.nmse_tolerance is None or val["nmse"] <= start["nmse"] * (1 + config.nmse_tolerance)
    )
