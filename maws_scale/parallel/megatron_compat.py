"""Let megatron-core 0.16.x run on a CPU-only machine (gloo): the one place that patches anything.

Some megatron-core paths allocate with ``device=torch.cuda.current_device()`` (``gather_output=True``, the
all-gather/scatter mappings, sequence parallelism's buffers) or fork the CUDA RNG (``model_parallel_cuda_manual_seed``,
``get_cuda_rng_tracker().fork()`` around dropout in tensor-parallel regions). Without CUDA those calls raise, or, for
``torch.cuda.manual_seed``, are silently queued and never run.

:func:`install` maps them onto the CPU **only when CUDA is absent** (on a GPU machine it does nothing and returns
False), and :func:`uninstall` restores every original. The mapping:

- ``torch.cuda.current_device()`` → ``torch.device("cpu")`` (megatron only uses it as a ``device=`` argument);
- ``torch.cuda.get_rng_state`` / ``set_rng_state`` / ``manual_seed`` → the CPU default generator, and megatron's own
  ``_get_cuda_rng_state`` / ``_set_cuda_rng_state`` likewise. On CPU every tensor draws from that generator, so a
  tracker fork of "the CUDA RNG" forks exactly the stream that CPU dropout uses — the semantics megatron wants;
- megatron's "CPU RNG state changed within GPU RNG context" warning is filtered: with one generator it always fires.

``torch.cuda.manual_seed_all`` is deliberately left alone (``torch.manual_seed`` calls it; mapping it would recurse).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

import torch

_RNG_LOGGER = "megatron.core.tensor_parallel.random"
_SPURIOUS_WARNING = "CPU RNG state changed within GPU RNG context"
_originals: dict[tuple[Any, str], Callable[..., Any]] = {}


class _DropSpuriousRngWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _SPURIOUS_WARNING not in record.getMessage()


_filter = _DropSpuriousRngWarning()


def needed() -> bool:
    """True when CUDA is absent, i.e. when megatron-core's CUDA-only calls would fail."""
    return not torch.cuda.is_available()


def is_installed() -> bool:
    """Whether the CPU mapping is currently active."""
    return bool(_originals)


def _cpu_current_device() -> torch.device:
    return torch.device("cpu")


def _cpu_get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


def _cpu_manual_seed(seed: int) -> None:
    torch.default_generator.manual_seed(int(seed))


def _patch(owner: Any, name: str, replacement: Callable[..., Any]) -> None:
    _originals[(owner, name)] = getattr(owner, name)
    setattr(owner, name, replacement)


def install() -> bool:
    """Map megatron-core's CUDA-only calls onto the CPU if CUDA is absent; idempotent. Returns whether it is active."""
    if not needed():
        return False
    if is_installed():
        return True
    megatron_random = importlib.import_module("megatron.core.tensor_parallel.random")
    _patch(torch.cuda, "current_device", _cpu_current_device)
    _patch(torch.cuda, "get_rng_state", _cpu_get_rng_state)
    _patch(torch.cuda, "set_rng_state", _cpu_set_rng_state)
    _patch(torch.cuda, "manual_seed", _cpu_manual_seed)
    _patch(torch.cuda.random, "get_rng_state", _cpu_get_rng_state)
    _patch(megatron_random, "_get_cuda_rng_state", _cpu_get_rng_state)
    _patch(megatron_random, "_set_cuda_rng_state", _cpu_set_rng_state)
    logging.getLogger(_RNG_LOGGER).addFilter(_filter)
    return True


def uninstall() -> None:
    """Restore every original that :func:`install` replaced (no-op when not installed)."""
    for (owner, name), original in reversed(list(_originals.items())):
        setattr(owner, name, original)
    _originals.clear()
    logging.getLogger(_RNG_LOGGER).removeFilter(_filter)
