"""Train the example models on mri-audit's built-in synthetic phantoms.

Usage::

    python examples/train.py --model unet --accel 4 --steps 1800 --out examples/weights/unet_4x.pt

Training uses the built-in training split (``SyntheticDataset(split="train", **BUILTIN_TRAIN)``);
every step draws random slices and a fresh random column mask per sample (fastMRI's
``RandomMaskFunc`` at the chosen acceleration and its default centre fraction), both from
generators seeded by ``--seed``, so a run is reproducible on the same machine and torch version.
The model runs through :class:`mri_audit.Reconstructor` — exactly the adapter an audit uses —
in train mode, with an L1 loss against the target (in units of the volume maximum), Adam and
cosine learning-rate decay. A model with its own objective (a method
``training_loss(kspace, mask, num_low_frequencies, generator)`` on the fully-sampled k-space,
e.g. the denoising score matching of ``diffusion.py``) is trained on that instead.

A stochastic model (``mri_audit_stochastic = True``) is evaluated with one sample per slice,
drawn from a ``torch.Generator`` per slice seeded by the volume name and slice index
(:func:`slice_generator`), so its held-out figures are reproducible and do not depend on the
batching.

At the end the model is evaluated on the held-out split (``SyntheticDataset(split="val",
**BUILTIN_VAL)``, disjoint seeds) with the fixed per-volume masks an audit uses, next to the
zero-filled baseline (SSIM / NMSE / PSNR per volume, fastMRI definitions). It writes:

* ``<out>``: the weights, a plain state dict;
* ``<out>.json``: a card with the settings, command line, data, versions and metrics;
* ``README.md`` in the weights folder, rebuilt from every card there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mri_audit.data.datasets import BUILTIN_TRAIN, BUILTIN_VAL, SyntheticDataset, iter_batches
from mri_audit.models.estimator import Reconstructor
from mri_audit.models.loading import load_model
from mri_audit.mri.metrics import VolumeMetrics
from mri_audit.mri.physics import (
    default_center_fraction,
    make_mask_func,
    mask_to_tensor,
    volume_seed,
)

__all__ = [
    "MODELS",
    "build",
    "train",
    "evaluate",
    "slice_generator",
    "time_per_slice",
    "write_card",
    "refresh_readme",
    "main",
]

logger = logging.getLogger("train")

HERE = Path(__file__).resolve().parent
#: ``--model`` choice -> model spec, relative to this folder.
MODELS: dict[str, str] = {
    "unet": "unet.py:UNet",
    "varnet": "varnet.py:VarNet",
    "diffusion": "diffusion.py:Diffusion",
}
MASK_KIND = "random"
#: The training objective of models without their own ``training_loss``.
L1_OBJECTIVE = "L1 in units of the volume maximum"


def build(name: str) -> tuple[nn.Module, str, str]:
    """Construct an example model with its default (shipped) configuration.

    Args:
        name: a key of :data:`MODELS`.

    Returns:
        ``(model, spec, input_domain)`` where ``spec`` is the ``--model`` value for mri-audit.
    """
    loaded = load_model(str(HERE / MODELS[name]))
    spec = f"examples/{MODELS[name]}"
    return loaded.module, spec, loaded.input_domain or "image"


def _load_split(split: str, settings: dict[str, int]) -> dict[str, Any]:
    """A whole synthetic split as stacked tensors (it is small: a few hundred slices)."""
    dataset = SyntheticDataset(split=split, **settings)
    samples = [dataset[i] for i in range(len(dataset))]
    return {
        "kspace": torch.stack([s.kspace for s in samples]),
        "target": torch.stack([s.target for s in samples]),
        "max": torch.tensor([s.max_value for s in samples], dtype=torch.float32),
    }


def train(
    model: nn.Module,
    domain: str,
    *,
    accel: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    log_every: int = 50,
) -> dict[str, Any]:
    """Train ``model`` in place on the built-in training split.

    Args:
        model: the model (its parameters are updated).
        domain: its input domain (``"image"`` or ``"kspace"``).
        accel: acceleration of the random masks.
        steps: optimiser steps.
        batch_size: slices per step.
        lr: initial Adam learning rate (cosine decay to 1% of it).
        seed: seeds the slice sampling, the masks and the initialisation-independent randomness.
        log_every: steps between log lines (besides the progress bar).

    Returns:
        Training statistics: seconds, seconds per step, final (smoothed) loss, loss history.
    """
    torch.manual_seed(seed)
    data = _load_split("train", BUILTIN_TRAIN)
    kspace, target, vmax = data["kspace"], data["target"], data["max"]
    num, width = kspace.shape[0], kspace.shape[-1]
    recon = Reconstructor(model, input_domain=domain, target_shape=tuple(target.shape[-2:]))
    mask_func = make_mask_func(MASK_KIND, accel)
    gen = torch.Generator().manual_seed(seed)
    mask_rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))
    )
    own_loss = getattr(model, "training_loss", None)
    model.train()
    history: list[tuple[int, float]] = []
    smooth = math.nan
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=f"train {type(model).__name__} {accel}x", mininterval=5)
    for step in bar:
        idx = torch.randint(num, (batch_size,), generator=gen)
        masks = [mask_func(width, seed=int(s)) for s in mask_rng.integers(2**31, size=batch_size)]
        mask = mask_to_tensor(np.stack([m.columns for m in masks]))
        nlf = masks[0].num_low_frequencies
        if own_loss is not None:  # e.g. denoising score matching on the full k-space
            loss = own_loss(torch.view_as_real(kspace[idx]), mask[..., None], nlf, generator=gen)
        else:
            scale = vmax[idx][:, None, None]
            out = recon.reconstruct(kspace[idx] * mask, mask, num_low_frequencies=nlf)
            loss = F.l1_loss(out / scale, target[idx] / scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RuntimeError(f"loss is {value} at step {step}; lower --lr")
        smooth = value if math.isnan(smooth) else 0.98 * smooth + 0.02 * value
        bar.set_postfix(loss=f"{smooth:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}", refresh=False)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            history.append((step + 1, round(smooth, 6)))
            logger.info("step %d/%d loss %.5f (%.2f s/step)", step + 1, steps, smooth,
                        (time.perf_counter() - start) / (step + 1))  # fmt: skip
    seconds = time.perf_counter() - start
    model.eval()
    return {
        "seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(steps, 1), 4),
        "final_loss": round(smooth, 6),
        "loss_history": history,
    }


def slice_generator(volume: str, slice_index: int, device="cpu") -> torch.Generator:
    """The generator a stochastic model's sample of one held-out slice is drawn from.

    Seeded by the volume name and the slice index only (never by the batch), so a card's
    figures are reproducible whatever the batch size.
    """
    digest = hashlib.sha256(f"{volume}/{int(slice_index)}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class _WithGenerators(nn.Module):
    """A stochastic k-space model called with fixed per-item generators (set before each
    batch), whatever generator support the adapter has."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.generators: list[torch.Generator] | None = None

    def forward(self, masked_kspace, mask, num_low_frequencies=None):
        return self.model(
            masked_kspace, mask, num_low_frequencies=num_low_frequencies, generator=self.generators
        )


