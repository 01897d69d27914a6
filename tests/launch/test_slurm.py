"""submitit jobs: a real SlurmExecutor submission against a fake sbatch, torch.distributed env from SLURM variables,
and a real preemption → checkpoint → requeue → resume-auto cycle on submitit's LocalExecutor."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
from submitit.core.utils import DelayedSubmission

from maws_scale.launch.slurm import RESUME_AUTO, TrainingTask, distributed_env, make_executor, submit, with_resume_auto
from maws_scale.launch.spec import LaunchSpec

ROOT = Path(__file__).parents[2]
CONFIG = str(ROOT / "configs" / "vit_2b14_mae_zero3.yaml")
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the runners below travel to the job processes

SLURM_ENV = {
    "SUBMITIT_EXECUTOR": "slurm",
    "SLURM_JOB_ID": "4242",
    "SLURM_NTASKS": "16",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NODEID": "1",
    "SLURM_PROCID": "9",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
}


class Recorder:
    """A runner that records its argv and the distributed env, optionally blocking until preempted."""

    def __init__(self, folder: str, block_unless_resumed: bool = False) -> None:
        self.folder = folder
        self.block = block_unless_resumed

    def __call__(self, argv: list[str]) -> int:
        keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK")
        record = {"argv": argv, "env": {k: os.environ.get(k) for k in keys}}
        name = f"rank{os.environ['RANK']}-{'resumed' if RESUME_AUTO in argv else 'first'}.json"
        Path(self.folder, name).write_text(json.dumps(record))
        if self.block and RESUME_AUTO not in argv:
            os.kill(os.getpid(), signal.SIGUSR2)  # what SLURM sends ahead of the time limit, sent now
            time.sleep(60)  # "training": submitit's USR2 handler checkpoints, requeues and ends this process
            raise AssertionError("the USR2 handler did not end the preempted task")
        return 0


def test_env_from_slurm_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in SLURM_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    env = distributed_env()
    assert {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK")} == {
        "RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8", "NODE_RANK": "1",
    }  # fmt: skip
    assert env["MASTER_ADDR"] == "gpu07"
    assert 20000 <= int(env["MASTER_PORT"]) < 60000
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert distributed_env()["MASTER_PORT"] == env["MASTER_PORT"]  # every task derives the same port


def test_task_exports_the_env_runs_and_marks_done(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key, value in {**SLURM_ENV, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(key, value)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    task = TrainingTask(["pipeline", "c.yaml"], done_file=str(tmp_path / "done.json"), runner=Recorder(str(tmp_path)))
    assert task() == 0
    record = json.loads((tmp_path / "rank0-first.json").read_text())
    assert record["env"]["WORLD_SIZE"] == "16" and record["env"]["MASTER_ADDR"] == "gpu07"
    assert json.loads((tmp_path / "done.json").read_text())["argv"] == ["pipeline", "c.yaml"]


def test_a_failed_run_raises_and_is_not_marked_done(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key, value in SLURM_ENV.items():
        monkeypatch.setenv(key, value)
    task = TrainingTask(["train", "c.yaml"], done_file=str(tmp_path / "done.json"), runner=lambda argv: 3)
    with pytest.raises(RuntimeError, match="exited with 3"):
        task()
    assert not (tmp_path / "done.json").exists()


def test_checkpoint_requeues_the_same_call_with_resume_auto() -> None:
    task = TrainingTask(["pipeline", "c.yaml", "checkpoint.resume=/x/ckpt", "optim.lr=1"], done_file="d.json")
    delayed = task.checkpoint()
    assert isinstance(delayed, DelayedSubmission)
    again = delayed.function
    assert isinstance(again, TrainingTask) and again.done_file == "d.json"
    assert again.argv == ["pipeline", "c.yaml", "optim.lr=1", "checkpoint.resume=auto"]
    assert with_resume_auto(again.argv) == again.argv  # requeued twice: still one resume=auto


def fake_slurm(bin_dir: Path, record: Path) -> None:
    """`srun` (only probed by submitit) and an `sbatch` that keeps the script and answers like SLURM."""
    bin_dir.mkdir()
    scripts = {
        "srun": "#!/bin/sh\nexit 0\n",
        "sbatch": f'#!/bin/sh\ncp "$1" "{record}"\necho "Submitted batch job 777"\n',
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_submit_through_submitit_slurm_executor(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_slurm(tmp_path / "bin", tmp_path / "submitted.sh")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    spec = LaunchSpec(
        config=CONFIG,
        launcher="slurm",
        nodes=2,
        gpus_per_node=4,
        overrides=["train.micro_batch=16"],
        slurm={"partition": "debug", "time": "1:00:00", "folder": str(tmp_path / "jobs")},
    )
    job = submit(spec, str(tmp_path / "out"))
    assert job.job_id == "777"
    script = (tmp_path / "submitted.sh").read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=4" in script
    assert "#SBATCH --partition=debug" in script and "#SBATCH --time=60" in script
    task = DelayedSubmission.load(job.paths.submitted_pickle).function
    assert isinstance(task, TrainingTask)
    assert task.argv == ["pipeline", CONFIG, "train.micro_batch=16"]


def _local_executor(tmp_path: Path, tasks: int, timeout_s: float, signal_s: float):
    spec = LaunchSpec(config=CONFIG, launcher="local", gpus_per_node=tasks)
    executor = make_executor(spec, str(tmp_path / "jobs" / "%j"))
    executor.update_parameters(timeout_min=timeout_s / 60, signal_delay_s=signal_s)
    return executor


def test_local_job_gives_each_task_its_rank(tmp_path: Path) -> None:
    executor = _local_executor(tmp_path, tasks=2, timeout_s=60, signal_s=5)
    job = executor.submit(TrainingTask(["train", "c.yaml"], runner=Recorder(str(tmp_path))))
    assert job.results() == [0, 0]
    envs = [json.loads((tmp_path / f"rank{r}-first.json").read_text())["env"] for r in (0, 1)]
    assert [e["RANK"] for e in envs] == ["0", "1"] and {e["WORLD_SIZE"] for e in envs} == {"2"}
    assert {e["MASTER_ADDR"] for e in envs} == {"127.0.0.1"} and len({e["MASTER_PORT"] for e in envs}) == 1


def test_preemption_requeues_with_resume_auto(tmp_path: Path) -> None:
    """The time limit's USR2 reaches the task, submitit calls checkpoint(), requeues, and the job resumes."""
    executor = _local_executor(tmp_path, tasks=1, timeout_s=300, signal_s=8)
    task = TrainingTask(["pipeline", "c.yaml", "optim.lr=1"], runner=Recorder(str(tmp_path), block_unless_resumed=True))
    job = executor.submit(task)
    assert job.result() == 0
    first = json.loads((tmp_path / "rank0-first.json").read_text())
    resumed = json.loads((tmp_path / "rank0-resumed.json").read_text())
    assert first["argv"] == ["pipeline", "c.yaml", "optim.lr=1"]
    assert resumed["argv"] == ["pipeline", "c.yaml", "optim.lr=1", "checkpoint.resume=auto"]
    assert "Requeued" in (job.stderr() or "") + (job.stdout() or "")


