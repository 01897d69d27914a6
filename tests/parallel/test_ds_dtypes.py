"""Gradient accumulation and reduction dtypes: written into the DeepSpeed config and used by the engine it builds."""

from __future__ import annotations

import pytest
import torch

from maws_scale.config import ConfigError, load_config
from maws_scale.models import build_mae
from maws_scale.parallel.ds_config import BlockInfo, build_ds_config
from maws_scale.parallel.engine import initialize_engine


def cfg_for(*overrides: str):
    return load_config(
        None, ["model.name=vit_micro_p4", "train.global_batch=4", "train.micro_batch=2", "optim.impl=torch", *overrides]
    )


@pytest.fixture(scope="module")
def world():
    from maws_scale.parallel.distributed import init_distributed

    return init_distributed("gloo")


def test_bf16_defaults_to_fp32_accumulation_and_reduction():
    ds = build_ds_config(cfg_for("parallel.zero_stage=3"), 1, 2, BlockInfo.from_model(build_mae("vit_micro_p4")))
    assert ds["data_types"]["grad_accum_dtype"] == "fp32"
    assert ds["communication_data_type"] == "fp32"


def test_the_reduction_dtype_is_configurable_and_model_keeps_the_model_dtype():
    ds = build_ds_config(cfg_for("parallel.comm_dtype=bf16", "parallel.grad_accum_dtype=model"), 1, 2, None)
    assert ds["communication_data_type"] == "bf16" and ds["data_types"]["grad_accum_dtype"] == "bf16"


def test_zero0_cannot_accumulate_a_bf16_model_in_fp32():
    with pytest.raises(ConfigError, match=r"parallel\.grad_accum_dtype.*zero_stage>=1"):
        build_ds_config(cfg_for("parallel.zero_stage=0"), 1, 2, None)
    ds = build_ds_config(cfg_for("parallel.zero_stage=0", "parallel.grad_accum_dtype=model"), 1, 2, None)
    assert ds["data_types"]["grad_accum_dtype"] == "bf16"


@pytest.mark.parametrize("zero_stage", [1, 2, 3])
def test_the_engine_accumulates_and_reduces_bf16_gradients_in_fp32(world, zero_stage):
    """What DeepSpeed 0.19.8 builds from our config (without the keys it fell back to bf16 for both)."""
    cfg = cfg_for(f"parallel.zero_stage={zero_stage}", "parallel.precision=bf16")
    model = build_mae("vit_micro_p4")
    ds = build_ds_config(cfg, 1, 2, BlockInfo.from_model(model))
    engine, _ = initialize_engine(model, cfg, ds)
    assert engine.get_data_types() == (torch.bfloat16, torch.float32)
    assert engine.communication_data_type == torch.float32
    optimizer = engine.optimizer
    accum = getattr(optimizer, "gradient_accumulation_dtype", getattr(optimizer, "grad_acc_dtype", None))
    assert accum == torch.float32, type(optimizer).__name__
    images = torch.randn(2, 3, model.img_size, model.img_size, dtype=torch.bfloat16)
    for _ in range(2):  # one optimizer step of two micro-batches trains
        loss, _, _ = engine(images)
        engine.backward(loss)
        engine.step()
    assert engine.global_steps == 1 and torch.isfinite(loss).item()
