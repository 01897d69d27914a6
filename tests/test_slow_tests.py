"""The lists of tests/conftest.py name tests that exist: `slow` (left out of `make test-fast`) and the longest tests
(scheduled first)."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import LONGEST_TESTS, SLOW_TESTS, heaviest_files_first

ROOT = Path(__file__).resolve().parents[1]


def test_every_listed_test_exists() -> None:
    for nodeid in (*SLOW_TESTS, *LONGEST_TESTS):
        path, name = nodeid.split("::")
        assert re.search(rf"^def {re.escape(name)}\(", (ROOT / path).read_text(), re.MULTILINE), nodeid


class Item:
    """What the ordering reads of a pytest item: its node id and markers."""

    def __init__(self, nodeid: str, *markers: str) -> None:
        self.nodeid, self.markers = nodeid, markers

    def get_closest_marker(self, name: str) -> str | None:
        return name if name in self.markers else None


def test_the_longest_test_goes_first_then_whole_files_heaviest_first() -> None:
    items = [
        Item("tests/a.py::one"),
        Item("tests/b.py::launched", "dist"),
        Item("tests/a.py::two"),
        Item("tests/c.py::slow", "slow"),
        Item("tests/c.py::quick"),
        Item(LONGEST_TESTS[0], "slow"),
    ]
    ordered = [item.nodeid for item in heaviest_files_first(items)]
    assert ordered == [
        LONGEST_TESTS[0],
        "tests/c.py::slow",
        "tests/c.py::quick",
        "tests/b.py::launched",
        "tests/a.py::one",
        "tests/a.py::two",
    ]
