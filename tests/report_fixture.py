"""A realistic fake audit folder (results.json, records.csv, audit_images.npz) for report tests.

The records are synthetic but shaped exactly like the auditor's; the aggregates, the worst cases
and the files are produced by the project's own code (:mod:`mri_audit.audit.aggregates`,
:func:`mri_audit.audit.panels.worst_records`), so the folder matches what ``mri-audit run`` writes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mri_audit.audit.aggregates import aggregate
from mri_audit.audit.journal import Journal
from mri_audit.audit.result import build_results
from mri_audit.files import atomic_write, to_jsonable, write_json
from mri_audit.fnaf.criteria import CRITERIA, QUANTITIES, make_criterion
from mri_audit.report.records_csv import write_csv

__all__ = ["build_audit_folder", "FNAF_ATTACKS"]

FNAF_ATTACKS = ("fnaf-rs", "fnaf-fd", "fnaf-pgd")
THRESHOLD, EPSILON, CANDIDATES, STEPS, WINDOW = 1e-3, 1e-4, 11, 10, 0.375
MARGIN, MIN_RECOVERY = 0.1, 0.5


def _phantom(size: int, k: int) -> np.ndarray:
    """A head-like phantom: an ellipse with a few inner structures, varying with ``k``."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    img = 0.8 * ((x / 0.72) ** 2 + (y / (0.9 - 0.02 * k)) ** 2 <= 1)
    img += 0.25 * (((x - 0.2) / 0.22) ** 2 + ((y + 0.1) / 0.35) ** 2 <= 1)
    img -= 0.3 * (((x + 0.25) / 0.18) ** 2 + ((y - 0.15 - 0.02 * k) / 0.28) ** 2 <= 1)
    return np.clip(img, 0, None).astype(np.float32) * 1e-4


def _window(size: int) -> tuple[int, int, int, int]:
    side = max(1, round(size * WINDOW))
    return (size - side) // 2, (size - side) // 2, side, side


def _walk(rng: np.random.Generator, size: int, t_max: float) -> dict:
    top, left, h, w = _window(size)
    r, c = int(rng.integers(top, top + h)), int(rng.integers(left, left + w))
    rows, cols, values = [], [], []
    for _ in range(STEPS):
        rows.append(r)
        cols.append(c)
        values.append(float(rng.uniform(0, t_max)))
        dr, dc = ((-1, 0), (1, 0), (0, -1), (0, 1))[int(rng.integers(4))]
        r, c = min(max(r + dr, top), top + h - 1), min(max(c + dc, left), left + w - 1)
    return {"rows": rows, "cols": cols, "values": values}


def _pick(rng, size, t_max, vulnerability: float, name: str) -> dict:
    """One criterion's selection: the quantities of its best admissible candidate."""
    feature = _walk(rng, size, t_max)
    r0 = float(rng.uniform(0.15, 0.7))
    r = float(r0 - rng.uniform(0.0, 0.3) * vulnerability)
    loss = float(np.exp(rng.normal(np.log(THRESHOLD * vulnerability), 1.0)))
    q = {
        "found": True,
        "r": r,
        "r0": r0,
        "e": r0 - r,
        "rho": float(r0 * rng.uniform(0.95, 1.05)),
        "loss": loss,
        "ip": float(EPSILON * np.exp(abs(rng.normal(1.0, 1.0)))),
        "region_nmse": loss * float(rng.uniform(20, 60)),
        "accepted": int(rng.integers(3, CANDIDATES + 1)),
        "row": round(sum(feature["rows"]) / STEPS, 2),
        "col": round(sum(feature["cols"]) / STEPS, 2),
    }
    q["score"] = {"erasure": min(q["e"], r0), "recovery": -r, "paper": loss}[name]
    return q | {"feature": feature}


