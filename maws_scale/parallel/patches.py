"""Every place maws-scale replaces or wraps code it does not own, in one module, each pinned to what it was written
against.

1. **Step guard** (:func:`route_optimizer_step`): the inner optimizer's ``step`` becomes an instance attribute that
   skips bad updates (``parallel/step_guard.py``). DeepSpeed's engine and its ZeRO / bf16 / fp16 optimizers call
   ``self.optimizer.step()`` on it; nothing of DeepSpeed is replaced.
2. **compile** (:func:`keep_eager`): under tensor parallelism the megatron-core layers' ``forward`` is wrapped in
   ``torch.compiler.disable`` so that Dynamo does not trace their collectives (``parallel/compile.py``).
3. **megatron-core on a CPU-only machine** (:func:`install_megatron_cpu`, below).

:data:`PINNED` lists the code each one relies on, with the package version it was read in and a hash of its source;
``tests/parallel/test_patches.py`` fails, naming the function, when an installed version or that source differs.
``constraints.txt`` pins the same versions.

**megatron-core on CPU.** Some megatron-core 0.16 paths allocate with ``device=torch.cuda.current_device()``
(``gather_output=True``, the all-gather/scatter mappings, sequence parallelism's buffers) or fork the CUDA RNG
(``model_parallel_cuda_manual_seed``, ``get_cuda_rng_tracker().fork()`` around dropout in tensor-parallel regions).
Without CUDA those calls raise, or, for ``torch.cuda.manual_seed``, are silently queued and never run.
:func:`install_megatron_cpu` maps them onto the CPU **only when CUDA is absent** (on a GPU machine it does nothing
and returns False), and :func:`uninstall_megatron_cpu` restores every original. The mapping:

- ``torch.cuda.current_device()`` → ``torch.device("cpu")`` (megatron only uses it as a ``device=`` argument);
- ``torch.cuda.get_rng_state`` / ``set_rng_state`` / ``manual_seed`` → the CPU default generator, and megatron's own
  ``_get_cuda_rng_state`` / ``_set_cuda_rng_state`` likewise. On CPU every tensor draws from that generator, so a
  tracker fork of "the CUDA RNG" forks exactly the stream that CPU dropout uses — the semantics megatron wants;
- megatron's "CPU RNG state changed within GPU RNG context" warning is filtered: with one generator it always fires.

``torch.cuda.manual_seed_all`` is deliberately left alone (``torch.manual_seed`` calls it; mapping it would recurse).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Pinned:
    """Code a patch relies on: ``module:qualname`` in ``package`` ``version``, whose source hashed to ``sha256``."""

    patch: str
    package: str
    version: str
    target: str
    sha256: str

    def resolve(self) -> Any:
        module, qualname = self.target.split(":")
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj

    def problem(self) -> str | None:
        """None when the installed package and the target's source are the pinned ones, else what differs."""
        installed = metadata.version(self.package).split("+")[0]
        if installed != self.version:
            return (
                f"{self.patch}: {self.package} {installed} is installed, the patch was written against {self.version}"
            )
        try:
            source = inspect.getsource(self.resolve())
        except (AttributeError, ImportError, OSError, TypeError) as err:
            return f"{self.patch}: {self.target} cannot be read ({type(err).__name__}: {err})"
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        if digest != self.sha256:
            return f"{self.patch}: the source of {self.target} changed ({digest}, pinned {self.sha256}); re-read it"
        return None


STEP = "step guard (DeepSpeed calls the inner optimizer's step())"
COMPILE = "compile (megatron layers kept eager)"
MEGATRON_CPU = "megatron-core on CPU"
PINNED: tuple[Pinned, ...] = (
    Pinned(
        STEP, "deepspeed", "0.19.8", "deepspeed.runtime.engine:DeepSpeedEngine._take_model_step", "c4c6e01aa1fc4e7d"
    ),
    Pinned(
        STEP,
        "deepspeed",
        "0.19.8",
        "deepspeed.runtime.zero.stage_1_and_2:DeepSpeedZeroOptimizer._optimizer_step",
        "d7e21affbbf9b696",
    ),
    Pinned(
        STEP,
        "deepspeed",
        "0.19.8",
        "deepspeed.runtime.zero.stage3:DeepSpeedZeroOptimizer_Stage3._optimizer_step",
        "35f8511bba5ff760",
    ),
    Pinned(STEP, "deepspeed", "0.19.8", "deepspeed.runtime.bf16_optimizer:BF16_Optimizer.step", "9b21d4a28f8714d9"),
    Pinned(
        STEP, "deepspeed", "0.19.8", "deepspeed.runtime.fp16.fused_optimizer:FP16_Optimizer.step", "b6f68ab9785efd33"
    ),
    Pinned(
        STEP,
        "deepspeed",
        "0.19.8",
        "deepspeed.runtime.fp16.unfused_optimizer:FP16_UnfusedOptimizer.step",
        "626bd9aa8af843e9",
    ),
    Pinned(
        COMPILE,
        "megatron-core",
        "0.16.1",
        "megatron.core.tensor_parallel.layers:ColumnParallelLinear.forward",
        "3f9d98f23b319c03",
    ),
    Pinned(
        COMPILE,
        "megatron-core",
        "0.16.1",
        "megatron.core.tensor_parallel.layers:RowParallelLinear.forward",
        "2148db9855a3b204",
    ),
    Pinned(
        MEGATRON_CPU,
        "megatron-core",
        "0.16.1",
        "megatron.core.tensor_parallel.random:_get_cuda_rng_state",
        "aa26caaa069c5c4f",
    ),
    Pinned(
        MEGATRON_CPU,
        "megatron-core",
        "0.16.1",
        "megatron.core.tensor_parallel.random:_set_cuda_rng_state",
        "b179c9d95438b61c",
    ),
    Pinned(MEGATRON_CPU, "torch", "2.13.0", "torch.cuda:current_device", "6e9804168a5c7f8c"),
    Pinned(MEGATRON_CPU, "torch", "2.13.0", "torch.cuda.random:get_rng_state", "1190f97901d79384"),
    Pinned(MEGATRON_CPU, "torch", "2.13.0", "torch.cuda.random:set_rng_state", "2aaed350f20b8569"),
    Pinned(MEGATRON_CPU, "torch", "2.13.0", "torch.cuda.random:manual_seed", "a71497712eba81c9"),
)


