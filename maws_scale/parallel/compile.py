"""``model.compile``: torch.compile applied from outside, after the model is wrapped (``initialize_engine`` calls it).

* ``blocks`` (regional compilation, torchtitan style): the ``forward`` of every transformer ``Block`` is compiled
  in place. The blocks of one stack share their code and shapes, so Dynamo traces one graph per stack (encoder, MAE
  decoder) and reuses it for every block: compile time does not grow with depth. Masking, the loss, the Triton
  kernels and DeepSpeed's ZeRO-3 gather / release hooks (around ``forward``) stay eager, between the blocks;
  activation checkpointing wraps the compiled block (the recompute calls the same compiled graph). Under tensor
  parallelism the megatron-core layers (collectives inside their autograd Functions) run eagerly between the
  compiled pieces of the block: traced by Dynamo, they gave wrong gradients with activation checkpointing
  (measured, TP=2 WSP: ``cls_token`` gradient off by 8.6; ``tests/parallel/test_tp_dist.py`` checks the fix).
* ``full``: the whole model, through DeepSpeed's ``engine.compile()`` (its supported path: it compiles
  ``engine.module`` in place). Under ZeRO-3 or tensor parallelism it is downgraded to ``blocks`` with one warning
  (:func:`effective_compile`).

Both compile in place, so parameter names, checkpoints and ``consolidated.pt`` keep clean keys (``torch.compile``
of a module would return an ``OptimizedModule`` whose keys carry ``_orig_mod.``). Shapes are static
(``dynamic=False``): a ViT's shapes do not change during a run, and a shape change (the encoder and decoder stacks
differ) gets its own static graph instead of a slower dynamic one.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch import nn

from maws_scale.config import RunConfig
from maws_scale.parallel.patches import keep_eager

log = logging.getLogger("maws_scale.parallel")


class CompileDowngradeWarning(UserWarning):
    """``model.compile`` asked for something this run cannot do; set-up compiles less (or nothing) and says so."""


def compile_blocks(model: nn.Module, backend: Any = "inductor") -> int:
    """Compile every transformer block of ``model`` in place; → how many blocks."""
    from maws_scale.models.layers import Block

    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for block in blocks:
        for layer in block.modules():  # tensor parallelism's megatron layers stay eager (see the module docstring)
            if any(c.__module__.startswith("megatron.") for c in type(layer).__mro__):
                keep_eager(layer)  # parallel/patches.py
        # the forward, not the module call: hooks around it (ZeRO-3's gather / release) stay eager, outside the graph
        block.forward = torch.compile(block.forward, backend=backend, dynamic=False)
    return len(blocks)


def effective_compile(cfg: RunConfig) -> tuple[str, str | None]:
    """The compile mode this run can use, and why it differs from ``model.compile`` (None when it does not).

    ``full`` becomes ``blocks`` under ZeRO-3, whose per-module gather / release hooks Dynamo then traces and
    re-traces (measured with DeepSpeed 0.19.8 on a 3-block MAE: its recompile limit of 8 hit within 3 steps, those
    hooks then run uncompiled), and under tensor parallelism, whose collectives outside the blocks would be graph
    breaks with nothing left to gain."""
    mode = cfg.model.compile
    if mode == "full" and cfg.parallel.zero_stage == 3:
        return "blocks", "model.compile=full with parallel.zero_stage=3 re-traces ZeRO-3's hooks: compiling the blocks"
    if mode == "full" and cfg.parallel.tp > 1:
        return "blocks", f"model.compile=full with parallel.tp={cfg.parallel.tp}: compiling the blocks only"
    return mode, None


def apply_compile(engine: Any, cfg: RunConfig, backend: Any = None) -> str:
    """Compile ``engine.module`` per ``model.compile`` (once, at set-up); → the mode applied.

    ``backend`` overrides ``model.compile_backend`` (tests pass a counting backend). A mode this run cannot use is
    downgraded with one :class:`CompileDowngradeWarning`."""
    mode, why = effective_compile(cfg)
    if why is not None:
        warnings.warn(why, CompileDowngradeWarning, stacklevel=2)
    if mode != "none":
        from maws_scale.kernels.dispatch import prepare_compile

        prepare_compile()
    backend = backend if backend is not None else cfg.model.compile_backend
    if mode == "blocks":
        count = compile_blocks(engine.module, backend)
        log.info("model.compile=blocks: %d blocks compiled (backend %s)", count, backend)
    elif mode == "full":
        engine.compile(backend=backend, compile_kwargs={"dynamic": False})
        log.info("model.compile=full: engine.compile(backend=%s)", backend)
    return mode
