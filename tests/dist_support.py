"""Helpers for tests and examples: run a script under torchrun with N local CPU ranks (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from maws_scale.parallel.distributed import free_port


def run_torchrun(
    script: str | Path,
    nproc: int,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess:
    """Run ``script`` on ``nproc`` local ranks; raise with the captured output if it fails or hangs."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(script),
        *(args or []),
    ]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1", **(env or {})}
    try:
        result = subprocess.run(command, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        output = f"{err.stdout}\n{err.stderr}"
        raise AssertionError(f"{script} on {nproc} ranks timed out after {timeout}s:\n{output}") from None
    if result.returncode != 0:
        output = f"{result.stdout}\n{result.stderr}"
        raise AssertionError(f"{script} on {nproc} ranks failed ({result.returncode}):\n{output}")
    return result
