"""The trainer pins the attention backend at set-up: xformers with activation checkpointing trains (CPU stand-in op)."""

from __future__ import annotations

import math

from cuda_standins import xformers_cpu_standin

from maws_scale.config import load_config
from maws_scale.models.layers import Attention
from maws_scale.train.loop import Trainer

from .conftest import TINY


def test_xformers_with_activation_checkpointing_trains_three_steps(world, tmp_path):
    """Before: the probe ran in checkpointed block 0 (its own backward there), failed, and the recompute raised
    CheckpointError (a different number of saved tensors) on the first backward."""
    cfg = load_config(
        None,
        [
            *TINY,
            "model.attention=xformers",
            "parallel.activation_checkpointing=true",
            "data.synthetic=true",
            "train.global_batch=4",
            "train.micro_batch=4",
            "train.steps=3",
            f"output_dir={tmp_path}",
        ],
    )
    with xformers_cpu_standin() as calls:
        trainer = Trainer(cfg, world)
        result = trainer.run()
        attention = [m for m in trainer.engine.module.modules() if isinstance(m, Attention)]
    assert {m.backend for m in attention} == {"xformers"}  # pinned at set-up, and it works
    assert result.steps == 3 and all(math.isfinite(x) for x in result.losses)
    assert calls[0] == 1 + 3 * 2 * len(attention)  # the probe, then forward + recompute of every block, every step
