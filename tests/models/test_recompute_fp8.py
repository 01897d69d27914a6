"""``selective_op`` with FP8 linears (issue 30 item 7b): what is saved, on CPU with torchao's real FP8 path
(``emulate=False``: ``torch._scaled_mm`` runs on CPU too)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import CheckpointPolicy, checkpoint
from torchao.float8 import Float8LinearConfig, convert_to_float8_training

from maws_scale.models.recompute import SAVED_OPS, save_matmuls, selective_contexts


class CountMatmuls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.mm.default, torch.ops.aten._scaled_mm.default):
            self.calls += 1
        return func(*args, **(kwargs or {}))


def fp8_mlp() -> nn.Module:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)).to(torch.bfloat16)
    config = dataclasses.replace(Float8LinearConfig.from_recipe_name("tensorwise"), emulate=False)
    convert_to_float8_training(mlp, config=config)
    return mlp


def backward_matmuls(**checkpoint_kwargs) -> int:
    mlp = fp8_mlp()
    x = torch.randn(16, 32, dtype=torch.bfloat16, requires_grad=True)
    y = checkpoint(mlp, x, use_reentrant=False, **checkpoint_kwargs)
    with CountMatmuls() as counter:
        y.float().sum().backward()
    return counter.calls


def test_a_direct_fp8_gemm_is_saved():
    assert torch.ops.aten._scaled_mm.default in SAVED_OPS
    assert save_matmuls(None, torch.ops.aten._scaled_mm.default) == CheckpointPolicy.MUST_SAVE


def test_selective_op_runs_no_fp8_linear_forward_again():
    """Full checkpointing recomputes the two FP8 forward matmuls in backward; ``selective_op`` none of them."""
    full = backward_matmuls()
    selective = backward_matmuls(context_fn=selective_contexts)
    assert full - selective == 2
