"""ZeRO-3 builds parameters in the dtype the run asks for, whatever the accelerator says about fp16.

DeepSpeed 0.19.8's ``zero.Init`` ignores an explicit ``dtype`` when ``is_fp16_supported()`` is False (CPUs without
mkldnn fp16); both answers of that capability check are forced here, so the result does not depend on this CPU.
"""

from __future__ import annotations

import pytest
import torch

from maws_scale.config import load_config
from maws_scale.models import build_mae
from maws_scale.parallel.ds_config import BlockInfo, build_ds_config
from maws_scale.parallel.engine import model_init_context

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("fp16_supported", [False, True], ids=["no-fp16-accelerator", "fp16-accelerator"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_zero3_builds_the_requested_dtype(world, monkeypatch, precision, fp16_supported):
    from deepspeed.accelerator import get_accelerator

    monkeypatch.setattr(type(get_accelerator()), "is_fp16_supported", lambda self: fp16_supported)
    assert get_accelerator().is_fp16_supported() is fp16_supported
    cfg = load_config(
        None,
        [
            "model.name=vit_micro_p4",
            "parallel.zero_stage=3",
            f"parallel.precision={precision}",
            "train.global_batch=8",
            "train.micro_batch=8",
        ],
    )
    blocks = BlockInfo.from_model(build_mae("vit_micro_p4", device="meta"))
    ds_config = build_ds_config(cfg, dp_size=1, grad_accum=1, blocks=blocks)
    with model_init_context(cfg, ds_config):
        model = build_mae("vit_micro_p4")
    dtypes = {p.ds_tensor.dtype for p in model.parameters()}
    assert dtypes == {DTYPES[precision]}, f"{precision} asked, ZeRO-3 built {dtypes}"
    assert all(hasattr(p, "ds_id") for p in model.parameters())  # really partitioned by zero.Init


def test_a_config_that_disagrees_with_the_precision_is_refused(world):
    cfg = load_config(None, ["model.name=vit_micro_p4", "parallel.zero_stage=3", "parallel.precision=fp32"])
    blocks = BlockInfo.from_model(build_mae("vit_micro_p4", device="meta"))
    ds_config = build_ds_config(
        cfg, dp_size=1, grad_accum=cfg.train.global_batch // cfg.train.micro_batch, blocks=blocks
    )
    ds_config["bf16"] = {"enabled": True}
    with pytest.raises(RuntimeError, match=r"parallel.precision=fp32"), model_init_context(cfg, ds_config):
        pass


def test_zero3_leaves_torchs_linear_alone(world):
    """DeepSpeed's ``memory_efficient_linear`` (on by default) replaces ``torch.nn.functional.linear`` for the rest of
    the process; on torch 2.11, Dynamo traced the replacement into wrong gradients for every later compiled model
    (tests/parallel/test_compile.py). The filled ZeRO-3 configs turn it off; turned on, the check sees the patch."""
    cfg = load_config(None, ["model.name=vit_micro_p4", "parallel.zero_stage=3", "parallel.precision=fp32"])
    blocks = BlockInfo.from_model(build_mae("vit_micro_p4", device="meta"))
    ds_config = build_ds_config(
        cfg, dp_size=1, grad_accum=cfg.train.global_batch // cfg.train.micro_batch, blocks=blocks
    )
    assert ds_config["zero_optimization"]["memory_efficient_linear"] is False
    torchs_linear = torch._C._nn.linear
    assert torch.nn.functional.linear is torchs_linear, "an earlier test left DeepSpeed's linear in place"
    with model_init_context(cfg, ds_config):
        build_mae("vit_micro_p4")
    assert torch.nn.functional.linear is torchs_linear
    ds_config["zero_optimization"]["memory_efficient_linear"] = True
    try:
        with model_init_context(cfg, ds_config):
            build_mae("vit_micro_p4")
        assert torch.nn.functional.linear is not torchs_linear  # DeepSpeed's default: patched, and it stays
    finally:
        torch.nn.functional.linear = torchs_linear
