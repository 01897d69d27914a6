"""Suite-wide fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _restore_environment() -> Iterator[None]:
    """Undo every change a test makes to os.environ (code under test exports RANK/WORLD_SIZE/... for launchers)."""
    saved = dict(os.environ)
    yield
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    os.environ.update(saved)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Under CI (CI=true) a skip is a failure unless it is for a missing CUDA GPU: `make test` installs every
    optional package and Fashion-MNIST, so any other skip means a broken install step that would otherwise pass."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") != "true" or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if "CUDA" not in reason:
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where everything but a GPU must be present: {reason}"
