"""Fixtures of the bench tests: this pytest process as a one-rank gloo world."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def world():
    """A one-rank gloo world (DeepSpeed initialised, shm build skipped); idempotent across test folders."""
    from maws_scale.parallel.distributed import init_distributed

    return init_distributed("gloo")
