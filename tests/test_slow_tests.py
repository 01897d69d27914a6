"""The `slow` list of tests/conftest.py (left out of `make test-fast`) names tests that exist."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import SLOW_TESTS

ROOT = Path(__file__).resolve().parents[1]


def test_every_slow_test_exists() -> None:
    for nodeid in SLOW_TESTS:
        path, name = nodeid.split("::")
        assert re.search(rf"^def {re.escape(name)}\(", (ROOT / path).read_text(), re.MULTILINE), nodeid
