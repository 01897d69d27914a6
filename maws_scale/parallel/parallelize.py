"""Apply parallelism to a plain model from outside, in torchtitan's order: TP → FP8 → activation checkpointing → ZeRO
(→ ``model.compile``, applied on the engine by ``parallel/compile.py``).

``parallelize`` does the first two and returns a plan; ZeRO is the DeepSpeed engine that ``parallel/engine.py``
wraps around ``plan.model`` (handing it ``plan.mpu`` when tensor parallelism made one). Everything downstream
(the loop, checkpoints, data sharding) reads the data-parallel rank/size from the plan and stays TP-agnostic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from maws_scale.config import RunConfig
from maws_scale.parallel.distributed import DistInfo
from maws_scale.parallel.fp8 import apply_fp8


@dataclass
class ParallelPlan:
    """What the training loop needs to know about how the model is split (same fields as TensorParallelPlan)."""

    model: nn.Module
    mpu: Any
    dp_rank: int
    dp_size: int
    tp_rank: int
    tp_size: int
    wsp_criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None


def parallelize(model: nn.Module, cfg: RunConfig, info: DistInfo) -> Any:
    """Tensor-parallelize ``model`` when ``parallel.tp > 1``, convert to FP8 (``parallel.fp8``), then switch on
    per-block activation checkpointing.

    Returns a plan with ``model``, ``mpu`` (None without TP), ``dp_rank``, ``dp_size``, ``tp_rank``, ``tp_size`` and
    ``wsp_criterion`` (soft-target CE; the vocab-parallel one under TP, which takes local logits + full targets).
    """
    if cfg.parallel.tp > 1:
        from maws_scale.parallel.tensor_parallel import apply_tensor_parallel

        plan = apply_tensor_parallel(model, cfg, info)
        if plan.wsp_criterion is None and cfg.stage == "wsp":
            from maws_scale.models.heads import soft_target_cross_entropy

            plan.wsp_criterion = soft_target_cross_entropy  # head kept whole: the plain criterion applies
    else:
        from maws_scale.models.heads import soft_target_cross_entropy

        plan = ParallelPlan(
            model=model,
            mpu=None,
            dp_rank=info.rank,
            dp_size=info.world_size,
            tp_rank=0,
            tp_size=1,
            wsp_criterion=soft_target_cross_entropy,
        )
    apply_fp8(plan.model, cfg, info.device)  # parallel.fp8: before checkpointing and compile, as in torchtitan
    if hasattr(plan.model, "set_grad_checkpointing"):
        plan.model.set_grad_checkpointing(cfg.parallel.activation_checkpointing)
    elif cfg.parallel.activation_checkpointing:
        raise TypeError(f"parallel.activation_checkpointing: {type(plan.model).__name__} cannot checkpoint per block")
    return plan