def pinned_problems(patch: str | None = None) -> list[str]:
    """What differs from the code every patch (or only ``patch``) was written against (empty when nothing does)."""
    pins = [pin for pin in PINNED if patch is None or pin.patch == patch]
    return [problem for pin in pins if (problem := pin.problem()) is not None]


_checked: set[str] = set()


def warn_if_changed(patch: str) -> list[str]:
    """Once per process and patch, when it is applied: a RuntimeWarning naming what differs from the code it was
    written against (another DeepSpeed / megatron-core / torch than ``constraints.txt`` pins); → the problems."""
    if patch in _checked:
        return []
    _checked.add(patch)
    problems = pinned_problems(patch)
    if problems:
        warnings.warn(
            "maws-scale was tested with the versions constraints.txt pins; " + "; ".join(problems),
            RuntimeWarning,
            stacklevel=3,
        )
    return problems


# ----- 1. step guard ----------------------------------------------------------------------------------------------
def route_optimizer_step(optimizer: torch.optim.Optimizer, step: Callable[..., Any]) -> Callable[..., Any]:
    """Make ``optimizer.step`` (what DeepSpeed calls) run ``step``; → the original bound ``step``."""
    warn_if_changed(STEP)
    original = optimizer.step
    optimizer.step = step  # instance attribute: DeepSpeed calls optimizer.step()
    return original


# ----- 2. compile -------------------------------------------------------------------------------------------------
def keep_eager(layer: nn.Module) -> None:
    """Keep ``layer.forward`` out of Dynamo's graphs (megatron's collectives inside autograd Functions)."""
    warn_if_changed(COMPILE)
    layer.forward = torch.compiler.disable(layer.forward)


# ----- 3. megatron-core on CPU ------------------------------------------------------------------------------------
_RNG_LOGGER = "megatron.core.tensor_parallel.random"
_SPURIOUS_WARNING = "CPU RNG state changed within GPU RNG context"
_originals: dict[tuple[Any, str], Callable[..., Any]] = {}


class _DropSpuriousRngWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _SPURIOUS_WARNING not in record.getMessage()


_filter = _DropSpuriousRngWarning()


def megatron_cpu_needed() -> bool:
    """True when CUDA is absent, i.e. when megatron-core's CUDA-only calls would fail."""
    return not torch.cuda.is_available()


def megatron_cpu_installed() -> bool:
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


def install_megatron_cpu() -> bool:
    """Map megatron-core's CUDA-only calls onto the CPU if CUDA is absent; idempotent. Returns whether it is active."""
    if not megatron_cpu_needed():
        return False
    if megatron_cpu_installed():
        return True
    megatron_random = importlib.import_module("megatron.core.tensor_parallel.random")
    warn_if_changed(MEGATRON_CPU)
    _patch(torch.cuda, "current_device", _cpu_current_device)
    _patch(torch.cuda, "get_rng_state", _cpu_get_rng_state)
    _patch(torch.cuda, "set_rng_state", _cpu_set_rng_state)
    _patch(torch.cuda, "manual_seed", _cpu_manual_seed)
    _patch(torch.cuda.random, "get_rng_state", _cpu_get_rng_state)
    _patch(megatron_random, "_get_cuda_rng_state", _cpu_get_rng_state)
    _patch(megatron_random, "_set_cuda_rng_state", _cpu_set_rng_state)
    logging.getLogger(_RNG_LOGGER).addFilter(_filter)
    return True


def uninstall_megatron_cpu() -> None:
    """Restore every original that :func:`install_megatron_cpu` replaced (no-op when not installed)."""
    for (owner, name), original in reversed(list(_originals.items())):
        setattr(owner, name, original)
    _originals.clear()
    logging.getLogger(_RNG_LOGGER).removeFilter(_filter)
