"""Synthetic knee-like volumes and fastMRI-format HDF5 files.

A phantom is a coronal knee-like cross-section built from signed distance functions: a limb with a
thick subcutaneous fat layer, muscle compartments separated by dark fascia, a femur (shaft and two
condyles) and a tibia (plateau and shaft), each with bright marrow inside a dark cortical rim,
cartilage hugging the articular surfaces, a joint capsule, dark menisci and cruciate ligaments.
Tissues carry smooth (low-pass filtered) texture; the image gets a smooth multiplicative bias field
and a smooth phase; multi-coil images are weighted by smooth coil sensitivities whose
root-sum-of-squares is 1; complex gaussian noise is added in k-space. Anatomy varies slowly with the
slice index. Every bright structure is at least ~10 px across at 320 px, so the phantoms hold *no*
small bright features: inserting one (an FNAF) is a meaningful test.

Everything is deterministic for a seed (numpy ``Generator`` streams, no global state).
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import torch
from tqdm import tqdm

from mri_audit.data.fastmri_io import ismrmrd_header
from mri_audit.mri.physics import center_crop, fft2c, ifft2c, rss
from mri_audit.rng import derive_seed

__all__ = [
    "PhantomVolume",
    "make_volume",
    "coil_sensitivities",
    "write_volume",
    "synth_dataset",
]

logger = logging.getLogger(__name__)


class PhantomVolume(NamedTuple):
    """One synthetic volume.

    Attributes:
        kspace: fully-sampled k-space, ``np.complex64``.
        target: the reference magnitude, ``np.float32``: centre crop of ``|ifft2c(kspace)|``
            (single-coil) or of the RSS over coils (multi-coil).

    Shape:
        kspace: ``(slices, coils, H, W)``; target: ``(slices, size, size)``.
    """

    kspace: np.ndarray
    target: np.ndarray


# ---------------------------------------------------------------------------------------------
# Geometry helpers (signed distances in normalised units: the anatomy square spans [-1, 1]).


def _sd_box(px: np.ndarray, py: np.ndarray, hx, hy, r) -> np.ndarray:
    """Signed distance to a box with half extents ``(hx, hy)`` and corner radius ``r``."""
    qx = np.abs(px) - hx + r
    qy = np.abs(py) - hy + r
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0) - r


def _sd_capsule(px, py, ax, ay, bx, by, r) -> np.ndarray:
    """Signed distance to a capsule (segment ``a-b`` thickened by ``r``)."""
    pax, pay, bax, bay = px - ax, py - ay, bx - ax, by - ay
    h = np.clip((pax * bax + pay * bay) / (bax * bax + bay * bay), 0, 1)
    return np.hypot(pax - bax * h, pay - bay * h) - r


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth union of two signed distances (polynomial smooth minimum, blend width ``k``)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0, 1)
    return b + (a - b) * h - k * h * (1 - h)


def _inside(d: np.ndarray, width: float) -> np.ndarray:
    """Soft indicator of ``d < 0`` with an edge about ``width`` wide (anti-aliasing)."""
    return 0.5 - 0.5 * np.tanh(d / (2 * width))


# The size whose random stream the others follow after the texture (the built-in set's size, so
# its volumes are the same as they always were).
_REFERENCE_SIZE = 160
_NOISE_PAD = 3  # slices of padding so the periodic filter does not tie the first and last slices


def _advance_like_noise(rng: np.random.Generator, slices: int, n: int) -> None:
    """Advance ``rng`` exactly as :func:`_smooth_noise` of ``(slices, n, n)`` does."""
    rng.standard_normal((slices + 2 * _NOISE_PAD, n, n), dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], sigmas_px) -> list:
    """Unit-variance gaussian-filtered noise fields, smooth across slices as well.

    Returns one field per in-plane sigma (pixels), all from one white-noise draw.

    Shape:
        returns a list of ``(slices, n, n)`` float32 arrays.
    """
    slices, n, _ = shape
    pad = _NOISE_PAD
    white = rng.standard_normal((slices + 2 * pad, n, n), dtype=np.float32)
    spec = np.fft.rfftn(white)
    fz = np.fft.fftfreq(slices + 2 * pad)[:, None, None]
    fy = np.fft.fftfreq(n)[None, :, None]
    fx = np.fft.rfftfreq(n)[None, None, :]
    out = []
    for sigma in sigmas_px:
        gain = np.exp(-2 * np.pi**2 * (sigma**2 * (fy**2 + fx**2) + 1.0 * fz**2))
        field = np.fft.irfftn(spec * gain, s=white.shape, axes=(0, 1, 2))[pad : pad + slices]
        field = (field - field.mean()) / (field.std() + 1e-12)
        out.append(field.astype(np.float32))
    return out


# ---------------------------------------------------------------------------------------------
# Anatomy.


def _anatomy(rng: np.random.Generator, slices: int, size: int) -> np.ndarray:
    """Magnitude images of the knee-like anatomy (before bias field and scaling).

    Shape:
        returns ``(slices, size, size)`` float32 in roughly ``[0, 1]``.
    """
    half = size / 2
    px_ = 1.0 / half  # one pixel in normalised units

    def u(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    s = np.linspace(-1, 1, slices, dtype=np.float32) if slices > 1 else np.zeros(1, np.float32)
    s = s[:, None, None]  # slice position in [-1, 1]; anatomy changes smoothly with it

    coords = (np.arange(size, dtype=np.float32) - (size - 1) / 2) / half
    y0, x0 = coords[None, :, None], coords[None, None, :]
    angle = u(-0.12, 0.12) + 0.03 * s
    cos, sin = np.cos(angle), np.sin(angle)
    x = cos * x0 + sin * y0
    y = -sin * x0 + cos * y0

    # Intensities (PD-weighted, no fat suppression), jittered per volume.
    fat, muscle, marrow = u(0.85, 0.95), u(0.32, 0.42), u(0.72, 0.84)
    cortex, cartilage, fluid = u(0.04, 0.08), u(0.52, 0.6), u(0.44, 0.5)
    meniscus, ligament = u(0.06, 0.1), u(0.12, 0.18)

    # Shapes, each varying smoothly with the slice position s.
    j0 = u(-0.06, 0.1) + 0.02 * s  # joint line
    shift = u(-0.05, 0.05) + 0.03 * s
    limb_w = u(0.7, 0.8) * (1 - 0.06 * s**2)
    fat_t = max(u(0.1, 0.13), 11 * px_)
    cort_t = max(0.03, 2 * px_)
    cart_t = max(u(0.065, 0.075), 12 * px_)
    gap = 2 * cart_t * u(0.9, 1.0)  # bone surfaces a little closer than two cartilage layers
    cond_r = u(0.17, 0.2) * (1 - 0.2 * s**2)
    cond_dx = u(0.17, 0.21) * (1 + 0.08 * s)
    cond_cy = j0 - gap / 2 - cond_r
    shaft_w = u(0.15, 0.19) * (1 - 0.08 * s**2)
    plat_w = u(0.36, 0.42) * (1 - 0.12 * s**2)
    corner = max(0.09, cort_t + 7 * px_)  # bone corner radius: marrow corners stay round
    plat_h = max(u(0.09, 0.11), corner)
    plat_cy = j0 + gap / 2 + plat_h
    tshaft_w = u(0.13, 0.17) * (1 - 0.08 * s**2)
    fx, tx = shift + u(-0.03, 0.03), shift + u(-0.03, 0.03)

    edge = 0.6 * px_
    d_limb = _sd_box(x - shift, y, limb_w, 0.9, 0.35)
    top, bottom = -0.66 + 0.02 * s, 0.66 + 0.02 * s  # shafts end inside the muscle
    femur = _sd_box(x - fx, y - (cond_cy + top) / 2, shaft_w, (cond_cy - top) / 2, corner)
    for side in (-1, 1):
        femur = _smin(femur, np.hypot(x - fx - side * cond_dx, y - cond_cy) - cond_r, 0.08)
    tibia = _smin(
        _sd_box(x - tx, y - plat_cy, plat_w, plat_h, corner),
        _sd_box(x - tx, y - (plat_cy + bottom) / 2, tshaft_w, (bottom - plat_cy) / 2, corner),
        0.1,
    )

    state = rng.bit_generator.state
    tex_fine, tex_coarse = _smooth_noise(
        rng, (slices, size, size), (max(0.015 * half, 2.5), max(0.05 * half, 6.0))
    )
    if size != _REFERENCE_SIZE:
        # Every draw after the texture (fascia, gains, bias field, phase, peak intensity) is
        # the reference size's, so one seed gives the same anatomy at every size.
        rng.bit_generator.state = state
        _advance_like_noise(rng, slices, _REFERENCE_SIZE)

    def paint(img, value, weight):
        return img + (value - img) * weight

    img = np.zeros((slices, size, size), np.float32)
    img = paint(img, fat * (1 + 0.025 * tex_fine + 0.04 * tex_coarse), _inside(d_limb, edge))
    # Muscle compartments (slightly different intensities) split by thin dark fascia.
    fascia_x = [u(-0.55, -0.4), u(0.4, 0.55)]
    left_gain, right_gain = u(0.88, 1.12), u(0.88, 1.12)
    part = np.where(x - shift < fascia_x[0], left_gain, 1.0)
    part = np.where(x - shift > fascia_x[1], right_gain, part)
    musc = muscle * part * (1 + 0.05 * tex_fine + 0.08 * tex_coarse)
    d_caps = _sd_box(x - tx, y - j0, plat_w + max(0.08, 13 * px_), 0.22, 0.15)
    away = 1 - _inside(d_caps - max(0.12, 16 * px_), 0.03)  # fascia stops short of the joint
    for fxi in fascia_x:
        wobble = fxi + 0.04 * np.sin(2.5 * y + u(0, 2 * np.pi))
        line = _inside(np.abs(x - shift - wobble) - 0.7 * px_, edge)
        musc = musc * (1 - 0.65 * line * away)
    img = paint(img, musc, _inside(d_limb + fat_t, edge))
    inner = _inside(d_limb + fat_t, edge)
    img = paint(img, fluid * (1 + 0.03 * tex_coarse), _inside(d_caps, edge) * inner)
    d_lig = _sd_capsule(x, y, fx - 0.04, cond_cy, tx + 0.04, j0 + 0.07, max(0.025, 2 * px_))
    img = paint(img, ligament, _inside(d_lig, edge))
    # Menisci: dark wedges at the outer edges of the joint.
    for side in (-1, 1):
        out = side * (x - tx) - (plat_w - 0.2)
        d_men = np.maximum(np.abs(y - j0) - 0.01 - 0.25 * np.clip(out, 0, None), -out)
        d_men = np.maximum(d_men, out - 0.24)
        img = paint(img, meniscus, _inside(d_men, edge))
    # Cartilage: bands on the distal femur and the tibial plateau.
    below = _inside(cond_cy - y, 0.02)
    img = paint(img, cartilage, _inside(femur - cart_t, edge) * below)
    above = _inside(y - plat_cy, 0.02) * _inside(np.abs(x - tx) - plat_w + 0.02, 0.02)
    img = paint(img, cartilage, _inside(tibia - cart_t, edge) * above)
    # Bones: dark cortex, bright textured marrow.
    for bone in (femur, tibia):
        img = paint(img, cortex, _inside(bone, edge))
        tex = marrow * (1 + 0.03 * tex_fine + 0.05 * tex_coarse)
        img = paint(img, tex, _inside(bone + cort_t, edge))
    return np.clip(img, 0, None).astype(np.float32)


def _bias_and_phase(rng: np.random.Generator, slices: int, size: int) -> np.ndarray:
    """Smooth multiplicative bias field times a smooth (low-order polynomial) phase.

    Shape:
        returns ``(slices, size, size)`` complex128.
    """
    c = (np.arange(size) - (size - 1) / 2) / (size / 2)
    y, x = c[None, :, None], c[None, None, :]
    s = np.linspace(-1, 1, slices)[:, None, None] if slices > 1 else np.zeros((1, 1, 1))
    b = rng.uniform(-0.15, 0.15, size=4)
    bias = np.exp(b[0] * x + b[1] * y + b[2] * (x * x + y * y) + b[3] * x * y)
    p = rng.uniform(-1, 1, size=7) * np.array([np.pi, 0.8, 0.8, 0.5, 0.5, 0.5, 0.3])
    phase = p[0] + p[1] * x + p[2] * y + p[3] * x * y + p[4] * x * x + p[5] * y * y + p[6] * s
    return bias * np.exp(1j * phase)


def coil_sensitivities(
    coils: int, size: int, *, seed: int = 0, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Smooth coil sensitivities around the field of view, normalised to RSS = 1.

    Each coil is a gaussian blob centred on a ring just outside the anatomy, with a smooth
    (linear) phase; dividing by the root-sum-of-squares over coils makes it 1 everywhere.

    Args:
        coils: number of coils (1 gives all ones).
        size: side of the square grid.
        seed: seed of the coil placement (when no ``rng`` is given).
        rng: generator to draw the placement from.

    Shape:
        returns ``(coils, size, size)`` complex128.
    """
    if coils == 1:
        return np.ones((1, size, size), np.complex128)
    rng = rng if rng is not None else np.random.default_rng(seed)
    c = (np.arange(size) - (size - 1) / 2) / (size / 2)
    y, x = c[None, :, None], c[None, None, :]
    theta = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(coils) / coils
    theta = theta + rng.uniform(-0.2, 0.2, coils)
    radius = rng.uniform(1.05, 1.3, coils)[:, None, None]
    sigma = rng.uniform(0.55, 0.8, coils)[:, None, None]
    cx, cy = radius * np.cos(theta)[:, None, None], radius * np.sin(theta)[:, None, None]
    mag = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    scales = np.array([np.pi, 0.6, 0.6])[:, None, None, None]
    ph = rng.uniform(-1, 1, (3, coils))[..., None, None] * scales
    sens = mag * np.exp(1j * (ph[0] + ph[1] * x + ph[2] * y))
    return sens / np.sqrt((np.abs(sens) ** 2).sum(axis=0, keepdims=True))


def make_volume(
    seed: int,
    *,
    slices: int = 8,
    size: int = 320,
    coils: int = 1,
    kspace_shape: tuple[int, int] | None = None,
    noise: float = 0.02,
) -> PhantomVolume:
    """Build one deterministic knee-like volume.

    Args:
        seed: the volume's seed; the same seed gives identical arrays.
        slices: number of slices (anatomy varies smoothly across them).
        size: side of the square target (the anatomy fills the central ``size x size``).
        coils: number of receive coils (1 = single-coil).
        kspace_shape: k-space grid ``(H, W)``, at least ``(size, size)``; a larger grid mimics
            readout oversampling (fastMRI knee: 640x368 for a 320x320 target).
        noise: standard deviation of the complex k-space noise, per coil, relative to the
            noiseless image maximum (the FFT is orthonormal, so it is the image noise level too).

    Returns:
        The k-space and its fastMRI target (``reconstruction_esc`` / ``reconstruction_rss``).

    Shape:
        kspace: ``(slices, coils, H, W)`` complex64; target: ``(slices, size, size)`` float32.
    """
    kh, kw = kspace_shape if kspace_shape is not None else (size, size)
    if slices < 1 or coils < 1 or size < 16:
        raise ValueError(f"need slices >= 1, coils >= 1, size >= 16; got {slices}, {coils}, {size}")
    if kh < size or kw < size:
        raise ValueError(f"k-space grid {kh}x{kw} is smaller than the target {size}x{size}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    streams = np.random.SeedSequence(int(seed)).spawn(3)
    anat_rng, coil_rng, noise_rng = (np.random.default_rng(s) for s in streams)
    image = _anatomy(anat_rng, slices, size) * _bias_and_phase(anat_rng, slices, size)
    target_peak = 10 ** anat_rng.uniform(np.log10(2e-4), np.log10(8e-4))
    image = (image * (target_peak / np.abs(image).max())).astype(np.complex64)
    sens = coil_sensitivities(coils, size, rng=coil_rng).astype(np.complex64)
    top, left = (kh - size) // 2, (kw - size) // 2
    sigma = noise * target_peak / np.sqrt(2)
    kspace = np.empty((slices, coils, kh, kw), np.complex64)
    target = np.empty((slices, size, size), np.float32)
    grid = torch.zeros((coils, kh, kw), dtype=torch.complex64)
    for i in range(slices):  # per slice keeps memory bounded for many coils and big grids
        grid[:, top : top + size, left : left + size] = torch.from_numpy(image[i] * sens)
        k = fft2c(grid)
        if sigma > 0:
            white = noise_rng.standard_normal((coils, kh, kw, 2), dtype=np.float32)
            k += sigma * torch.view_as_complex(torch.from_numpy(white))
        kspace[i] = k.numpy()
        target[i] = center_crop(rss(ifft2c(k), dim=0), (size, size)).numpy()
    return PhantomVolume(kspace=kspace, target=target)


# ---------------------------------------------------------------------------------------------
# fastMRI-format files.


def write_volume(path: str | os.PathLike, volume: PhantomVolume, *, patient_id: str) -> None:
    """Write a volume as a fastMRI HDF5 file, atomically (temp file in the same folder + rename).

    Single-coil volumes get ``kspace (slices, H, W)`` and ``reconstruction_esc``; multi-coil ones
    ``kspace (slices, coils, H, W)`` and ``reconstruction_rss``; attrs ``max``, ``norm``,
    ``acquisition`` and ``patient_id``; and an ``ismrmrd_header``.
    """
    path = Path(path)
    slices, coils, kh, kw = volume.kspace.shape
    size = volume.target.shape[-2:]
    multicoil = coils > 1
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with h5py.File(tmp, "w") as hf:
            kspace = volume.kspace if multicoil else volume.kspace[:, 0]
            hf.create_dataset("kspace", data=kspace.astype(np.complex64, copy=False))
            key = "reconstruction_rss" if multicoil else "reconstruction_esc"
            hf.create_dataset(key, data=volume.target.astype(np.float32, copy=False))
            header = ismrmrd_header((kh, kw), size, slices)
            hf.create_dataset("ismrmrd_header", data=np.bytes_(header))
            hf.attrs["max"] = float(volume.target.max())
            hf.attrs["norm"] = float(np.linalg.norm(volume.target.astype(np.float64)))
            hf.attrs["acquisition"] = "CORPD_FBK"
            hf.attrs["patient_id"] = str(patient_id)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def synth_dataset(
    out_dir: str | os.PathLike,
    *,
    volumes: int,
    slices: int,
    size: int,
    coils: int,
    seed: int = 0,
    kspace_shape: tuple[int, int] | None = None,
    prefix: str = "synth",
    noise: float = 0.02,
) -> list[Path]:
    """Write ``volumes`` phantom volumes as ``{prefix}_{i:04d}.h5`` into ``out_dir``.

    Volume ``i`` is seeded by :func:`derive_seed` ``(seed, i)``, so a file does not depend on how
    many others are written.

    Returns:
        The written paths, in order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in tqdm(range(volumes), desc="phantoms", unit="vol", disable=None, leave=False):
        vol = make_volume(
            derive_seed(seed, i),
            slices=slices,
            size=size,
            coils=coils,
            kspace_shape=kspace_shape,
            noise=noise,
        )
        path = out / f"{prefix}_{i:04d}.h5"
        write_volume(path, vol, patient_id=f"{prefix}-{seed}-{i:04d}")
        logger.debug("wrote %s", path)
        paths.append(path)
    return paths
