"""bf16 ZeRO-1 with fp32 gradient accumulation (DeepSpeed's BF16_Optimizer): consolidation reads its fp32 masters."""

from __future__ import annotations

import math

import torch

from maws_scale.config import load_config
from maws_scale.train.loop import Trainer


def test_bf16_zero1_consolidates_the_fp32_masters(world, tmp_path):
    cfg = load_config(
        None,
        [
            "model.name=vit_micro_p4",
            "data.synthetic=true",
            "optim.impl=torch",
            "tracking.enabled=false",
            "train.global_batch=8",
            "train.micro_batch=4",
            "train.steps=2",
            "parallel.precision=bf16",
            "parallel.zero_stage=1",
            f"output_dir={tmp_path}",
        ],
    )
    trainer = Trainer(cfg, world)
    result = trainer.run()
    assert type(trainer.engine.optimizer).__name__ == "BF16_Optimizer"  # what fp32 accumulation selects at ZeRO-1
    assert all(math.isfinite(x) for x in result.losses)
    state = torch.load(result.consolidated, map_location="cpu", weights_only=True)
    params = dict(trainer.engine.module.named_parameters())
    trained = [n for n, p in params.items() if p.requires_grad]
    assert set(params) <= set(state) and all(v.dtype == torch.float32 for v in state.values())
    for name in trained:
        assert torch.equal(state[name].bfloat16(), params[name].detach()), name  # the masters round to the module
    assert any(not torch.equal(state[n], state[n].bfloat16().float()) for n in trained)  # ... and are not bf16
