"""Fixtures for the kernel tests: the device the fused kernels run on, seeded generators, poisoned allocations.

The ``cases_*.py`` modules need the Triton interpreter on a CPU machine, which must be switched on before the
kernels load: ``test_interpreter.py`` runs each of them in a fresh ``TRITON_INTERPRET=1`` subprocess. The fixtures
here import neither triton nor the kernels, so loading this file in the main test process changes nothing.
"""

from __future__ import annotations

import os
import zlib

import pytest
import torch
from torch.utils import deterministic


@pytest.fixture
def device() -> str:
    """CUDA when the process has a GPU and the interpreter is off, else CPU (under ``TRITON_INTERPRET=1``)."""
    interpret = os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes")
    return "cuda" if torch.cuda.is_available() and not interpret else "cpu"


@pytest.fixture
def gen(request: pytest.FixtureRequest) -> torch.Generator:
    """A CPU generator seeded from ``MAWS_KERNEL_TEST_SEED`` (fresh per run, printed by the runner) and the test id."""
    base = int(os.environ.get("MAWS_KERNEL_TEST_SEED", "0"))
    return torch.Generator().manual_seed(base ^ zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def poisoned_alloc():
    """Every ``torch.empty`` in the test comes back filled with NaN (floats) or the max value (integers), so an
    output element a kernel forgets to write shows up. Checked by a sanity assertion before the test runs."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    previous_fill = deterministic.fill_uninitialized_memory
    try:
        deterministic.fill_uninitialized_memory = True
        assert torch.isnan(torch.empty(4)).all(), "torch.empty is not poisoned: the unwritten-element checks are off"
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        deterministic.fill_uninitialized_memory = previous_fill
