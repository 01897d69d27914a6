"""The plain-PyTorch loop ``maws-scale bench --baseline`` times beside our stack, step by step in the same process.

Same model (the stage's own ``build_model``: our class, attention backend, kernels and checkpointing mode), same
batches, same loss (the stage's ``loss``), same optimizer (:func:`maws_scale.parallel.optimizer.build_optimizer`, same
parameter groups and implementation), fp32 weights with ``torch.autocast`` for bf16 / fp16. What it leaves out is
what our step adds: DeepSpeed (ZeRO partitioning, gradient buckets, its mixed-precision optimizer), the skip guard,
the LR schedule, the loss reductions. Several ranks: ``DistributedDataParallel`` (``no_sync`` on all but the last
micro-batch), the plain way to train data-parallel.

:func:`interleave` runs two step functions A/B alternately, step by step (ABBA order, so neither always goes first),
after an interleaved warm-up: load on a shared machine and a process warming up hit both sides alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from maws_scale.config import RunConfig

ENCODER = "the stage's model ({name}), plain PyTorch loop (AdamW of build_optimizer, autocast for 16-bit)"


class PlainLoop:
    """One optimizer step per :meth:`step` of the stage's model in a plain PyTorch loop (see the module docstring)."""

    def __init__(self, cfg: RunConfig, stage: Any, batches: list[dict], accum: int, device: torch.device) -> None:
        from maws_scale.parallel.optimizer import build_optimizer

        torch.manual_seed(cfg.seed)
        self.stage, self.accum, self.device = stage, accum, device
        self.model: nn.Module = stage.build_model(device=device).to(device=device, dtype=torch.float32)
        self.model.train()
        self.optimizer = build_optimizer(self.model, cfg)
        self.net: nn.Module = self.model
        if dist.is_initialized() and dist.get_world_size() > 1:
            self.net = nn.parallel.DistributedDataParallel(self.model)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.parallel.precision)
        self.amp = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else nullcontext
        self.batches = batches
        self.index = 0
        self.last_loss: torch.Tensor | None = None

    def _next(self) -> dict:
        batch = self.batches[self.index % len(self.batches)]
        self.index += 1
        return batch

    def step(self) -> None:
        for micro in range(self.accum):
            last = micro == self.accum - 1
            sync = self.net.no_sync() if not last and self.net is not self.model else nullcontext()
            with sync:
                with self.amp():
                    loss, _ = self.stage.loss(self.net, self._next(), self.device, torch.float32)
                (loss / self.accum).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_loss = loss.detach()


@dataclass
class ABTimes:
    """Per-step wall and process-CPU seconds of the two sides, in the order they ran (warm-up excluded)."""

    a_s: list[float] = field(default_factory=list)
    b_s: list[float] = field(default_factory=list)
    a_cpu_s: list[float] = field(default_factory=list)
    b_cpu_s: list[float] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # "A" / "B" per timed step, warm-up included (tests, logs)


def interleave(
    a: Callable[[], Any],
    b: Callable[[], Any] | None,
    steps: int,
    warmup: int,
    sync: Callable[[], None] = lambda: None,
) -> ABTimes:
    """Run ``warmup`` then ``steps`` steps of each side, alternating A B B A A B …; time each step (``sync`` after
    each, e.g. ``torch.cuda.synchronize``). ``b`` None: A alone."""
    out = ABTimes()
    for i in range(warmup + steps):
        pair = (("A", a), ("B", b)) if i % 2 == 0 else (("B", b), ("A", a))
        pair = tuple(p for p in pair if p[1] is not None)
        for name, fn in pair:
            cpu, start = time.process_time(), time.perf_counter()
            fn()
            sync()
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            out.order.append(name)
            if i >= warmup:
                (out.a_s if name == "A" else out.b_s).append(wall)
                (out.a_cpu_s if name == "A" else out.b_cpu_s).append(cpu)
    return out


def cycle(batches: list[dict]) -> Iterator[dict]:
    """The batches, forever."""
    while True:
        yield from batches


__all__ = ["ENCODER", "ABTimes", "PlainLoop", "cycle", "interleave"]