def _is_stochastic(model: nn.Module) -> bool:
    return bool(getattr(model, "mri_audit_stochastic", False))


@torch.no_grad()
def evaluate(
    model: nn.Module, domain: str, *, accel: int, batch_size: int = 8
) -> dict[str, dict[str, Any]]:
    """Held-out metrics of ``model`` and of zero-filling with the audit's per-volume masks.

    Args:
        model: the trained model.
        domain: its input domain.
        accel: acceleration of the masks (``random``, seeded by the volume name).
        batch_size: slices per forward pass.

    A stochastic model draws one sample per slice from :func:`slice_generator`.

    Returns:
        ``{"model": {...}, "zero_filled": {...}}``, each with the means over volumes
        (``ssim``, ``nmse``, ``psnr``) and ``per_volume`` values.
    """
    dataset = SyntheticDataset(split="val", **BUILTIN_VAL)
    target_shape = tuple(dataset[0].target.shape[-2:])
    stochastic = _is_stochastic(model)
    if stochastic and domain != "kspace":
        raise ValueError("evaluate() supports stochastic models in the k-space domain only")
    wrapped = _WithGenerators(model) if stochastic else model
    recon = Reconstructor(wrapped, input_domain=domain, target_shape=target_shape)
    mask_func = make_mask_func(MASK_KIND, accel)
    scores = {"model": VolumeMetrics(), "zero_filled": VolumeMetrics()}
    with recon.evaluation():
        for batch in iter_batches(dataset, batch_size):
            masks = [mask_func(batch.kspace.shape[-1], seed=volume_seed(v)) for v in batch.volumes]
            mask = mask_to_tensor(np.stack([m.columns for m in masks]))
            masked = batch.kspace * mask
            if stochastic:
                wrapped.generators = [
                    slice_generator(v, s) for v, s in zip(batch.volumes, batch.slices, strict=True)
                ]
            out = recon.reconstruct(masked, mask, num_low_frequencies=masks[0].num_low_frequencies)
            zf = recon.zero_filled_input(masked)
            scores["model"].update(batch.volumes, out, batch.target, batch.max_values)
            scores["zero_filled"].update(batch.volumes, zf, batch.target, batch.max_values)
    result = {}
    for key, metrics in scores.items():
        summary = {k: round(v, 5) for k, v in metrics.summary().items()}
        per_volume = {
            name: {k: round(v[k], 5) for k in ("ssim", "nmse", "psnr")}
            for name, v in metrics.compute().items()
        }
        result[key] = {**summary, "per_volume": per_volume}
    return result


@torch.no_grad()
def time_per_slice(model: nn.Module, domain: str, *, accel: int, repeats: int = 5) -> float:
    """Median seconds of one forward of one held-out slice through the adapter (eval mode,
    the current number of torch threads; the first, warm-up call is not counted)."""
    sample = SyntheticDataset(split="val", **BUILTIN_VAL)[0]
    stochastic = _is_stochastic(model)
    wrapped = _WithGenerators(model) if stochastic else model
    recon = Reconstructor(wrapped, input_domain=domain, target_shape=tuple(sample.target.shape))
    m = make_mask_func(MASK_KIND, accel)(sample.kspace.shape[-1], seed=volume_seed(sample.volume))
    mask = mask_to_tensor(m.columns)
    masked = sample.kspace[None] * mask
    times = []
    with recon.evaluation():
        for _ in range(repeats + 1):
            if stochastic:
                wrapped.generators = [slice_generator(sample.volume, sample.slice)]
            start = time.perf_counter()
            recon.reconstruct(masked, mask, num_low_frequencies=m.num_low_frequencies)
            times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_card(path: Path, card: dict[str, Any]) -> Path:
    """Write the JSON card ``<weights>.json`` next to the weights and return its path."""
    card_path = path.with_name(path.name + ".json")
    _atomic_write(card_path, json.dumps(card, indent=2) + "\n")
    return card_path


def _kept_line(cfg: dict[str, Any], best: dict[str, Any]) -> str:
    """The README line that says which weights a harden run kept and why."""
    within = f"SSIM within {cfg['ssim_tolerance']} of the starting model's" + (
        f" and NMSE at most {cfg['nmse_tolerance']:.0%} above it"
        if cfg.get("nmse_tolerance") is not None
        else ""
    )
    if best.get("fallback"):
        return f"- kept epoch {best['epoch']}, the last one, because nothing had {within}"
    among = "epochs"
    if cfg.get("interpolate"):
        among = (
            f"epochs and the {cfg['interpolate']} blends (1-a)*start + a*final "
            "(`--interpolate`, WiSE-FT)"
        )
    if "alpha" in best:
        a = best["alpha"]
        what = f"the blend {1 - a:.2f} x starting weights + {a:.2f} x epoch {best['epoch']}"
    else:
        what = f"epoch {best['epoch']}"
    rate = "`fnaf-pgd`" if "pgd_rate" in best else "`fnaf-rs`"
    return f"- kept {what}: the lowest validation {rate} attack rate among {among} with {within}"


