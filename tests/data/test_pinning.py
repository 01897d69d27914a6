"""Batches are page-locked by the DataLoader's pin thread, never by the training thread (issue 30 item 7f).

CPU stand-in of the CUDA mechanism: ``Tensor.pin_memory`` is replaced by a recorder (pinning needs CUDA), and the
loader is told to pin. The DataLoader pins only where an accelerator exists, so here nothing may be pinned at all:
a call from the loop that hands batches to the trainer is the synchronous copy this item removes."""

from __future__ import annotations

import itertools
import threading

import pytest
import torch

from maws_scale.data import build_loader


def test_the_training_thread_never_pins(mosaic_dir, cfg_for, monkeypatch):
    """With workers (every real run; with none, torch's DataLoader itself pins in the calling thread)."""
    cfg = cfg_for(mosaic_dir, "data.num_workers=2")
    loader = build_loader(cfg, "mae")
    loader.pin_memory = True  # as on a CUDA machine
    calls: list[str] = []

    def recorded(self, *args, **kwargs):
        calls.append(threading.current_thread().name)
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", recorded)
    with pytest.warns(UserWarning, match="pin_memory"):  # the DataLoader's: no accelerator, no pin thread here
        batches = list(itertools.islice(loader, 3))
    assert threading.main_thread().name not in calls
    assert all(isinstance(b["images"], torch.Tensor) and isinstance(b["labels"], torch.Tensor) for b in batches)
