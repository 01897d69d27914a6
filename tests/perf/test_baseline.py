"""The bench methodology: the plain loop trains the same model class with the same optimizer, the two sides run
interleaved step by step (ABBA) after the configured warm-up, and build_optimizer is torch's fused AdamW on CPU under
every ZeRO stage."""

from __future__ import annotations

import math

import pytest
import torch

from maws_scale.config import ConfigError, load_config
from maws_scale.parallel.optimizer import build_optimizer
from maws_scale.perf import profile
from maws_scale.perf.baseline import PlainLoop, interleave
from maws_scale.perf.profile import BenchOptions, bench_config, loader_factory
from maws_scale.train.loop import Trainer


def test_interleave_runs_abba_after_the_configured_warmup() -> None:
    calls = {"A": 0, "B": 0}
    times = interleave(
        lambda: calls.__setitem__("A", calls["A"] + 1), lambda: calls.__setitem__("B", calls["B"] + 1), 4, 3
    )
    assert calls == {"A": 7, "B": 7}
    assert "".join(times.order) == "ABBAABBAABBAAB"
    assert len(times.a_s) == len(times.b_s) == len(times.a_cpu_s) == len(times.b_cpu_s) == 4
    alone = interleave(lambda: None, None, 2, 5)
    assert alone.order == ["A"] * 7 and len(alone.a_s) == 2 and alone.b_s == []


def _trainer(world, tmp_path, *overrides: str) -> Trainer:
    cfg = load_config(
        None,
        [
            "model.name=vit_micro_p4",
            "train.global_batch=4",
            "train.micro_batch=2",
            "optim.impl=torch",
            "parallel.precision=fp32",
            "tracking.enabled=false",
            f"output_dir={tmp_path}",
            *overrides,
        ],
    )
    opts = BenchOptions(steps=1, warmup=0)
    trainer = Trainer(bench_config(cfg, opts), world, loader_factory=loader_factory(opts, world.device))
    trainer.setup()
    return trainer


@pytest.mark.parametrize("stage", ["mae", "wsp"])
def test_plain_loop_trains_our_model_class_with_our_optimizer(world, tmp_path, stage: str) -> None:
    trainer = _trainer(world, tmp_path, f"stage={stage}", "wsp.num_classes=10", "parallel.zero_stage=1")
    plain = PlainLoop(trainer.cfg, trainer.stage, trainer.loader.batches, trainer.accum, world.device)
    assert type(plain.model) is type(trainer.engine.module)
    assert type(plain.optimizer) is type(trainer.guard.optimizer) and plain.optimizer.defaults["fused"]
    assert [len(g["params"]) for g in plain.optimizer.param_groups] == [
        len(n) for n in trainer.guard.group_names
    ]  # the same weight-decay groups
    before = [p.detach().clone() for p in plain.model.parameters() if p.requires_grad]
    plain.step()
    plain.step()
    assert plain.index == 2 * trainer.accum  # accum micro-batches per step, cycling the trainer's batches
    assert math.isfinite(float(plain.last_loss)) and float(plain.last_loss) > 0
    after = [p for p in plain.model.parameters() if p.requires_grad]
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    trainer.tracker.finish("FINISHED")


@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
def test_fused_adamw_on_cpu_under_every_zero_stage(world, tmp_path, zero_stage: int) -> None:
    trainer = _trainer(world, tmp_path, f"parallel.zero_stage={zero_stage}")
    inner = trainer.guard.optimizer
    assert isinstance(inner, torch.optim.AdamW) and inner.defaults["fused"] is True
    batches = iter(trainer.loader)
    losses = [trainer.train_step(batches) for _ in range(3)]
    assert all(math.isfinite(loss) and not skipped for loss, skipped in losses)
    state = next(iter(inner.state.values()))
    assert int(state["step"]) == 3 and state["exp_avg"].abs().sum() > 0  # the fused kernel really stepped
    trainer.tracker.finish("FINISHED")


def test_fused_adamw_matches_the_default_on_cpu() -> None:
    cfg = load_config(None, ["model.name=vit_micro_p4", "optim.impl=torch"])
    from maws_scale.model_config import build_model

    results = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = build_model(cfg)
        opt = build_optimizer(model, cfg)
        assert opt.defaults["fused"] is True
        if not fused:
            keep = ("lr", "betas", "eps", "weight_decay")
            opt = torch.optim.AdamW(opt.param_groups, **{k: opt.defaults[k] for k in keep})
        for _ in range(3):
            model(torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)))[0].backward()
            opt.step()
            opt.zero_grad()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_baseline_refuses_what_it_cannot_time_fairly(world, tmp_path) -> None:
    cfg = load_config(None, ["model.name=vit_micro_p4", "tracking.enabled=false", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="--with-data"):
        profile.run_bench(cfg, BenchOptions(baseline=True, with_data=True), world)
    tp2 = load_config(None, ["model.name=vit_micro_p4", "parallel.tp=2", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"parallel\.tp=1"):
        profile.run_bench(tp2, BenchOptions(baseline=True), world)


def test_zero0_on_one_rank_skips_the_gradient_all_reduce_and_matches_the_plain_loop(world, tmp_path) -> None:
    trainer = _trainer(world, tmp_path, "parallel.zero_stage=0", "stage=wsp", "wsp.num_classes=10")
    assert trainer.engine.enable_backward_allreduce is False
    plain = PlainLoop(trainer.cfg, trainer.stage, trainer.loader.batches, trainer.accum, world.device)
    plain.model.load_state_dict(trainer.engine.module.state_dict())
    plain.optimizer = build_optimizer(plain.model, trainer.cfg)  # fresh state for the copied weights
    for group in plain.optimizer.param_groups:  # the trainer's LR at this step (the schedule's warm-up)
        group["lr"] = trainer.schedule.lr(trainer.step)
    start = {k: v.clone() for k, v in plain.model.state_dict().items()}
    batches = iter(trainer.loader)
    for _ in range(2):
        trainer.train_step(batches)
        plain.step()
    assert any(not torch.equal(start[k], v) for k, v in plain.model.state_dict().items())
    for (name, ours), theirs in zip(trainer.engine.module.state_dict().items(), plain.model.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6, msg=name)
    trainer.tracker.finish("FINISHED")