def _criterion_words(cfg: dict) -> str:
    """The validation criterion of a harden card (cards without one used threat model 1)."""
    if "criterion" not in cfg:
        return "threat model version 1: the paper's loss"
    if cfg["criterion"] == "erasure":
        return f"erasure, δ = {cfg.get('margin', 0.1):g}"
    return cfg["criterion"]


def _inner_words(cfg: dict[str, Any]) -> str:
    """The training's inner maximisation in words (cards before ``inner_steps`` say ``inner``)."""
    steps = cfg.get("inner_steps")
    if steps is None:
        return f"inner `{cfg.get('inner', 'random')}` with {cfg['candidates']} candidates"
    words = (
        f"inner fnaf-pgd, {steps} steps from the best of {cfg['candidates']} random candidates"
        if steps
        else f"inner random search, {cfg['candidates']} candidates"
    )
    if cfg.get("attack_fraction", 1.0) < 1:
        words += f" on {cfg['attack_fraction']:.0%} of each batch"
    if cfg.get("recovery"):
        target = cfg.get("recovery_target", "feature")
        words += f", recovery term {cfg['recovery']:g}" + (" (r >= r0)" if target == "data" else "")
    return words


def _rates(entry: dict[str, Any]) -> str:
    """An entry's rate cells: ``fnaf-rs | fnaf-pgd`` (older cards: ``fnaf-rs | n/a``)."""
    if "pgd_rate" not in entry:
        return f"{entry['attack_rate']:.1%} | n/a"
    return f"{entry['rs_rate']:.1%} | {entry['pgd_rate']:.1%}"


def _command(card: dict[str, Any]) -> str:
    """The card's command as typed (``python -m mri_audit`` once recorded itself as
    ``__main__.py``; it is ``mri-audit``)."""
    command = card.get("command", "mri-audit harden ...")
    return (
        "mri-audit" + command[len("__main__.py") :]
        if command.startswith("__main__.py ")
        else command
    )


def _harden_section(name: str, card: dict[str, Any]) -> str:
    """The README section of a ``mri-audit harden`` card (``<weights>.json`` beside the weights)."""
    cfg, summary = card["config"], card["summary"]
    start, best = summary["start"], summary["best"]
    steps = cfg["steps"] if cfg["steps"] is not None else "one pass"
    evaluation = card.get("evaluation_attack") or {}
    pgd = evaluation.get("fnaf-pgd")
    attacks = (
        f"fnaf-rs and fnaf-pgd with {pgd['candidates']} candidates, fnaf-pgd {pgd['steps']} steps"
        if pgd
        else "fnaf-rs"
    )
    lines = [
        f"## {name}",
        "",
        f"- model: `{card['model']}`, hardened from `{card['weights']}` by `mri-audit harden` "
        "(FNAF-robust min-max fine-tuning)",
        f"- settings: {cfg['epochs']} epochs x {steps} steps x batch {cfg['batch_size']}, "
        f"Adam lr {cfg['lr']}, lambda {cfg['lam']}, feature steps "
        f"{cfg['feature_steps'][0]}-{cfg['feature_steps'][1]}, {_inner_words(cfg)}, "
        f"{cfg['loss']} loss, seed {cfg['seed']}, {card['seconds'] / 60:.1f} min",
        f"- validated with {attacks} ({_criterion_words(cfg)})",
        f"- command: `{_command(card)}`",
        _kept_line(cfg, best),
        "",
        f"| {_where(card, 'select_data', 'chosen on')} | SSIM | NMSE | fnaf-rs | fnaf-pgd |",
        "|---|---|---|---|---|",
        f"| before | {start['ssim']:.4f} | {start['nmse']:.5f} | {_rates(start)} |",
        f"| after | {best['ssim']:.4f} | {best['nmse']:.5f} | {_rates(best)} |",
        "",
    ]
    audit = card.get("before_after_audit")
    if audit and "select_data" in card:
        lines += [
            f"Before/after audit on {_where(card, 'report_data', 'other held-out volumes')}, "
            "which the choice never saw (attack rates):",
            "",
            "| | SSIM | NMSE | fnaf-rs | fnaf-pgd |",
            "|---|---|---|---|---|",
        ]
        for model, clean in audit["clean"].items():
            cells = []
            for attack in ("fnaf-rs", "fnaf-pgd"):
                rate = ((audit["attacks"].get(model) or {}).get(attack) or {}).get("attack_rate")
                ok = rate and rate.get("value") is not None
                cells.append(f"{rate['value']:.1%}" if ok else "n/a")
            lines.append(
                f"| {model} | {clean['ssim']:.4f} | {clean['nmse']:.5f} | {' | '.join(cells)} |"
            )
        lines.append("")
    return "\n".join(lines)


