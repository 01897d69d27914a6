"""The DeepSpeed settings a config gets follow the device DeepSpeed runs on, not whether CUDA is present (issue 30
item 7g): on a GPU node the suite's in-process engines run on DeepSpeed's CPU accelerator (tests/conftest.py pins
``DS_ACCELERATOR=cpu``) and must get the CPU settings their tests assume (no ``overlap_comm``, CPU buckets)."""

from __future__ import annotations

import pytest
import torch

from maws_scale.config import load_config
from maws_scale.parallel.ds_config import CPU_BUCKET, build_ds_config, deepspeed_device


def cfg_for(zero_stage: int):
    return load_config(
        None,
        ["model.name=vit_micro_p4", "train.global_batch=4", "train.micro_batch=2", f"parallel.zero_stage={zero_stage}"],
    )


@pytest.mark.parametrize("zero_stage", [1, 2])
@pytest.mark.parametrize("cuda", [False, True], ids=["cpu-node", "gpu-node"])
def test_settings_follow_deepspeeds_accelerator_on_a_gpu_node(monkeypatch, zero_stage, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)  # both machines, whatever this one is
    assert deepspeed_device() == "cpu"  # the suite's pin (tests/conftest.py)
    zero = build_ds_config(cfg_for(zero_stage), 1, 1, None)["zero_optimization"]
    assert zero["overlap_comm"] is False and zero["contiguous_gradients"] is False
    assert zero["reduce_bucket_size"] == CPU_BUCKET


def test_the_cuda_settings_where_deepspeed_runs_on_cuda():
    zero = build_ds_config(cfg_for(1), 1, 1, None, device="cuda")["zero_optimization"]
    assert zero["overlap_comm"] is True and zero["contiguous_gradients"] is True