def test_rank0_runs_the_after_steps_and_requeue_keeps_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key, value in {**SLURM_ENV, "SLURM_PROCID": "0"}.items():
        monkeypatch.setenv(key, value)
    seen: list[list[str]] = []
    task = TrainingTask(["train", "c.yaml"], runner=lambda argv: seen.append(argv) or 0, after=[["eval", "w.pt"]])
    assert task() == 0 and seen == [["train", "c.yaml"], ["eval", "w.pt"]]
    assert task.checkpoint().function.after == [["eval", "w.pt"]]
    monkeypatch.setenv("SLURM_PROCID", "3")
    seen.clear()
    assert task() == 0 and seen == [["train", "c.yaml"]]


def test_slurm_defaults_fit_the_job_and_a_missing_slurm_is_a_clean_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from maws_scale.config import ConfigError
    from maws_scale.launch.slurm import slurm_parameters

    one_gpu = slurm_parameters(LaunchSpec(config=CONFIG, launcher="slurm", gpus_per_node=1), num_workers=4)
    assert "exclusive" not in one_gpu and one_gpu["cpus_per_task"] == 5  # shares the node; workers + 1 CPUs
    multi = slurm_parameters(LaunchSpec(config=CONFIG, launcher="slurm", nodes=2, gpus_per_node=4))
    assert multi["exclusive"] is True and "cpus_per_task" not in multi
    pinned = LaunchSpec(config=CONFIG, launcher="slurm", slurm={"exclusive": True, "cpus_per_task": 3})
    assert slurm_parameters(pinned, num_workers=9)["exclusive"] is True
    assert slurm_parameters(pinned, num_workers=9)["cpus_per_task"] == 3
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match="sbatch and srun not found on PATH"):
        submit(LaunchSpec(config=CONFIG, launcher="slurm"), "/tmp/unused")
