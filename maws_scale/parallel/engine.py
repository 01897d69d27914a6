"""The DeepSpeed engine: the model built under ``deepspeed.zero.Init`` where ZeRO-3 needs it, ``deepspeed.initialize``
with our guarded optimizer and the filled config (``parallel/ds_config.py``), and the LR set per step."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from maws_scale.config import RunConfig
from maws_scale.parallel.compile import apply_compile
from maws_scale.parallel.layout import uses_zero_init as zero_init_rule
from maws_scale.parallel.optimizer import build_optimizer, layer_decay_of, param_groups
from maws_scale.parallel.step_guard import StepGuard

log = logging.getLogger("maws_scale.parallel")


def precision_dtype(precision: str) -> torch.dtype:
    """The parameter dtype of ``parallel.precision`` (fp32, bf16 or fp16)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def uses_zero_init(cfg: RunConfig) -> bool:
    """Whether the model is built under ``deepspeed.zero.Init``: ZeRO-3 without TP (a TP rank builds on meta and
    materialises only its shard, which the engine then partitions): the rule of :mod:`maws_scale.parallel.layout`."""
    return zero_init_rule(cfg.parallel.zero_stage, cfg.parallel.tp)


@contextlib.contextmanager
def model_init_context(cfg: RunConfig, ds_config: dict[str, Any], mpu: Any = None) -> Iterator[None]:
    """Build the model under ``deepspeed.zero.Init`` for ZeRO-3 (partitioned as it is built, issue #5443)."""
    if not uses_zero_init(cfg):
        yield
        return
    import deepspeed

    dtype = precision_dtype(cfg.parallel.precision)
    # DeepSpeed 0.19.8 `runtime/zero/partition_parameters.py::Init._set_dtype` reads
    #     self.dtype = dtype or torch.float16 if get_accelerator().is_fp16_supported() else torch.bfloat16 if ...
    # which parses as `(dtype or fp16) if fp16_supported else bf16`: on an accelerator without fp16 (CPUs without
    # mkldnn fp16, e.g. AMD without AVX-512) an explicit `dtype` is ignored and every parameter is built in bf16.
    # Its other branch (`dtype=None`: the dtype from the config's bf16/fp16 sections, else fp32) is correct on every
    # accelerator, so we take that one and check the outcome rather than trust the parse.
    context = deepspeed.zero.Init(config_dict_or_path=ds_config, dtype=None, mpu=mpu)
    if context.dtype != dtype:
        raise RuntimeError(
            f"deepspeed.zero.Init would build {context.dtype} parameters for parallel.precision="
            f"{cfg.parallel.precision} ({dtype}): the DeepSpeed config's bf16/fp16 sections disagree with the run"
        )
    with context:
        yield


def initialize_engine(
    model: nn.Module, cfg: RunConfig, ds_config: dict[str, Any], mpu: Any = None
) -> tuple[Any, StepGuard]:
    """``deepspeed.initialize`` with our optimizer (guarded) and the filled config; returns (engine, guard)."""
    import deepspeed

    if not any(hasattr(p, "ds_id") for p in model.parameters()):
        from deepspeed.accelerator import get_accelerator

        model.to(torch.device(get_accelerator().current_device_name()))  # where DeepSpeed will run it (cpu for gloo)
    optimizer = build_optimizer(model, cfg)
    guard = StepGuard(optimizer, mpu=mpu)
    guard.group_hparams = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in optimizer.param_groups]
    guard.group_names = [g["names"] for g in param_groups(model, cfg.optim.weight_decay, layer_decay_of(cfg))]
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config, mpu=mpu)
    skip_one_rank_allreduce(engine)
    # DeepSpeed drives our optimizer directly only in fp32 ZeRO-0; everywhere else it checks the grad norm itself
    guard.check_grads = engine.optimizer is optimizer
    apply_compile(engine, cfg)  # model.compile: in place, after DeepSpeed's hooks exist
    return engine, guard


def skip_one_rank_allreduce(engine: Any) -> bool:
    """ZeRO-0 on one data-parallel rank: turn off the engine's gradient all-reduce after backward (flatten, all-reduce
    over the one rank, copy back: the identity) with DeepSpeed's public ``enable_backward_allreduce`` flag; → whether
    it was off. ZeRO 1-3 keep DeepSpeed's own step (their one-rank reduction is DeepSpeed's fixed per-tensor cost,
    ``benchmarks/RESULTS.md``)."""
    if engine.dp_world_size != 1 or engine.zero_optimization_stage() != 0:
        return False
    engine.enable_backward_allreduce = False
    log.info("one data-parallel rank: ZeRO-0 backward all-reduce skipped (identity)")
    return True


def set_lr(engine: Any, lr: float) -> None:
    """Set the LR of every parameter group (ZeRO optimizers proxy ``param_groups`` to the inner optimizer), times
    the group's ``lr_scale`` where it has one (layer-wise LR decay)."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
