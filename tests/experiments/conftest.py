"""Shared fixtures for the jobs tests."""

from __future__ import annotations

from pathlib import Path

import pytest

BASE = """\
output_dir: runs/base
model: {name: vit_tiny_p8, pool: cls}
data: {path: data/x/train, eval_path: data/x/test, num_workers: 0}
train: {global_batch: 64, micro_batch: 64, steps: 200, log_every: 20}
parallel: {zero_stage: 0, precision: fp32}
stages:
  mae: {train.steps: 300, optim.lr: 1.5e-3}
  wsp: {train.steps: 300, optim.lr: 1.0e-3}
"""


@pytest.fixture(scope="session")
def base_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small pipeline config (MAE 300 steps, WSP 300 steps, global batch 64) the sweep tests build on."""
    path = tmp_path_factory.mktemp("base") / "base.yaml"
    path.write_text(BASE)
    return path
