"""Many processes (``torchrun``): process-group set-up, sharding, gathering, rank-0 output.

Audits shard whole slice batches across ranks, so each batch is computed exactly as in a
single process; because every random draw is keyed by (seed, volume, slice, candidate), the
merged records equal a single-process run's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

from mri_audit.device import resolve_device
from mri_audit.errors import MriAuditError

__all__ = ["DistEnv", "init_distributed", "shutdown", "agree", "gather", "broadcast", "barrier"]

logger = logging.getLogger(__name__)


class DistEnv(NamedTuple):
    """This process's place in the job (``world_size`` 1 when not distributed)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str) -> tuple[DistEnv, torch.device]:
    """Join the ``torchrun`` process group when there is one; resolve this rank's device.

    NCCL with one GPU per local rank when the device is CUDA, gloo on the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv(0, 1, 0), resolve_device(device_spec)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec)
    if device.type == "cuda":
        if device_spec in ("auto", "cuda"):
            device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    logger.info("rank %d/%d on %s (%s)", rank, world, device, backend)
    return DistEnv(rank, world, local), device


def shutdown(env: DistEnv, *, wait: bool = False) -> None:
    """Leave the process group; with ``wait`` (a clean finish), first wait for every rank, so no
    rank tears the group down while rank 0 is still writing (a torn group aborts the others)."""
    if env.enabled and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def gather(env: DistEnv, obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (in rank order); None elsewhere."""
    if not env.enabled:
        return [obj]
    out = [None] * env.world_size if env.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast(env: DistEnv, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree(env: DistEnv, step: Callable[[], Any]) -> Any:
    """Run ``step`` on rank 0 only; every rank gets its result or raises its user error."""
    result, error, original = None, None, None
    if env.is_main:
        try:
            result = step()
        except MriAuditError as err:
            error = (type(err).__name__, str(err), err.exit_code)
            original = err
    error = broadcast(env, error)
    if error is not None:
        if original is not None:
            raise original
        err = MriAuditError(error[1])
        err.exit_code = error[2]
        raise err
    return broadcast(env, result)
