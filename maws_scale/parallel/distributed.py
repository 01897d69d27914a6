"""Process-group set-up for every launcher: deepspeed, torchrun, or a single plain process (gloo on CPU, nccl on GPU).

Two traps on CPU are handled here (see STACK.md): a single process without a launcher needs RANK/WORLD_SIZE/... or
DeepSpeed tries MPI discovery; and DeepSpeed JIT-builds a shared-memory comm op (~70 s on 2 cores) the first time,
which we skip unless ``MAWS_DS_SHM=1`` (gloo's own collectives are used instead).
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fill_single_process_env() -> None:
    """Set the launcher variables a lone process lacks, so DeepSpeed does not look for MPI."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", os.environ.get("RANK", "0"))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


def resolve_backend(backend: str = "auto") -> str:
    if backend == "nccl" and not torch.cuda.is_available():
        from maws_scale.config import ConfigError

        raise ConfigError("parallel.backend=nccl needs CUDA GPUs, and none is visible; use auto or gloo")
    if backend != "auto":
        return backend
    return "nccl" if torch.cuda.is_available() else "gloo"


def _skip_deepspeed_shm_build() -> None:
    if torch.cuda.is_available() or os.environ.get("MAWS_DS_SHM") == "1":
        return
    comm_torch = importlib.import_module("deepspeed.comm.torch")  # `import deepspeed.comm.torch` yields torch itself
    comm_torch.build_shm_op = lambda: None


def init_distributed(backend: str = "auto", timeout_minutes: int = 30) -> DistInfo:
    """Initialise torch.distributed through DeepSpeed (idempotent) and return this process's place in the world.

    A CUDA device is bound only for the NCCL backend (``local_rank % device_count()``, so one-GPU-per-task SLURM
    binding works too); a gloo process is a CPU process even where GPUs exist, and DeepSpeed is told so."""
    fill_single_process_env()
    backend = resolve_backend(backend)
    if backend == "gloo":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    if not dist.is_initialized():
        _skip_deepspeed_shm_build()
        deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(minutes=timeout_minutes))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cpu")
    if backend == "nccl":
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def shutdown_distributed() -> None:
    """Tear the process groups down before the interpreter exits (megatron's groups first, then the world).

    Exiting with live gloo/NCCL groups leaves their C++ threads to be destroyed at interpreter shutdown, which can
    abort the process (``terminate called without an active exception``) after all work succeeded."""
    if not dist.is_initialized():
        return
    dist.barrier()
    parallel_state = sys.modules.get("megatron.core.parallel_state")
    if parallel_state is not None and parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    from maws_scale.parallel.waits import forget_groups

    forget_groups()  # the long-timeout gloo groups die with the world
    dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
