"""Learning-rate schedule per iteration: linear warm-up, then half-cycle cosine (or constant) down to ``min_lr``.

The LR is a pure function of the optimizer step, so resuming needs only the step (the MAE recipe, util/lr_sched.py,
updates the LR every iteration rather than every epoch).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from maws_scale.config import ConfigError, RunConfig


@dataclass(frozen=True)
class Schedule:
    """Warm-up + cosine (or constant) LR for ``total_steps`` optimizer steps."""

    peak_lr: float
    total_steps: int
    warmup_steps: int
    min_lr: float = 0.0
    kind: str = "cosine"

    def __post_init__(self) -> None:
        if self.total_steps <= 0:
            raise ConfigError(f"train.steps: the schedule needs at least one step, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ConfigError(
                f"schedule.warmup_steps={self.warmup_steps} must lie in [0, train steps={self.total_steps}]"
            )
        if self.min_lr > self.peak_lr:
            raise ConfigError(f"schedule.min_lr={self.min_lr} exceeds the peak LR {self.peak_lr}")

    def lr(self, step: int) -> float:
        """LR used for optimizer step ``step`` (0-based): warm-up reaches the peak at the last warm-up step."""
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.peak_lr
        decay_steps = self.total_steps - self.warmup_steps
        if decay_steps <= 1:
            return self.peak_lr
        progress = min(1.0, (step - self.warmup_steps) / (decay_steps - 1))
        return self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, cfg: RunConfig, total_steps: int) -> Schedule:
        """The schedule of ``cfg`` for a run of ``total_steps`` optimizer steps."""
        sched = cfg.schedule
        warmup = sched.warmup_steps if sched.warmup_steps is not None else int(sched.warmup_fraction * total_steps)
        return cls(
            peak_lr=cfg.peak_lr(),
            total_steps=total_steps,
            warmup_steps=warmup,
            min_lr=sched.min_lr,
            kind=sched.kind,
        )