def _where(card: dict[str, Any], key: str, default: str) -> str:
    """Which held-out data a harden card's figures are on (``select`` or ``val`` split)."""
    data = card.get(key) or {}
    if "split" in data:
        return f"{data['split']} split ({data.get('volumes')} volumes, {data.get('slices')} slices)"
    if data.get("files"):
        return f"{len(data['files'])} held-out files"
    return default


def _card_section(card: dict[str, Any]) -> str:
    if card.get("kind") == "harden":
        return _harden_section(card["name"], card)
    m, z = card["metrics"]["model"], card["metrics"]["zero_filled"]
    tr, s = card["training"], card["settings"]
    data = card["data"]
    sampler = card.get("sampler")
    lines = [
        f"## {card['weights']}",
        "",
        f"- model: `{card['model']}` ({card['input_domain']} domain, "
        f"{card['parameters']:,} parameters, {card['size_bytes'] / 1e6:.1f} MB"
        + (", stochastic" if card.get("stochastic") else "")
        + ")",
        f"- task: {card['mask']} mask, {card['acceleration']}x, centre fraction "
        f"{card['center_fraction']}",
        f"- data: built-in synthetic phantoms, train split "
        f"{data['train']['volumes']} volumes x {data['train']['slices']} slices at "
        f"{data['train']['size']}x{data['train']['size']}, {data['train']['coils']} coil(s)",
        f"- training: {s['steps']} steps x batch {s['batch_size']}, Adam lr {s['lr']} "
        f"(cosine), seed {s['seed']}, {s['threads']} CPU threads, "
        f"{tr['seconds'] / 60:.1f} min ({tr['seconds_per_step']:.2f} s/step), "
        f"torch {card['torch']}",
    ]
    if s.get("loss", L1_OBJECTIVE) != L1_OBJECTIVE:
        lines.append(f"- objective: {s['loss']}")
    if sampler:
        lines.append(f"- sampler: {sampler}")
    lines += [
        f"- command: `{card['command']}`",
        f"- held-out: val split, {data['val']['volumes']} volumes x {data['val']['slices']} "
        "slices, per-volume masks seeded by the volume name"
        + (f"; {card['evaluation']}" if card.get("evaluation") else ""),
    ]
    if card.get("inference"):
        inf = card["inference"]
        lines.append(
            f"- time per slice: {inf['seconds_per_slice']:.2f} s "
            f"({inf['size']}x{inf['size']}, {inf['threads']} CPU threads)"
        )
    lines += [
        "",
        "| | SSIM | NMSE | PSNR (dB) |",
        "|---|---|---|---|",
        f"| model | {m['ssim']:.4f} | {m['nmse']:.4f} | {m['psnr']:.2f} |",
        f"| zero-filled | {z['ssim']:.4f} | {z['nmse']:.4f} | {z['psnr']:.2f} |",
        "",
    ]
    return "\n".join(lines)


