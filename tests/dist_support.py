"""Run a worker script under torchrun with N local CPU ranks (gloo), and the environment every such worker gets.

Workers are CPU processes even on a GPU machine: GPUs are hidden (``CUDA_VISIBLE_DEVICES=""``) and DeepSpeed is told
to use its CPU accelerator, so a gloo worker never binds ``cuda:LOCAL_RANK``. ``MAWS_TEST_FP16_SUPPORTED=0|1``
forces the answer of DeepSpeed's ``is_fp16_supported()`` inside the workers (DeepSpeed branches on it), so both
branches run on every CPU; workers apply it by calling :func:`prepare_worker` first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from maws_scale.parallel.distributed import free_port

TESTS = Path(__file__).resolve().parent
FP16_FLAG = "MAWS_TEST_FP16_SUPPORTED"
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def fresh_process_env(drop: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment without its launcher variables (and ``drop``), for a child that must start as a
    fresh command would: an in-process test may hold a process group whose MASTER_PORT the child would try to bind."""
    return {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and k not in drop}


def force_fp16_support(supported: bool) -> None:
    """Make DeepSpeed's accelerator answer ``is_fp16_supported()`` with ``supported`` in this process."""
    from deepspeed.accelerator import get_accelerator

    type(get_accelerator()).is_fp16_supported = lambda self: supported


def prepare_worker() -> None:
    """Apply the forced capability flags of this test run (call at the top of a worker's ``main``)."""
    if os.environ.get(FP16_FLAG) in ("0", "1"):
        force_fp16_support(os.environ[FP16_FLAG] == "1")


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
    pythonpath = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    full_env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "DS_ACCELERATOR": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": pythonpath,
        **(env or {}),
    }
    try:
        result = subprocess.run(command, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        output = f"{err.stdout}\n{err.stderr}"
        raise AssertionError(f"{script} on {nproc} ranks timed out after {timeout}s:\n{output}") from None
    if result.returncode != 0:
        output = f"{result.stdout}\n{result.stderr}"
        raise AssertionError(f"{script} on {nproc} ranks failed ({result.returncode}):\n{output}")
    return result