def _fnaf(rng, size, t_max, vulnerability: float, others: Sequence[str], criterion: str) -> dict:
    control = float(np.exp(rng.normal(np.log(THRESHOLD * 0.08), 0.8)))
    if not rng.random() < 0.92:
        nan = float("nan")
        empty = dict.fromkeys(("score", "r", "r0", "e", "rho", "loss", "ip", "region_nmse"), nan)
        empty |= {"found": False, "accepted": 0, "row": None, "col": None}
        return empty | {
            "criterion": criterion,
            "control": control,
            "hit": False,
            "control_hit": False,
            "evaluated": CANDIDATES,
            "feature": None,
            "criteria": {name: dict(empty) for name in CRITERIA},
            "transfer": dict.fromkeys(others),
        }
    picks = {name: _pick(rng, size, t_max, vulnerability, name) for name in CRITERIA}
    chosen = picks[criterion]
    crit = make_criterion(criterion)
    hit = bool(crit.hit({k: torch.tensor([chosen[k]]) for k in QUANTITIES})[0])
    transfer = {}
    for o in others:
        replay = {k: chosen[k] * float(rng.uniform(0.8, 1.1)) for k in ("r", "r0", "loss", "ip")}
        replay["e"] = replay["r0"] - replay["r"]
        replay["score"] = {"erasure": min(replay["e"], replay["r0"]), "recovery": -replay["r"]}.get(
            criterion, replay["loss"]
        )
        tensors = {k: torch.tensor([v]) for k, v in replay.items()}
        transfer[o] = replay | {"hit": bool(crit.hit(tensors)[0])}
    return {k: v for k, v in chosen.items()} | {
        "criterion": criterion,
        "control": control,
        "hit": hit,
        "control_hit": bool(crit.control_hit(torch.tensor([control]))[0]),
        "evaluated": CANDIDATES,
        "criteria": {n: {k: v for k, v in p.items() if k != "feature"} for n, p in picks.items()},
        "transfer": transfer,
    }


def _degradation(rng, ssim: float) -> dict:
    adv = ssim - float(rng.uniform(0.05, 0.2))
    nmse0, nmse1 = float(rng.uniform(0.01, 0.03)), float(rng.uniform(0.04, 0.09))
    return {
        "found": False,
        "hit": False,
        "control_hit": False,
        "transfer": {},
        "perturbation": float(rng.uniform(0.009, 0.011)),
        "ssim_clean": ssim,
        "ssim_adv": adv,
        "nmse_clean": nmse0,
        "nmse_adv": nmse1,
        "psnr_clean": 30 + float(rng.normal()),
        "psnr_adv": 25 + float(rng.normal()),
    }


def _records(models, rng, size, volumes, slices, criterion) -> tuple[list[dict], dict]:
    records, targets = [], {}
    attacks = (*FNAF_ATTACKS, "kspace-pgd")
    for v in range(volumes):
        volume = f"file10{v:05d}.h5"
        for s in range(slices):
            target = _phantom(size, s)
            targets[(volume, s)] = target
            t_max = float(target.max())
            for m, model in enumerate(models):
                ssim = float(rng.uniform(0.78, 0.9)) - 0.03 * m
                sq_norm = float(np.square(target).sum())
                clean = {
                    "data_range": t_max,
                    "clean_ssim": ssim,
                    "clean_sq_err": sq_norm * float(rng.uniform(0.01, 0.03)),
                    "clean_sq_norm": sq_norm,
                    "clean_pixels": size * size,
                }
                others = [o for o in models if o != model]
                for attack in attacks:
                    if attack == "kspace-pgd":
                        rec = _degradation(rng, ssim)
                        kind = "degradation"
                    else:
                        rec = _fnaf(rng, size, t_max, 1.5 / (1 + m), others, criterion)
                        kind = "fnaf"
                    rec.update(model=model, attack=attack, kind=kind, volume=volume, slice=s)
                    rec.update(clean)
                    records.append(rec)
    return to_jsonable(records), targets


