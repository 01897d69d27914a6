"""The suite's skip rule under CI: only a `gpu` test without CUDA or a `cpu_only` test with CUDA may skip; any
other skip fails the run, whatever its reason says. Run on an inner pytest with this suite's conftest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

INNER = """
import pytest

@pytest.mark.gpu
def test_needs_gpu():
    assert False, "must not run without CUDA"

@pytest.mark.cpu_only
def test_cpu_path():
    pass

def test_plain_skip_mentioning_cuda():
    pytest.skip("no CUDA here")
"""


@pytest.mark.parametrize(
    ("cuda", "expected"),
    [
        ("0", {"passed": 1, "skipped": 1, "failed": 1}),  # gpu skipped; the plain skip fails despite "CUDA"
        ("1", {"passed": 0, "skipped": 1, "failed": 2}),  # cpu_only skipped; gpu runs (and fails here)
    ],
    ids=["cpu-machine", "gpu-machine"],
)
def test_only_marked_skips_pass_under_ci(pytester: pytest.Pytester, monkeypatch, cuda, expected):
    shutil.copy(Path(__file__).with_name("conftest.py"), pytester.path / "conftest.py")
    pytester.makepyfile(test_inner=INNER)
    pytester.makeini("[pytest]\nmarkers =\n    gpu: g\n    cpu_only: c\n")
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("MAWS_TEST_ASSUME_CUDA", cuda)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(**expected)
