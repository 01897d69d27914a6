"""perf/storage.py: the scan of every live tensor, which the CPU bench runs while other threads (MLflow tracking,
progress) build objects."""

from __future__ import annotations

import gc
import threading
from unittest import mock

import pytest
import torch

from maws_scale.perf import storage
from maws_scale.perf.storage import live_storages, live_tensors


def test_live_tensors_are_the_tensors_isinstance_finds_after_a_collect() -> None:
    model = torch.nn.Linear(4, 4)
    model(torch.randn(2, 4)).sum().backward()
    kept = (model.weight[0], torch.nn.Parameter(torch.zeros(3)), torch.ones(2).as_subclass(torch.Tensor))
    stranger = mock.Mock()  # runs Python code when asked for its __class__
    cycle: list = [torch.zeros(5)]
    cycle.append(cycle)
    garbage = id(cycle[0])
    del cycle  # a tensor only a reference cycle holds: the collect frees it
    gc.collect()
    expected = {id(obj) for obj in gc.get_objects() if isinstance(obj, torch.Tensor)}
    assert {id(t) for t in live_tensors()} == expected and len(expected) >= len(kept) + 3
    assert all(id(t) in expected for t in kept) and garbage not in expected and stranger is not None


def test_scans_never_break_a_thread_that_builds_tuples() -> None:
    """Another thread builds tuples from generators (CPython resizes them in place, and refuses with SystemError if
    anything else holds a reference meanwhile); the scan must never hold one. Scanning with a list of every object
    alive while Python code runs broke it within the first scan (measured: 1 of 1 runs)."""
    failures: list[BaseException] = []
    stop = threading.Event()

    def build() -> None:
        while not stop.is_set():
            try:
                for _ in range(100):
                    tuple(str(i) for i in range(50))
            except SystemError as err:
                failures.append(err)
                return

    builder = threading.Thread(target=build, daemon=True)
    builder.start()
    held = [torch.zeros(8) for _ in range(50)]
    try:
        for scan in range(3):
            assert len(live_storages()) >= len(held)
            assert not failures, f"scan {scan}: {failures[0]!r}"
    finally:
        stop.set()
        builder.join(timeout=30)
    assert not failures, repr(failures)


def test_listings_that_differ_are_refused_not_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    listings = iter([[torch.zeros(1), "not a tensor"], ["not a tensor", torch.zeros(1)]])
    monkeypatch.setattr(storage, "_oldest_generation", lambda: iter(next(listings)))
    with pytest.raises(RuntimeError, match=r"two listings of the oldest generation differ \(found \['str'\]\)"):
        live_tensors()