def _images(cases, targets, models, rng, size) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    stack = np.stack(list(targets.values()))
    arrays["mean_target"] = stack.mean(0).astype(np.float16)
    for i, case in enumerate(cases):
        base = targets[(case["volume"], int(case["slice"]))]
        d = np.zeros_like(base)
        f = case["feature"]
        for r, c, val in zip(f["rows"], f["cols"], f["values"], strict=True):
            d[r, c] = val
        target = base + d
        ghost = 0.2 * np.roll(target, size // 4, axis=1)
        blur = sum(np.roll(target, k, axis=1) for k in (-1, 0, 1)) / 3
        scale = float(target.max())
        zf = np.abs(blur + ghost + rng.normal(0, 0.03 * scale, target.shape))
        arrays[f"case{i}_zero_filled"] = zf.astype(np.float16)
        arrays[f"case{i}_target"] = target.astype(np.float16)
        for j, _ in enumerate(models):
            recon = base + d * (0.15 + 0.3 * j) + rng.normal(0, 0.01 * scale, target.shape)
            arrays[f"case{i}_model{j}"] = np.abs(recon).astype(np.float16)
    return arrays


def build_audit_folder(
    folder: str | Path,
    *,
    models: Sequence[str] = ("unet", "varnet"),
    volumes: int = 3,
    slices: int = 4,
    size: int = 96,
    max_attack_rate: float | None = 0.1,
    seed: int = 0,
    images: bool = True,
    records: bool = True,
    journal: bool = True,
    criterion: str = "erasure",
) -> Path:
    """Write a fake audit of ``models`` (the first is audited) into ``folder``.

    Args:
        folder: the audit output folder (created).
        models: model display names.
        volumes, slices: how many volumes and slices per volume.
        size: side of the (square) target in pixels.
        max_attack_rate: the ``--max-attack-rate`` of the verdict (None: no threshold).
        seed: seed of the fake numbers.
        images: write ``audit_images.npz``.
        records: write ``records.csv``.
        journal: write the journal ``records.jsonl`` (header line, then the records), which
            ``mri-audit report --criterion`` re-reads.
        criterion: the audit's criterion (``erasure``, ``recovery`` or ``paper``).

    Returns:
        the path of ``results.json``.
    """
    from mri_audit.audit.panels import worst_records

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    recs, targets = _records(list(models), rng, size, volumes, slices, criterion)
    thresholds = {"margin": MARGIN, "min_recovery": MIN_RECOVERY, "threshold": THRESHOLD}
    agg = aggregate(
        recs,
        criterion=make_criterion(criterion, **thresholds, ip_epsilon=EPSILON),
        max_attack_rate=max_attack_rate,
        primary=models[0],
    )
    cases = worst_records(recs, models[0])
    config = {
        "accel": 4.0,
        "center_fraction": None,
        "mask_type": "random",
        "attacks": [*FNAF_ATTACKS, "kspace-pgd"],
        "candidates": CANDIDATES,
        "feature_steps": STEPS,
        "criterion": criterion,
        **thresholds,
        "ip_epsilon": EPSILON,
        "window": WINDOW,
        "insert": "phase",
        "seed": 0,
        "batch_size": 16,
        "attack_options": {},
    }
    infos = [
        {
            "name": name,
            "spec": f"examples/{name}.py:Model",
            "kind": "python",
            "source": f"/work/examples/{name}.py",
            "source_sha256": f"{j + 1:x}" * 64,
            "weights": f"/work/weights/{name}.pt",
            "weights_sha256": f"{j + 10:x}" * 32,
            "domain": "image",
            "normalize": True,
            "parameters": 1_234_567 * (j + 1),
        }
        for j, name in enumerate(models)
    ]
    header = {
        "config": config,
        "models": infos,
        "data": {
            "kind": "synthetic",
            "source": "built-in synthetic phantoms (split=val, seed=0)",
            "volumes": volumes,
            "slices": volumes * slices,
            "target_shapes": [[size, size]],
            "coils": [4],
        },
    }
    results = build_results(
        header=header,
        aggregates=agg,
        worst_cases=cases,
        command_line=["mri-audit", "run", "--model", infos[0]["spec"]]
        + [a for i in infos[1:] for a in ("--compare", i["spec"])]
        + ["--max-attack-rate", str(max_attack_rate), "--out", str(folder.name)],
        versions={
            "mri_audit": "0.1.0",
            "python": "3.11.2",
            "torch": "2.3.0",
            "adversarial_robustness_toolbox": "1.17.1",
            "numpy": "1.26.4",
            "platform": "Linux-x86_64",
        },
        device="cpu",
        elapsed=123.4,
        started="2024-05-01T12:00:00+00:00",
    )
    results["complete"] = True  # a finished audit (finish_audit sets it after the report)
    if images:
        buf = io.BytesIO()
        np.savez_compressed(buf, **_images(cases, targets, models, rng, size))
        atomic_write(folder / "audit_images.npz", buf.getvalue())
    if records:
        write_csv(folder / "records.csv", recs)
    if journal:
        (folder / "records.jsonl").unlink(missing_ok=True)
        Journal(folder / "records.jsonl").append([{"kind": "header", **header}, *recs])
    write_json(folder / "results.json", results)
    return folder / "results.json"
