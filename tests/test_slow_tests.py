"""The lists of tests/conftest.py name tests that exist: `slow` (left out of `make test-fast`) and the heavy tests
(their weight in the schedule); the schedule puts the heaviest whole files first."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import HEAVY_TESTS, SLOW_TESTS, heaviest_files_first

ROOT = Path(__file__).resolve().parents[1]


def test_every_listed_test_exists() -> None:
    for nodeid in (*SLOW_TESTS, *HEAVY_TESTS):
        path, name = nodeid.split("::")
        assert re.search(rf"^def {re.escape(name)}\(", (ROOT / path).read_text(), re.MULTILINE), nodeid


class Item:
    """What the ordering reads of a pytest item: its node id and markers."""

    def __init__(self, nodeid: str, *markers: str) -> None:
        self.nodeid, self.markers = nodeid, markers

    def get_closest_marker(self, name: str) -> str | None:
        return name if name in self.markers else None


def test_whole_files_go_heaviest_first_keeping_their_own_order() -> None:
    items = [
        Item("tests/a.py::one"),
        Item("tests/b.py::launched", "dist"),
        Item("tests/a.py::two"),
        Item("tests/c.py::quick"),
        Item("tests/c.py::slow", "slow"),
        Item("tests/c.py::launched", "dist"),
    ]
    ordered = [item.nodeid for item in heaviest_files_first(items)]  # type: ignore[arg-type]
    assert ordered == [
        "tests/c.py::quick",
        "tests/c.py::slow",
        "tests/c.py::launched",
        "tests/b.py::launched",
        "tests/a.py::one",
        "tests/a.py::two",
    ]


def test_a_heavy_test_outweighs_a_file_of_two_launched_tests() -> None:
    (heavy,) = HEAVY_TESTS
    items = [Item("tests/b.py::one", "dist"), Item("tests/b.py::two", "dist"), Item(heavy, "slow")]
    assert HEAVY_TESTS[heavy] > 2 * 50
    assert next(item.nodeid for item in heaviest_files_first(items)) == heavy  # type: ignore[arg-type]
