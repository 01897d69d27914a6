"""The bench baseline gets the device to itself: releasing our engine frees the optimizer (~12 bytes/param)."""

from __future__ import annotations

import gc
import weakref

import pytest

from maws_scale.config import load_config
from maws_scale.perf.profile import BenchOptions, _release_engine, bench_config, loader_factory
from maws_scale.train.loop import Trainer


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_releasing_the_engine_frees_the_optimizer_and_the_model(world, tmp_path, zero_stage):
    cfg = load_config(
        None,
        [
            "model.name=vit_micro_p4",
            "train.global_batch=4",
            "train.micro_batch=4",
            "optim.impl=torch",
            "parallel.precision=fp32",
            f"parallel.zero_stage={zero_stage}",
            "tracking.enabled=false",
            f"output_dir={tmp_path}",
        ],
    )
    opts = BenchOptions(steps=1, warmup=0)
    trainer = Trainer(bench_config(cfg, opts), world, loader_factory=loader_factory(opts, world.device))
    trainer.setup()
    trainer.train_step(iter(trainer.loader))
    optimizer = weakref.ref(trainer.guard.optimizer)
    params = [weakref.ref(p) for p in trainer.engine.module.parameters()]
    _release_engine(trainer, world.device)
    gc.collect()
    assert optimizer() is None, "the released trainer still holds the optimizer"
    assert all(p() is None for p in params)
    trainer.tracker.finish("FINISHED")
