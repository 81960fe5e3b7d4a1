"""Resolving ``--device`` once, at the edge."""

from __future__ import annotations

import re

import torch

from mri_audit.errors import DeviceError

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(spec: str | None = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a usable :class:`torch.device`.

    ``auto`` picks the first CUDA device when there is one, else the CPU.

    Raises:
        DeviceError: the spec is malformed, or names a CUDA device this machine lacks.
    """
    spec = (spec or "auto").strip().lower()
    if not _DEVICE_RE.match(spec):
        raise DeviceError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"--device {spec} asked for CUDA but no CUDA device is available; "
            "use --device cpu (or auto)"
        )
    device = torch.device(spec)
    index = device.index or 0
    if index >= torch.cuda.device_count():
        raise DeviceError(
            f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here "
            f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
        )
    return device
