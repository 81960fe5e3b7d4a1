"""Keyed randomness: every random draw of mri-audit comes from here.

- Counter-based numbers keyed by (seed, volume, slice, candidate, draw) for the attacks and the
  map: :func:`candidate_keys`, :func:`uniform`, :func:`randint`.
- Integer seeds for numpy and torch generators: :func:`derive_seed` (the built-in phantoms and
  their dataset splits, through numpy's ``SeedSequence``) and :func:`mix_seed` (hardening's
  batches, masks and candidate searches, keyed by (seed, purpose, epoch, step, ...)). They stay
  two functions because each fixes streams that published results depend on (the built-in data,
  the example hardened weights); both are stable across runs, processes and machines.

Each draw is a 32-bit integer hash of its key, computed with torch integer ops on whatever
device the key tensors live on. The value of a draw depends only on its key, never on batch
position, chunking, process rank or device, which is what makes audits reproducible across batch
sizes, GPUs and ``torchrun`` shards. (``torch.Generator`` streams differ between CPU and CUDA
and depend on how many numbers were drawn before, so they cannot give that guarantee.)
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

__all__ = ["volume_key", "candidate_keys", "uniform", "randint", "derive_seed", "mix_seed"]

_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """The ``lowbias32`` integer hash (Wellons), on int64 tensors holding uint32 values."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def volume_key(name: str) -> int:
    """A stable 32-bit key for a volume name (CRC-32 of its UTF-8 bytes)."""
    return zlib.crc32(name.encode("utf-8")) & _M32


def candidate_keys(
    seed: int, volumes: torch.Tensor, slices: torch.Tensor, candidates: torch.Tensor
) -> torch.Tensor:
    """Combine (seed, volume key, slice, candidate) into one 32-bit key per candidate.

    Shape:
        volumes, slices, candidates: broadcastable int64 tensors; returns their broadcast shape.
    """
    key = _mix32(
        torch.as_tensor(seed & _M32, dtype=torch.int64, device=volumes.device) + 0x9E3779B9
    )
    for part in (volumes, slices, candidates):
        key = _mix32(key ^ _mix32(part.to(torch.int64) + 0x632BE5AB))
    return key


def _bits(keys: torch.Tensor, draw: int) -> torch.Tensor:
    return _mix32(keys ^ _mix32(torch.full_like(keys, (draw * 0x2545F491 + 0x5851F42D) & _M32)))


def uniform(keys: torch.Tensor, draw: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform numbers in [0, 1), one per key, for draw number ``draw`` (24-bit resolution)."""
    return (_bits(keys, draw) >> 8).to(dtype) * (1.0 / (1 << 24))


def randint(keys: torch.Tensor, draw: int, high: torch.Tensor | int) -> torch.Tensor:
    """Integers uniform in ``[0, high)``, one per key (``high`` may vary per key)."""
    high_t = torch.as_tensor(high, device=keys.device, dtype=torch.int64)
    return (_bits(keys, draw) * high_t) >> 32


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit integer seed derived deterministically from ``seed`` and extra integer keys
    (numpy's ``SeedSequence``; the built-in phantoms are drawn from these)."""
    state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers by a 64-bit multiply-xorshift chain (hardening's keys)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF
