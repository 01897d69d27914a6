"""Waiting for rank-0 work (evaluation, universal-checkpoint conversion, consolidation) without the NCCL watchdog.

A ``dist.barrier()`` on the default group times out after the process group's timeout (30 min) and, on NCCL, is a
collective the watchdog kills the job for. These waits use a separate gloo group with its own, long timeout
(``parallel.wait_minutes``); ranks blocked in it hold no NCCL work. The group is made on first use — every rank
reaches the same wait at the same point, so every rank makes it there — and kept per timeout.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch.distributed as dist

DEFAULT_WAIT_MINUTES = 1440.0
_GROUPS: dict[float, Any] = {}


def wait_group(minutes: float = DEFAULT_WAIT_MINUTES) -> Any:
    """The gloo group with a ``minutes`` timeout over all ranks (collective on first use)."""
    if minutes not in _GROUPS:
        _GROUPS[minutes] = dist.new_group(backend="gloo", timeout=timedelta(minutes=minutes))
    return _GROUPS[minutes]


def forget_groups() -> None:
    """Drop the cached groups (before the world is destroyed; a new world makes new ones)."""
    _GROUPS.clear()


def wait_for_rank0(minutes: float = DEFAULT_WAIT_MINUTES) -> None:
    """Barrier for all ranks with a ``minutes`` timeout, in gloo (no-op without a multi-rank world)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    dist.barrier(group=wait_group(minutes))
