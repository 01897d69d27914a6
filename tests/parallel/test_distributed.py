"""Process-group set-up: which device a rank binds, by backend; tear-down before exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_support import fresh_process_env

from maws_scale.parallel import distributed

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_gpus(monkeypatch):
    """Four CUDA devices as far as init_distributed can tell; set_device calls are recorded, not made."""
    bound: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", bound.append)
    return bound


def test_a_gloo_rank_stays_on_the_cpu_where_gpus_exist(world, fake_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = distributed.init_distributed("gloo")
    assert info.device == torch.device("cpu") and fake_gpus == []


def test_an_nccl_rank_binds_local_rank_modulo_the_visible_gpus(world, fake_gpus, monkeypatch):
    # one GPU per SLURM task shows each task a single device; LOCAL_RANK 5 on a node of 4 visible GPUs is GPU 1
    monkeypatch.setenv("LOCAL_RANK", "5")
    info = distributed.init_distributed("nccl")  # the world exists already: only the binding runs
    assert info.device == torch.device("cuda", 1) and fake_gpus == [1]


def test_the_cli_tears_down_the_process_groups_its_command_made():
    """A command that made a process group (megatron's groups too) leaves none for the interpreter's exit; a world
    that existed before the command (an in-process caller's) is left alone."""
    code = (
        "import torch.distributed as dist\n"
        "from megatron.core import parallel_state\n"
        "from maws_scale import cli\n"
        "from maws_scale.parallel.distributed import init_distributed\n"
        "from maws_scale.parallel.mpu import init_model_parallel\n"
        "import argparse\n"
        "def trains(args):\n"
        "    init_distributed('gloo')\n"
        "    init_model_parallel(1)\n"
        "    print('trained')\n"
        "    return 0\n"
        "parser = cli.build_parser()\n"
        "parser.parse_args = lambda argv=None: argparse.Namespace(func=trains)\n"
        "cli.build_parser = lambda: parser\n"
        "assert cli.main(['models']) == 0\n"
        "print('left:', dist.is_initialized(), parallel_state.model_parallel_is_initialized())\n"
        "init_distributed('gloo')\n"
        "assert cli.main(['models']) == 0\n"
        "print('kept:', dist.is_initialized())\n"
    )
    env = fresh_process_env()  # without this process's own world's launcher variables
    env.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("trained") == 2
    assert "left: False False" in result.stdout and "kept: True" in result.stdout
