"""A realistic fake audit folder (results.json, records.csv, audit_images.npz) for report tests.

The records are synthetic but shaped exactly like the auditor's; the aggregates, the worst cases
and the files are produced by the project's own code (:mod:`mri_audit.results`,
:func:`mri_audit.panels.worst_records`), so the folder matches what ``mri-audit run`` writes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mri_audit.journal import to_jsonable
from mri_audit.outputs import build_results
from mri_audit.results import aggregate, atomic_write, write_csv, write_json

__all__ = ["build_audit_folder", "FNAF_ATTACKS"]

FNAF_ATTACKS = ("fnaf-rs", "fnaf-fd", "fnaf-pgd")
THRESHOLD, EPSILON, CANDIDATES, STEPS, WINDOW = 1e-3, 1e-4, 11, 10, 0.375


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


def _fnaf(rng, size, t_max, vulnerability: float, others: Sequence[str]) -> dict:
    found = bool(rng.random() < 0.92)
    if not found:
        nan = float("nan")
        return {
            "found": False,
            "loss": nan,
            "region_nmse": nan,
            "ip": nan,
            "rho": nan,
            "control": nan,
            "hit": False,
            "control_hit": False,
            "evaluated": CANDIDATES,
            "accepted": 0,
            "feature": None,
            "row": None,
            "col": None,
            "transfer": dict.fromkeys(others),
        }
    loss = float(np.exp(rng.normal(np.log(THRESHOLD * vulnerability), 1.0)))
    control = float(np.exp(rng.normal(np.log(THRESHOLD * 0.08), 0.8)))
    feature = _walk(rng, size, t_max)
    return {
        "found": True,
        "loss": loss,
        "region_nmse": loss * float(rng.uniform(20, 60)),
        "ip": float(EPSILON * np.exp(abs(rng.normal(1.0, 1.0)))),
        "rho": float(rng.uniform(0.15, 0.65)),
        "control": control,
        "hit": loss >= THRESHOLD,
        "control_hit": control >= THRESHOLD,
        "evaluated": CANDIDATES,
        "accepted": int(rng.integers(3, CANDIDATES + 1)),
        "feature": feature,
        "row": round(sum(feature["rows"]) / STEPS, 2),
        "col": round(sum(feature["cols"]) / STEPS, 2),
        "transfer": {
            o: {"hit": bool(loss >= THRESHOLD and rng.random() < 0.8), "loss": loss * 0.9}
            for o in others
        },
    }


def _degradation(rng, ssim: float) -> dict:
    nan = float("nan")
    adv = ssim - float(rng.uniform(0.05, 0.2))
    nmse0, nmse1 = float(rng.uniform(0.01, 0.03)), float(rng.uniform(0.04, 0.09))
    return {
        "found": False,
        "loss": nan,
        "region_nmse": nan,
        "ip": nan,
        "rho": nan,
        "control": nan,
        "hit": False,
        "control_hit": False,
        "evaluated": 1,
        "accepted": 0,
        "feature": None,
        "row": None,
        "col": None,
        "transfer": {},
        "perturbation": float(rng.uniform(0.009, 0.011)),
        "ssim_clean": ssim,
        "ssim_adv": adv,
        "nmse_clean": nmse0,
        "nmse_adv": nmse1,
        "psnr_clean": 30 + float(rng.normal()),
        "psnr_adv": 25 + float(rng.normal()),
    }


def _records(models, rng, size, volumes, slices) -> tuple[list[dict], dict]:
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
                        rec = _fnaf(rng, size, t_max, 1.5 / (1 + m), others)
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

    Returns:
        the path of ``results.json``.
    """
    from mri_audit.panels import worst_records

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    recs, targets = _records(list(models), rng, size, volumes, slices)
    agg = aggregate(recs, threshold=THRESHOLD, max_attack_rate=max_attack_rate, primary=models[0])
    cases = worst_records(recs, models[0])
    config = {
        "accel": 4.0,
        "center_fraction": None,
        "mask_type": "random",
        "attacks": [*FNAF_ATTACKS, "kspace-pgd"],
        "candidates": CANDIDATES,
        "feature_steps": STEPS,
        "threshold": THRESHOLD,
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
    if images:
        buf = io.BytesIO()
        np.savez_compressed(buf, **_images(cases, targets, models, rng, size))
        atomic_write(folder / "audit_images.npz", buf.getvalue())
    if records:
        write_csv(folder / "records.csv", recs)
    write_json(folder / "results.json", results)
    return folder / "results.json"
