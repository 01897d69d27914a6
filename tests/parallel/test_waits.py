"""Ranks wait for rank-0 work in a gloo group with a long timeout, not in a default-timeout barrier."""

from __future__ import annotations

from pathlib import Path

import pytest
from dist_support import run_torchrun

WORKER = Path(__file__).with_name("wait_worker.py")


@pytest.mark.dist
def test_the_long_wait_outlasts_the_default_timeout_that_a_plain_barrier_hits():
    result = run_torchrun(WORKER, 2, ["long"], timeout=120)
    assert result.stdout.count("passed the wait") == 2
    with pytest.raises(AssertionError, match=r"(?i)timed? ?out|timeout"):
        run_torchrun(WORKER, 2, ["default"], timeout=120)


def test_a_single_process_does_not_wait():
    from maws_scale.parallel.waits import wait_for_rank0

    wait_for_rank0(0.001)  # no world (or one rank): returns at once
