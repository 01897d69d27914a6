"""Helpers for tests and examples: run a script under torchrun with N local CPU ranks (gloo); a CPU stand-in for
xformers' attention op."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
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


@contextlib.contextmanager
def xformers_cpu_standin() -> Iterator[list[int]]:
    """Replace ``xformers.ops.memory_efficient_attention`` (no CPU operator in 0.0.35) by an SDPA-based CPU op for the
    duration; the probe cache is cleared on entry and exit. Yields a one-item list counting the op's calls."""
    import torch.nn.functional as F
    import xformers.ops as xops

    from maws_scale.models import attention as attention_module

    calls = [0]
    original = xops.memory_efficient_attention

    def standin(query, key, value, attn_bias=None, p=0.0, scale=None, op=None):  # (B, T, H, Dh) like xformers
        calls[0] += 1
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
        return out.transpose(1, 2)

    attention_module._xformers_probe.cache_clear()
    xops.memory_efficient_attention = standin
    try:
        yield calls
    finally:
        xops.memory_efficient_attention = original
        attention_module._xformers_probe.cache_clear()
