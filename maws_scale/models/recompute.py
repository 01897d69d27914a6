"""Activation recompute modes for a stack of transformer blocks (``parallel.activation_checkpointing``, the config
key keeps its name).

- ``none``: every block keeps what autograd saves.
- ``full``: every block is recomputed in backward (``torch.utils.checkpoint``, non-reentrant); it keeps its input.
- ``every_k:<k>``: blocks ``k-1, 2k-1, …`` (every k-th, torchtitan's counting) are recomputed, the others keep
  their activations; ``every_k:1`` is ``full``.
- ``selective_op``: every block is checkpointed with a selective policy (``create_selective_checkpoint_contexts``):
  the outputs of matrix multiplies and fused attention (:data:`SAVED_OPS`) are kept, everything else (norms, GELU,
  residual adds, reshapes) is recomputed — no matmul runs twice. With ``parallel.fp8`` the policy sees torchao's FP8
  linears as ``aten.mm`` on float8 tensors (their ``_scaled_mm`` runs beneath it) and keeps their outputs too.

:func:`recomputed_blocks` is the one rule of which blocks are recomputed; the model and the planner's activation
model (:mod:`maws_scale.perf.activations`) both use it. ``true`` / ``false`` (the old boolean) mean full / none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from maws_scale.models.recompute_modes import MODES, parse_mode, recomputed_blocks

_aten = torch.ops.aten
SAVED_OPS = tuple(
    op
    for op in (
        _aten.mm.default,
        _aten.addmm.default,
        _aten.bmm.default,
        _aten.baddbmm.default,
        _aten._scaled_dot_product_flash_attention.default,
        _aten._scaled_dot_product_flash_attention_for_cpu.default,
        _aten._scaled_dot_product_efficient_attention.default,
        _aten._scaled_dot_product_cudnn_attention.default,
        _aten._scaled_mm.default,  # an FP8 GEMM called directly (torchao's Float8Linear reaches the policy as aten.mm)
    )
)


def save_matmuls(ctx: Any, func: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    """The ``selective_op`` policy: keep matmul / attention outputs, recompute everything else."""
    return CheckpointPolicy.MUST_SAVE if func in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def selective_contexts() -> tuple[Any, Any]:
    """Fresh forward / recompute contexts of the ``selective_op`` policy (one pair per checkpointed call)."""
    return create_selective_checkpoint_contexts(save_matmuls)


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, mode: str, *args: Any) -> torch.Tensor:
    """Apply ``blocks`` in order, checkpointed as ``mode`` says (``*args`` go to every block after ``x``)."""
    blocks = list(blocks)
    mode = parse_mode(mode) if torch.is_grad_enabled() else "none"
    context_fn: Callable | None = _selective if mode == "selective_op" else None
    for block, ckpt in zip(blocks, recomputed_blocks(mode, len(blocks)), strict=True):
        if not ckpt:
            x = block(x, *args)
        elif context_fn is not None:
            x = checkpoint(block, x, *args, use_reentrant=False, context_fn=context_fn)
        else:
            x = checkpoint(block, x, *args, use_reentrant=False)
    return x


def _selective() -> tuple[Any, Any]:
    return selective_contexts()  # looked up at call time, so tests can observe the contexts


__all__ = ["MODES", "SAVED_OPS", "parse_mode", "recomputed_blocks", "run_blocks", "save_matmuls"]
