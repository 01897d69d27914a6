"""The real DeepSpeed launcher path on CPU: `maws-scale launch --hostfile` (localhost, 2 slots) trains 2 ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maws_scale.data.build import build_dataset
from maws_scale.data.fashion_mnist import DEFAULT_DIR, FashionMNISTSource
from maws_scale.data.labels import build_vocab
from maws_scale.parallel.distributed import free_port

pytestmark = [
    pytest.mark.dist,
    pytest.mark.skipif(not Path(DEFAULT_DIR).is_dir(), reason="Fashion-MNIST is not installed"),
]


def test_deepspeed_launch_trains_two_ranks_from_a_hostfile(tmp_path: Path) -> None:
    data = tmp_path / "mosaic"
    build_dataset(FashionMNISTSource(noise=0.3, limit=200, seed=1), data, progress=False)
    build_vocab(data, min_count=1)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    out = tmp_path / "run"
    overrides = [
        "stage=wsp", "wsp.init=random", "model.name=vit_micro_p4", f"data.path={data}", "data.num_workers=0",
        "train.global_batch=16", "train.micro_batch=8", "train.steps=2", "train.log_every=1",
        "parallel.zero_stage=1", "parallel.precision=fp32", "optim.impl=torch", "tracking.enabled=false",
        f"output_dir={out}",
    ]  # fmt: skip
    command = [sys.executable, "-m", "maws_scale.cli", "launch", "--hostfile", str(hostfile), "--gpus-per-node", "2"]
    command += ["--master-addr", "127.0.0.1", "--master-port", str(free_port()), "--no-ssh-check", "--command", "train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PATH": f"{Path(sys.executable).parent}:"}
    env["PATH"] += os.environ["PATH"]
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    result = subprocess.run([*command, str(config), *overrides], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / "wsp" / "consolidated.pt").is_file()
    steps = [json.loads(line)["step"] for line in (out / "wsp" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert (out / "wsp" / "ds_config.json").is_file()
    assert json.loads((out / "wsp" / "ds_config.json").read_text())["train_batch_size"] == 16  # 8 × 2 ranks
