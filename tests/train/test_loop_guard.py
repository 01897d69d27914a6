"""The shared loop on a toy model in this process (one gloo rank): non-finite guard, rollback, dead tracking server."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
from torch import nn

from maws_scale.config import load_config
from maws_scale.parallel.distributed import free_port
from maws_scale.train.loop import Trainer
from maws_scale.train.stages import Stage

NAN = float("nan")


class ToyLoader:
    """Deterministic batches of 8-d inputs; resumable by global position like the real loader."""

    epoch_size = 10**6
    num_classes = None

    def __init__(self, dp_rank: int, dp_size: int, micro: int) -> None:
        self.dp_rank, self.dp_size, self.micro, self.consumed = dp_rank, dp_size, micro, 0

    def __iter__(self):
        while True:
            gen = torch.Generator().manual_seed(self.consumed + self.dp_rank)
            self.consumed += self.micro * self.dp_size
            yield {"x": torch.randn(self.micro, 8, generator=gen)}

    def state_dict(self):
        return {"consumed": self.consumed}

    def load_state_dict(self, state):
        self.consumed = state["consumed"]

    def error_counts(self):
        return {"bad_record": 2}


class ToyStage(Stage):
    """A two-layer MLP whose loss (or gradient) turns NaN on chosen calls; records the weights before each call."""

    name = data_stage = "mae"

    def __init__(self, cfg, nan_loss_at=(), nan_grad_at=()) -> None:
        super().__init__(cfg)
        self.nan_loss_at, self.nan_grad_at = set(nan_loss_at), set(nan_grad_at)
        self.calls = 0
        self.weights: list[torch.Tensor] = []

    def build_model(self, device=None):
        return nn.Sequential(nn.Linear(8, 16, device=device), nn.Tanh(), nn.Linear(16, 1, device=device))

    def loss(self, model, batch, device, dtype):
        self.calls += 1
        self.weights.append(model.module[0].weight.detach().clone())
        out = model(batch["x"].to(device, dtype))
        if self.calls in self.nan_grad_at:
            out.register_hook(lambda g: torch.full_like(g, NAN))  # finite loss, non-finite gradients
        loss = (out - 1.0).pow(2).mean()
        if self.calls in self.nan_loss_at:
            loss = loss * NAN
        return loss, {}

    def flops_per_sample(self):
        return 6 * (8 * 16 + 16)

    def tokens_per_sample(self):
        return 1


def run(tmp_path, *overrides, **stage_kwargs):
    cfg = load_config(
        None,
        [
            "model.name=vit_micro_p4",
            f"output_dir={tmp_path}",
            "train.global_batch=4",
            "train.micro_batch=4",
            "train.steps=6",
            "train.log_every=3",
            "optim.lr=0.05",
            "optim.impl=torch",
            "schedule.kind=constant",
            "schedule.warmup_steps=0",
            "parallel.precision=fp32",
            "parallel.zero_stage=0",
            "tracking.enabled=false",
            "train.nan_tolerance=3",
            *overrides,
        ],
    )
    stage = ToyStage(cfg, **stage_kwargs)
    trainer = Trainer(cfg, stage=stage, loader_factory=lambda c, s, r, w: ToyLoader(r, w, c.train.micro_batch))
    return trainer.run(), stage


def test_a_non_finite_loss_skips_exactly_that_update(world, tmp_path):
    result, stage = run(tmp_path, nan_loss_at={3})
    w = stage.weights  # w[i] = weights before call i+1
    assert result.skipped_steps == 1 and result.rollbacks == 0 and result.steps == 6
    assert torch.equal(w[3], w[2])  # step 3 did not move the weights
    assert not torch.equal(w[2], w[1]) and not torch.equal(w[4], w[3])  # its neighbours did
    assert math.isnan(result.losses[2]) and all(math.isfinite(x) for i, x in enumerate(result.losses) if i != 2)
    records = [json.loads(line) for line in (tmp_path / "mae" / "metrics.jsonl").read_text().splitlines()]
    assert records[2]["skipped_steps"] == 1 and records[2]["bad_records"] == 2  # logged at step 3 (log_every=3)


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_non_finite_gradients_skip_the_update_on_every_zero_stage(world, tmp_path, zero_stage):
    # ZeRO-0 fp32: our guard sees the averaged gradients; ZeRO-1: DeepSpeed's own norm check skips the step
    result, stage = run(tmp_path, f"parallel.zero_stage={zero_stage}", nan_grad_at={2})
    assert result.skipped_steps == 1
    assert torch.equal(stage.weights[2], stage.weights[1])
    assert math.isfinite(result.losses[1])  # the loss itself was fine
    assert all(torch.isfinite(w).all() for w in stage.weights)


def test_consecutive_bad_steps_roll_back_to_the_last_healthy_checkpoint(world, tmp_path):
    result, stage = run(tmp_path, "train.steps=8", "checkpoint.every=2", "train.nan_tolerance=2", nan_loss_at={6, 7})
    assert result.rollbacks == 1 and result.skipped_steps == 2 and result.steps == 8
    assert stage.calls == 11  # 7 calls, back to step 4 (step 5 after it was finite), then steps 5-8 again
    assert torch.equal(stage.weights[7], stage.weights[4])  # after the rollback: the step-4 weights again
    assert all(torch.isfinite(w).all() for w in stage.weights)


def test_a_checkpoint_right_before_a_divergence_is_not_a_rollback_target(world, tmp_path):
    # step 4's weights gave step 5 a non-finite loss: restoring them would restore the divergence; step 2 is healthy
    result, stage = run(tmp_path, "train.steps=8", "checkpoint.every=2", "train.nan_tolerance=2", nan_loss_at={5, 6})
    assert result.rollbacks == 1 and stage.calls == 12  # 6 calls, back to step 2, then steps 3-8 again
    assert torch.equal(stage.weights[6], stage.weights[2])


def test_a_checkpoint_followed_by_a_bad_step_stays_out_even_after_later_finite_steps(world, tmp_path):
    # step 2's checkpoint was followed by a NaN (step 3); finite step 4 must not make it a target: back to step 1
    result, stage = run(tmp_path, "train.steps=8", "checkpoint.every=1", nan_loss_at={3, 5, 6, 7})
    assert result.rollbacks == 1 and stage.calls == 14  # 7 calls, back to step 1, then steps 2-8 again
    assert torch.equal(stage.weights[7], stage.weights[1])


def test_no_checkpoint_is_saved_during_a_non_finite_streak_and_keep_last_spares_the_healthy_one(world, tmp_path):
    # every step saves, keep_last=1: steps 3-4 are bad (a streak below the tolerance of 3), then training recovers
    result, stage = run(
        tmp_path, "checkpoint.every=1", "checkpoint.keep_last=1", "train.nan_tolerance=3", nan_loss_at={3, 4, 5}
    )
    assert result.rollbacks == 1 and result.skipped_steps == 3
    # the streak's checkpoints (steps 3, 4) were never written; step 2's was followed by a bad step: back to step 1
    assert stage.calls == 10 and torch.equal(stage.weights[5], stage.weights[1])
    root = tmp_path / "mae" / "checkpoints"
    assert (root / "step_00000006" / "healthy").is_file() is False  # the final checkpoint: nothing followed it
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("step_")) == ["step_00000005", "step_00000006"]


def test_without_a_checkpoint_a_diverged_run_stops_with_the_reason(world, tmp_path):
    with pytest.raises(RuntimeError, match=r"train.nan_tolerance=2.*no checkpoint"):
        run(tmp_path, "train.nan_tolerance=2", nan_loss_at={1, 2})


def test_a_dead_tracking_server_does_not_stop_training(world, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.warns(UserWarning, match="training continues"):
        result, _ = run(tmp_path, "tracking.enabled=true", f"tracking.uri={dead}", "train.steps=4")
    assert result.steps == 4 and time.monotonic() - start < 60
    assert len((tmp_path / "mae" / "metrics.jsonl").read_text().splitlines()) == 4


def test_metrics_on_a_full_disk_stop_the_run_naming_the_file(world, tmp_path):
    from maws_scale.errors import WriteError

    (tmp_path / "mae").mkdir()
    (tmp_path / "mae" / "metrics.jsonl").symlink_to("/dev/full")  # every write fails with ENOSPC
    with pytest.raises(WriteError, match=r"cannot write .*mae/metrics.jsonl: No space left on device"):
        run(tmp_path)
