"""`maws-scale launch`: deepspeed command lines from a hostfile, the SLURM sbatch spec, refusal before launch."""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from maws_scale.cli import main
from maws_scale.launch import deepspeed_launch, slurm
from maws_scale.launch.spec import parse_minutes

ROOT = Path(__file__).parents[2]
CONFIG = str(ROOT / "configs" / "vit_2b14_mae_zero3.yaml")


@pytest.fixture
def hostfile(tmp_path: Path) -> Path:
    path = tmp_path / "hostfile"
    path.write_text("# three 8-GPU nodes\ngpu-a slots=8\ngpu-b slots=8\n\ngpu-c slots=8\n")
    return path


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> list:
    """Record (instead of running) anything that would start processes or jobs."""
    calls: list = []
    monkeypatch.setattr(deepspeed_launch.subprocess, "call", lambda *a, **k: calls.append(("deepspeed", a)) or 0)
    monkeypatch.setattr(slurm, "submit", lambda *a, **k: calls.append(("slurm", a)))
    return calls


def test_deepspeed_dry_run_command_line(hostfile: Path, launched: list, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["launch", CONFIG, "--hostfile", str(hostfile), "--nodes", "2", "--gpus-per-node", "8", "--dry-run"]
    assert main([*argv, "checkpoint.every=500"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("deepspeed "))
    assert shlex.split(line) == [
        "deepspeed", "--hostfile", str(hostfile), "--num_nodes", "2", "--num_gpus", "8",
        "--master_addr", "gpu-a", "--master_port", "29500", "--no_local_rank", "--module",
        "maws_scale.cli", "pipeline", CONFIG, "checkpoint.every=500",
    ]  # fmt: skip
    assert "# on gpu-a:" in out and "# on gpu-b:" in out and "gpu-c" not in out.split("run here:")[1]
    assert launched == []


def test_deepspeed_dry_run_json_has_per_node_commands(
    hostfile: Path, capsys: pytest.CaptureFixture[str], launched: list
) -> None:
    argv = ["launch", CONFIG, "--hostfile", str(hostfile), "--gpus-per-node", "4", "--master-port", "4242"]
    assert main([*argv, "--command", "train", "--dry-run", "--json", "train.global_batch=3072"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["world_size"] == 12 and plan["hosts"] == {h: [0, 1, 2, 3] for h in ("gpu-a", "gpu-b", "gpu-c")}
    for rank, host in enumerate(("gpu-a", "gpu-b", "gpu-c")):
        command = plan["node_commands"][host]
        assert command[1:4] == ["-u", "-m", "deepspeed.launcher.launch"]
        assert f"--node_rank={rank}" in command and "--master_port=4242" in command
        assert command[-4:] == ["maws_scale.cli", "train", CONFIG, "train.global_batch=3072"]
        info = next(c for c in command if c.startswith("--world_info=")).split("=", 1)[1]
        assert json.loads(base64.urlsafe_b64decode(info)) == plan["hosts"]
    assert launched == []


def test_deepspeed_launch_runs_the_command(hostfile: Path, launched: list) -> None:
    assert main(["launch", CONFIG, "--hostfile", str(hostfile), "--nodes", "1", "--gpus-per-node", "8"]) == 0
    assert len(launched) == 1 and launched[0][0] == "deepspeed"
    command = launched[0][1][0]
    assert "--hostfile" in command and command[-3:] == ["maws_scale.cli", "pipeline", CONFIG]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--nodes", "4"], "--nodes=4 but the hostfile lists 3"),
        (["--gpus-per-node", "16"], "only 8 slots"),
        (["train.micro_bach=8"], "train.micro_bach"),
        (["train.global_batch=4000"], "train.global_batch=4000"),  # 4000 is no multiple of 64 × 24 ranks
    ],
)
def test_a_bad_launch_exits_2_and_launches_nothing(
    hostfile: Path, launched: list, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["launch", CONFIG, "--hostfile", str(hostfile), *extra]) == 2
    assert message in capsys.readouterr().err
    assert launched == []


def test_a_bad_key_stops_a_slurm_launch_before_submitting(launched: list, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["launch", CONFIG, "--slurm", "--nodes", "8", "--gpus-per-node", "8", "parallel.zero_stge=2"])
    assert code == 2 and "parallel.zero_stge" in capsys.readouterr().err
    assert launched == []


def test_missing_hostfile_and_missing_slurm_sizes_are_refused(launched: list, capsys: pytest.CaptureFixture[str]):
    assert main(["launch", CONFIG, "--hostfile", "/nonexistent/hostfile"]) == 2
    assert main(["launch", CONFIG]) == 2  # deepspeed without a hostfile
    assert main(["launch", CONFIG, "--slurm", "--nodes", "8"]) == 2
    assert "--slurm needs --nodes and --gpus-per-node" in capsys.readouterr().err
    assert launched == []


def test_slurm_dry_run_prints_submitit_sbatch(launched: list, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["launch", CONFIG, "--slurm", "--nodes", "8", "--gpus-per-node", "8", "--partition", "learn"]
    assert main([*argv, "--time", "3-00:00:00", "--cpus-per-task", "10", "--mem-gb", "480", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for flag in (
        "--nodes=8", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=learn", "--time=4320",
        "--cpus-per-task=10", "--mem=480GB", "--signal=USR2@120", "--exclusive",
    ):  # fmt: skip
        assert f"#SBATCH {flag}\n" in out, flag
    assert "srun --unbuffered" in out and "-m submitit.core._submit" in out
    assert f"runs: maws-scale pipeline {CONFIG}" in out
    assert f"requeued as: maws-scale pipeline {CONFIG} checkpoint.resume=auto" in out
    assert launched == []


def test_slurm_dry_run_json(launched: list, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["launch", CONFIG, "--slurm", "--nodes", "64", "--gpus-per-node", "8", "--dry-run", "--json"]
    assert main([*argv, "train.micro_batch=8", "checkpoint.resume=/old/ckpt"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["world_size"] == 512
    assert plan["parameters"]["nodes"] == 64 and plan["parameters"]["ntasks_per_node"] == 8
    assert plan["task"]["argv"][-1] == "checkpoint.resume=/old/ckpt"
    assert plan["task"]["on_requeue"][-1] == "checkpoint.resume=auto"
    assert "checkpoint.resume=/old/ckpt" not in plan["task"]["on_requeue"]
    assert "#SBATCH --nodes=64" in plan["sbatch"]


def test_a_job_spec_yaml_with_flags_winning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        f"config: {CONFIG}\ncommand: train\nlauncher: slurm\nnodes: 8\ngpus_per_node: 8\n"
        "overrides: [checkpoint.every=100]\nslurm: {partition: big, time: '48:00:00', setup: ['module load cuda']}\n"
    )
    assert main(["launch", "--job", str(job), "--partition", "small", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --partition=small" in out and "#SBATCH --time=2880" in out and "module load cuda" in out
    assert f"maws-scale train {CONFIG} checkpoint.every=100" in out
    job.write_text(f"config: {CONFIG}\nslurm: {{partitoin: big}}\n")
    assert main(["launch", "--job", str(job), "--dry-run"]) == 2
    assert "partitoin" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "minutes"), [(90, 90), ("90", 90), ("1:30", 2), ("02:00:00", 120), ("3-00:00:00", 4320), ("1-2", 1560)]
)
def test_parse_minutes(text: str | int, minutes: int) -> None:
    assert parse_minutes(text) == minutes


def test_parse_minutes_refuses_nonsense() -> None:
    for bad in ("soon", "0", "-5"):
        with pytest.raises(ValueError):
            parse_minutes(bad)


@pytest.mark.parametrize("job", sorted((ROOT / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_job_spec_validates(job: Path, launched: list, capsys, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # job specs name their configs relative to the repository root
    assert main(["launch", "--job", str(job), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["world_size"] >= 64 and launched == []


def test_json_dry_run_is_the_only_thing_on_stdout(hostfile: Path) -> None:
    """DeepSpeed logs at import time; in a fresh process those lines must not land in the JSON on stdout."""
    command = [sys.executable, "-m", "maws_scale.cli", "launch", CONFIG, "--hostfile", str(hostfile)]
    result = subprocess.run([*command, "--nodes", "1", "--dry-run", "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["world_size"] == 24 - 16


def test_launch_sh_wraps_the_launcher(hostfile: Path) -> None:
    env = {**os.environ, "MAWS_SCALE": str(Path(sys.executable).parent / "maws-scale")}
    args = [str(ROOT / "jobs" / "launch.sh"), CONFIG, str(hostfile), "8", "--nodes", "1", "--dry-run"]
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "deepspeed --hostfile" in result.stdout and "--num_gpus 8" in result.stdout
    assert subprocess.run([args[0]], capture_output=True).returncode == 2
