"""Warm-up + cosine LR per iteration."""

from __future__ import annotations

import itertools
import math

import pytest

from maws_scale.config import ConfigError, load_config
from maws_scale.train.schedule import Schedule


def test_warmup_is_linear_and_reaches_the_peak():
    s = Schedule(peak_lr=1.0, total_steps=100, warmup_steps=10)
    assert [s.lr(i) for i in range(10)] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert s.lr(9) == pytest.approx(1.0)


def test_cosine_decays_monotonically_to_min_lr_at_the_last_step():
    s = Schedule(peak_lr=2.0, total_steps=50, warmup_steps=5, min_lr=0.1)
    after = [s.lr(i) for i in range(5, 50)]
    assert after[0] == pytest.approx(2.0)
    assert after[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(after))
    mid = 5 + (50 - 5 - 1) / 2
    assert s.lr(int(mid)) == pytest.approx(0.1 + 1.9 * 0.5 * (1 + math.cos(math.pi * (int(mid) - 5) / 44)))


def test_constant_kind_and_zero_warmup():
    s = Schedule(peak_lr=0.5, total_steps=20, warmup_steps=0, kind="constant")
    assert {s.lr(i) for i in range(20)} == {0.5}


def test_from_config_scales_lr_with_batch_and_uses_warmup_fraction():
    cfg = load_config(None, ["optim.base_lr=1e-4", "train.global_batch=512", "schedule.warmup_fraction=0.1"])
    s = Schedule.from_config(cfg, total_steps=200)
    assert s.peak_lr == pytest.approx(2e-4)
    assert s.warmup_steps == 20
    cfg = load_config(None, ["optim.lr=3e-3", "schedule.warmup_steps=7"])
    s = Schedule.from_config(cfg, total_steps=200)
    assert (s.peak_lr, s.warmup_steps) == (3e-3, 7)


def test_refuses_impossible_schedules():
    with pytest.raises(ConfigError, match="warmup_steps"):
        Schedule(peak_lr=1.0, total_steps=10, warmup_steps=11)
    with pytest.raises(ConfigError, match="min_lr"):
        Schedule(peak_lr=1.0, total_steps=10, warmup_steps=1, min_lr=2.0)
