"""Run a sweep's pending points: one child process after another here, or as a SLURM job array through submitit."""

from __future__ import annotations

import fnmatch
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from maws_scale.errors import RunError
from maws_scale.experiments.sweep import Point, Sweep, mark_done, prepare_points
from maws_scale.launch.slurm import TrainingTask, make_executor, sbatch_script
from maws_scale.launch.spec import LaunchSpec
from maws_scale.progress import bar_columns
from maws_scale.track.mlflow import PARENT_ENV


@dataclass
class Outcome:
    point: Point
    returncode: int
    seconds: float


def sweep_parent_run(sweep: Sweep) -> str | None:
    """The sweep's own MLflow run (``<name>-sweep``, re-used by re-runs) that every point's runs nest under; None
    when the store cannot be reached (the points still run and log)."""
    try:
        from mlflow.tracking import MlflowClient

        from maws_scale.track.mlflow import artifact_location, run_artifacts

        client = MlflowClient(tracking_uri=sweep.tracking_uri)
        experiment = client.get_experiment_by_name(sweep.spec.name)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else client.create_experiment(sweep.spec.name, artifact_location=artifact_location(sweep.tracking_uri))
        )
        from maws_scale.track.mlflow import source_tags

        found = client.search_runs([experiment_id], filter_string=f"tags.sweep_parent = '{sweep.spec.name}'")
        tags = {
            **source_tags(),
            "sweep_parent": sweep.spec.name,
            "sweep_file": str(sweep.path),
            "sweep.points": str(len(sweep.points)),
            "sweep.command": sweep.spec.command,
            "sweep.coordinates": ", ".join(sweep.coordinates()),
        }
        if found:
            run_id = found[0].info.run_id
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
        else:
            run_id = client.create_run(experiment_id, run_name=f"{sweep.spec.name}-sweep", tags=tags).info.run_id
        # the YAML as it was for this run of the sweep, in the store's own folder (also when the store was moved)
        run_artifacts(sweep.tracking_uri, run_id).log_artifact(str(sweep.path), "sweep")
        return run_id
    except Exception as err:  # tracking must never stop a sweep
        Console(stderr=True).print(
            f"[yellow]MLflow: no sweep parent run ({type(err).__name__}: {err})", highlight=False
        )
        return None


def close_parent_run(sweep: Sweep, run_id: str | None, status: str) -> None:
    """Mark the sweep's parent run ``status`` (FINISHED / FAILED / KILLED)."""
    if run_id is None:
        return
    try:
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=sweep.tracking_uri).set_terminated(run_id, status=status)
    except Exception as err:  # a dead tracking server must not fail the sweep, but the user should know
        Console(stderr=True).print(
            f"[yellow]MLflow: could not mark the sweep run {run_id} {status} ({type(err).__name__}: {err})",
            highlight=False,
        )


