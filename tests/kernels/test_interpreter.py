"""Run each ``cases_*.py`` module in a fresh subprocess where the fused kernels can run.

The Triton interpreter has to be switched on (``TRITON_INTERPRET=1``) before the kernels are decorated, which this
test process cannot promise (other test folders may have loaded triton or the kernels already), so every case
module gets its own interpreter process on CPU. Where a GPU is present, the same modules also run on CUDA.
Inputs are fresh each run: the seed is drawn here and printed with any failure. Nothing may be skipped.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CASES = sorted(HERE.glob("cases_*.py"))
MODES = [pytest.param("interpreter", id="interpreter")]
if torch.cuda.is_available():
    MODES.append(pytest.param("cuda", id="cuda", marks=pytest.mark.gpu))


def run_cases(module: Path, mode: str, report: Path) -> tuple[subprocess.CompletedProcess, dict[str, int], int]:
    seed = random.SystemRandom().randrange(2**31)
    env = {**os.environ, "MAWS_KERNEL_TEST_SEED": str(seed), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("TRITON_INTERPRET", None)
    if mode == "interpreter":
        env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "pytest", str(module), "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if report.exists():
        suite = ET.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {key: int(suite.get(key, 0)) for key in counts}
    return result, counts, seed


def test_every_case_module_is_run():
    assert {path.name for path in CASES} >= {"cases_gather.py", "cases_unshuffle.py", "cases_loss.py", "cases_auto.py"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("module", CASES, ids=lambda path: path.stem)
def test_kernels_match_references(module: Path, mode: str, tmp_path: Path):
    result, counts, seed = run_cases(module, mode, tmp_path / "report.xml")
    summary = f"{module.name} ({mode}, MAWS_KERNEL_TEST_SEED={seed}): {counts}"
    output = (result.stdout + result.stderr)[-12000:]
    assert result.returncode == 0, f"{summary}\n{output}"
    assert counts["tests"] > 0 and counts["skipped"] == 0, f"nothing may be skipped or missing: {summary}\n{output}"