def refresh_readme(folder: Path) -> Path:
    """Rebuild ``README.md`` in the weights folder from every ``*.pt.json`` card there."""
    cards = []
    for card_path in sorted(folder.glob("*.pt.json")):
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
            card.setdefault("name", card_path.name[: -len(".json")])
            cards.append(card)
        except (OSError, json.JSONDecodeError) as err:
            logger.warning("skipping unreadable card %s (%s)", card_path, err)
    header = [
        "# Example weights",
        "",
        "Trained by `examples/train.py` (or fine-tuned by `mri-audit harden`, `*_robust.pt`) on",
        "mri-audit's built-in synthetic phantoms (see `examples/README.md`). Each `.pt` file is a",
        "plain state dict; its `.pt.json` card holds the full settings and metrics. Metrics are on",
        "the held-out synthetic split (means over volumes, fastMRI definitions, `data_range` =",
        "volume maximum). This file is regenerated from the cards by `examples/train.py`",
        "(`python examples/train.py --refresh-readme`).",
        "",
    ]
    text = "\n".join(header) + "\n" + "\n".join(_card_section(c) for c in cards)
    readme = folder / "README.md"
    _atomic_write(readme, text.rstrip("\n") + "\n")
    return readme


def _stochastic_fields(model: nn.Module) -> dict[str, Any]:
    describe = getattr(model, "describe_sampler", None)
    return {
        "stochastic": True,
        "sampler": describe() if describe is not None else None,
        "evaluation": "one sample per slice, drawn from a torch.Generator per slice seeded by "
        "the volume name and slice index (examples/train.py: slice_generator)",
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS))
    parser.add_argument("--accel", type=int, choices=(4, 8), default=4)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, help="weights file (.pt)")
    parser.add_argument(
        "--refresh-readme",
        action="store_true",
        help="only rebuild weights/README.md from the cards there, and exit",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.refresh_readme:
        logger.info("wrote %s", refresh_readme(HERE / "weights"))
        return 0
    if args.out is None or args.model is None:
        parser.error("--model and --out are required (or --refresh-readme alone)")
    if args.steps < 1 or args.batch_size < 1 or not args.lr > 0:
        parser.error("--steps, --batch-size and --lr must be positive")
    torch.set_num_threads(args.threads)
    command = shlex.join(["python", "examples/train.py", *(sys.argv[1:] if argv is None else argv)])

    torch.manual_seed(args.seed)  # the initialisation
    model, spec, domain = build(args.model)
    stats = train(
        model,
        domain,
        accel=args.accel,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, args.out)
    logger.info("saved %s; evaluating on the held-out split", args.out)
    metrics = evaluate(model, domain, accel=args.accel)
    seconds_per_slice = time_per_slice(model, domain, accel=args.accel)
    stochastic = _is_stochastic(model)

    card = {
        "weights": args.out.name,
        "model": spec,
        "model_args": {},
        "input_domain": domain,
        "mask": MASK_KIND,
        "acceleration": args.accel,
        "center_fraction": default_center_fraction(args.accel),
        "settings": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "schedule": "cosine to 1% of lr",
            "optimizer": "Adam",
            "loss": getattr(model, "training_objective", L1_OBJECTIVE),
            "seed": args.seed,
            "threads": args.threads,
        },
        "command": command,
        "data": {
            "train": {"split": "train", "seed": 0, **BUILTIN_TRAIN},
            "val": {"split": "val", "seed": 0, **BUILTIN_VAL},
        },
        "training": stats,
        "inference": {
            "seconds_per_slice": round(seconds_per_slice, 4),
            "size": BUILTIN_VAL["size"],
            "coils": BUILTIN_VAL["coils"],
            "threads": args.threads,
        },
        "parameters": sum(p.numel() for p in model.parameters()),
        "size_bytes": args.out.stat().st_size,
        "sha256": _sha256(args.out),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "metrics": metrics,
    }
    if stochastic:
        card.update(_stochastic_fields(model))
    write_card(args.out, card)
    refresh_readme(args.out.parent)
    m, z = metrics["model"], metrics["zero_filled"]
    for label, v in (("model", m), ("zero-filled", z)):
        logger.info("%-12s SSIM %.4f  NMSE %.4f  PSNR %.2f", label, v["ssim"], v["nmse"], v["psnr"])
    logger.info("%.3f s per slice (%d threads)", seconds_per_slice, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