class SweepLock:
    """An exclusive lock on a sweep's output folder (``<output_dir>/.sweep.lock``, released when the process ends):
    a second sweep on the same folder is refused (RunError), instead of two processes writing the same run logs."""

    def __init__(self, output_dir: Path) -> None:
        self.path = Path(output_dir) / ".sweep.lock"
        self._handle: Any = None

    def __enter__(self) -> SweepLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunError(
                f"{self.path.parent}: another sweep is running on this folder ({holder}); wait for it"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()  # closing releases the lock


def progress_bar(console: Console) -> Progress:
    """A bar with i/N, elapsed time and ETA; where the console is not a terminal (a log file) it is not redrawn (the
    caller prints a plain line per item instead)."""
    return Progress(*bar_columns(), console=console, transient=False, disable=not console.is_terminal)


def select(sweep: Sweep, only: list[str] | None = None, force: bool = False) -> list[Point]:
    """Points to run: not finished with their current config (all with ``force``), matching an ``only`` glob."""
    chosen = [p for p in sweep.points if not only or any(fnmatch.fnmatch(p.run_id, g) for g in only)]
    return chosen if force else [p for p in chosen if p.status() != "done"]


def _tail(path: os.PathLike, lines: int = 25) -> str:
    try:
        with open(path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return ""


def run_sequential(
    sweep: Sweep,
    points: list[Point],
    fail_fast: bool = False,
    console: Console | None = None,
    parent: str | None = None,
    force: bool = False,
) -> list[Outcome]:
    """Run each point as ``python -m maws_scale.cli <command> <run_dir>/config.yaml``; log to ``<run_dir>/run.log``.
    ``parent``: the sweep's MLflow run, handed to each point (its runs nest under it). ``force``: retrain points whose
    folder holds a finished run of the same config (that run is moved aside, as a changed point's is)."""
    console = console or Console(stderr=True)
    nest = {PARENT_ENV: parent} if parent else {}
    outcomes: list[Outcome] = []
    with progress_bar(console) as bar:
        task = bar.add_task(f"sweep {sweep.spec.name}", total=len(points))
        for i, point in enumerate(points):
            bar.update(task, description=f"sweep {sweep.spec.name} [{i + 1}/{len(points)}] {point.run_id}")
            if not console.is_terminal:
                bar.console.print(f"sweep {sweep.spec.name} [{i + 1}/{len(points)}]: {point.run_id}", highlight=False)
            for _, old in prepare_points(sweep, [point], force):
                bar.console.print(f"{point.run_id}: its earlier run (another config) is kept in {old}", highlight=False)
            start = time.perf_counter()
            log = point.run_dir / "run.log"
            code = 0
            with open(log, "a") as handle:  # a resumed run of the same config appends
                for argv in _steps(sweep, point):
                    handle.write(f"$ maws-scale {shlex.join(argv)}\n")
                    handle.flush()
                    code = subprocess.call(
                        [sys.executable, "-m", "maws_scale.cli", *argv],
                        stdout=handle,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, "PYTHONUNBUFFERED": "1", **sweep.spec.env, **nest},
                    )
                    if code != 0:
                        break
            seconds = time.perf_counter() - start
            outcomes.append(Outcome(point, code, seconds))
            if code == 0:
                mark_done(point, {"seconds": round(seconds, 1)})
                bar.console.print(f"[green]done[/] {point.run_id} ({seconds:.0f} s)", highlight=False)
            else:
                bar.console.print(
                    f"[red]failed[/] {point.run_id} (exit {code}); last lines of {log}:\n{_tail(log)}",
                    highlight=False,
                )
                if fail_fast:
                    break
            bar.advance(task)
    return outcomes


def _steps(sweep: Sweep, point: Point) -> list[list[str]]:
    """The commands of one point: its run, then (for a ``train`` point) the evaluation of its checkpoint."""
    steps = [point.argv()]
    if point.command == "train" and sweep.spec.evaluate and point.evaluate:
        steps.append(point.eval_argv())
    return steps


def _executor(sweep: Sweep, launch: LaunchSpec, offline: bool = False) -> Any:
    """One executor for the sweep's job array: named after the sweep, CPUs per task from the points' data workers."""
    folder = str((sweep.output_dir / "submitit" / "%j").absolute())
    if not launch.slurm.job_name:
        launch = launch.model_copy(
            update={"slurm": launch.slurm.model_copy(update={"job_name": f"sweep-{sweep.spec.name}"})}
        )
    workers = max((p.config.data.num_workers for p in sweep.points), default=None)
    return make_executor(launch, folder, offline=offline, num_workers=workers)


def submit_points(
    sweep: Sweep, points: list[Point], launch: LaunchSpec, parent: str | None = None, force: bool = False
) -> list[Any]:
    """Submit the points as one submitit batch (a SLURM job array); each task marks its point done on success.
    ``parent``: the sweep's MLflow run, handed to each task (its runs nest under it)."""
    nest = {PARENT_ENV: parent} if parent else {}
    prepare_points(sweep, points, force)
    executor = _executor(sweep, launch)
    jobs = []
    with executor.batch():
        for point in points:
            first, *after = _steps(sweep, point)
            task = TrainingTask(
                first,
                done_file=str(point.done_path),
                done_info={"run_id": point.run_id, "config_hash": point.config_hash},
                after=after,
                env={**sweep.spec.env, **nest},
            )
            jobs.append(executor.submit(task))
    return jobs


def array_sbatch(sweep: Sweep, count: int, launch: LaunchSpec) -> str:
    """The sbatch script of the job array that :func:`submit_points` would submit for ``count`` points."""
    executor = _executor(sweep, launch, offline=True)
    executor.parameters["map_count"] = count
    return sbatch_script(executor)
