"""SLURM jobs through submitit: one task per GPU, torch.distributed set up from SLURM, requeue on preemption.

Each task of the job runs :class:`TrainingTask`: it reads its place in the job from submitit's ``JobEnvironment``
(``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS``, the node list), exports ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` and runs ``maws-scale pipeline|train`` in process. The task is a
submitit ``Checkpointable``: on preemption or at the time limit SLURM sends USR2, submitit calls
:meth:`TrainingTask.checkpoint`, which hands back the same call with ``checkpoint.resume=auto``, and requeues the
job; the run then continues from its newest complete checkpoint. ``launcher: local`` runs the same job with
submitit's LocalExecutor (one node, a process per GPU) — what the tests use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from maws_scale.config import ConfigError
from maws_scale.launch.spec import LaunchSpec

RESUME_AUTO = "checkpoint.resume=auto"
Runner = Callable[[list[str]], int]


def with_resume_auto(argv: list[str]) -> list[str]:
    """``argv`` with any ``checkpoint.resume=…`` override replaced by ``checkpoint.resume=auto`` (appended last)."""
    return [a for a in argv if not a.startswith("checkpoint.resume=")] + [RESUME_AUTO]


def master_port(job_id: str) -> int:
    """A port in [20000, 60000) that every task of a job derives alike from the job id (MASTER_PORT wins)."""
    if os.environ.get("MASTER_PORT"):
        return int(os.environ["MASTER_PORT"])
    return 20000 + int(hashlib.sha256(job_id.encode()).hexdigest(), 16) % 40000


def distributed_env(job: Any | None = None) -> dict[str, str]:
    """torch.distributed's env:// variables for this task, from submitit's JobEnvironment."""
    job = job or submitit.JobEnvironment()
    nodes = max(1, job.num_nodes)
    return {
        "RANK": str(job.global_rank),
        "WORLD_SIZE": str(job.num_tasks),
        "LOCAL_RANK": str(job.local_rank),
        "LOCAL_WORLD_SIZE": str(job.num_tasks // nodes),
        "NODE_RANK": str(job.node),
        "MASTER_ADDR": "127.0.0.1" if nodes == 1 else job.hostnames[0],
        "MASTER_PORT": str(master_port(job.job_id)),
    }


def _cli_main(argv: list[str]) -> int:
    from maws_scale.cli import main

    return main(argv)


class TrainingTask(Checkpointable):
    """``maws-scale <argv>`` as one task of a distributed job; requeued with ``checkpoint.resume=auto``.

    ``done_file``: written by rank 0 after a successful run, with ``done_info`` (sweeps skip finished points).
    ``runner``: the callable that runs the argv (default: ``maws_scale.cli.main``).
    ``after``: argvs rank 0 runs next when the run succeeded (a sweep's evaluation of a single stage).
    ``env``: extra environment variables, set before anything runs.
    """

    def __init__(
        self,
        argv: list[str],
        done_file: str | None = None,
        runner: Runner | None = None,
        done_info: dict[str, Any] | None = None,
        after: list[list[str]] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.done_file = done_file
        self.runner = runner
        self.done_info = dict(done_info or {})
        self.after = [list(a) for a in after or []]
        self.env = dict(env or {})

    def __call__(self) -> int:
        os.environ.update(self.env)
        env = distributed_env()
        os.environ.update(env)
        runner = self.runner or _cli_main
        steps = [self.argv] + (self.after if env["RANK"] == "0" else [])
        for argv in steps:
            code = int(runner(argv) or 0)
            if code != 0:
                raise RuntimeError(f"maws-scale {shlex.join(argv)} exited with {code} on rank {env['RANK']}")
        if self.done_file and env["RANK"] == "0":
            write_done(self.done_file, {**self.done_info, "argv": self.argv})
        return 0

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Called by submitit on preemption/timeout: the same run, resuming from its newest checkpoint."""
        resumed = TrainingTask(
            with_resume_auto(self.argv), self.done_file, self.runner, self.done_info, self.after, self.env
        )
        return DelayedSubmission(resumed)


def write_done(path: str | os.PathLike, info: dict[str, Any]) -> None:
    """Atomically write a completion marker (JSON) at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({**info, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
    tmp.replace(path)


# ----- executors --------------------------------------------------------------------------------------------------
class _OfflineSlurmExecutor(submitit.SlurmExecutor):
    """A SlurmExecutor usable where SLURM is absent, to render the sbatch script of a dry run (never submits)."""

    @classmethod
    def affinity(cls) -> int:
        return 2


def require_slurm() -> None:
    """Refuse (ConfigError, no traceback) to submit where SLURM's commands are absent."""
    missing = [cmd for cmd in ("sbatch", "srun") if shutil.which(cmd) is None]
    if missing:
        raise ConfigError(
            f"--slurm: {' and '.join(missing)} not found on PATH: submit from a SLURM login node, add --dry-run to see "
            "the sbatch script, or drop --slurm to run here"
        )


def slurm_parameters(spec: LaunchSpec, num_workers: int | None = None) -> dict[str, Any]:
    """submitit ``SlurmExecutor`` parameters: ``nodes`` × one task per GPU, USR2 before the limit for requeue.
    ``num_workers`` (``data.num_workers``) sets ``cpus_per_task`` (workers + 1) unless the spec sets it."""
    o = spec.slurm
    gpus = spec.gpus_per_node or 1
    nodes = spec.nodes or 1
    exclusive = o.exclusive if o.exclusive is not None else (nodes > 1 or gpus >= 8)
    cpus = o.cpus_per_task or (num_workers + 1 if num_workers is not None else None)
    params: dict[str, Any] = {
        "job_name": o.job_name or f"maws-{spec.command}-{Path(spec.config).stem}",
        "nodes": spec.nodes or 1,
        "ntasks_per_node": gpus,
        "gpus_per_node": gpus,
        "time": o.time,
        "signal_delay_s": o.signal_delay_s,
    }
    optional = {
        "partition": o.partition,
        "cpus_per_task": cpus,
        "mem": f"{o.mem_gb:g}GB" if o.mem_gb else None,
        "account": o.account,
        "qos": o.qos,
        "constraint": o.constraint,
        "exclusive": True if exclusive else None,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    if o.setup:
        params["setup"] = list(o.setup)
    if o.additional:
        params["additional_parameters"] = dict(o.additional)
    return params


def job_folder(spec: LaunchSpec, output_dir: str) -> str:
    """Where submitit keeps this job's pickles and logs (``%j`` becomes the job id)."""
    return str((Path(spec.slurm.folder or Path(output_dir) / "submitit") / "%j").absolute())


def make_executor(
    spec: LaunchSpec, folder: str, offline: bool = False, num_workers: int | None = None
) -> submitit.Executor:
    """A configured submitit executor for ``spec.launcher`` (slurm or local); ``offline`` for dry runs."""
    if spec.launcher == "local":
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=spec.slurm.max_requeue)
        executor.update_parameters(
            nodes=1,
            tasks_per_node=spec.gpus_per_node or 1,
            gpus_per_node=0,
            timeout_min=spec.slurm.time,
            signal_delay_s=spec.slurm.signal_delay_s,
        )
        return executor
    if not offline:
        require_slurm()
    cls = _OfflineSlurmExecutor if offline else submitit.SlurmExecutor
    executor = cls(folder=folder, max_num_timeout=spec.slurm.max_requeue)
    executor.update_parameters(**slurm_parameters(spec, num_workers))
    return executor


def sbatch_script(executor: submitit.SlurmExecutor) -> str:
    """The sbatch file submitit writes for one job of ``executor`` (what ``sbatch`` would receive)."""
    return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")


def argv_for(spec: LaunchSpec) -> list[str]:
    """The ``maws-scale`` argv every task runs."""
    return [spec.command, spec.config, *spec.overrides]


def dry_run_spec(spec: LaunchSpec, output_dir: str, num_workers: int | None = None) -> dict[str, Any]:
    """What ``--dry-run --json`` prints for a SLURM launch: parameters, the sbatch text and the task's argv."""
    folder = job_folder(spec, output_dir)
    executor = make_executor(spec, folder, offline=True, num_workers=num_workers)
    argv = argv_for(spec)
    return {
        "launcher": spec.launcher,
        "folder": folder,
        "parameters": dict(executor.parameters),
        "world_size": spec.world_size(),
        "task": {"argv": ["maws-scale", *argv], "on_requeue": ["maws-scale", *with_resume_auto(argv)]},
        "sbatch": sbatch_script(executor) if spec.launcher == "slurm" else None,
    }


def submit(
    spec: LaunchSpec, output_dir: str, runner: Runner | None = None, num_workers: int | None = None
) -> submitit.Job:
    """Submit the job; return submitit's handle (``job.job_id``, ``job.result()``)."""
    executor = make_executor(spec, job_folder(spec, output_dir), num_workers=num_workers)
    return executor.submit(TrainingTask(argv_for(spec), runner=runner))
