"""`maws-scale sweep SWEEP.yaml` runs a grid × list of runs; `maws-scale sweep report SWEEP.yaml` tabulates and fits.

    maws-scale sweep configs/sweeps/maws_effect.yaml [--dry-run [--json]] [--only GLOB] [--force] [--fail-fast]
    maws-scale sweep configs/sweeps/scaling.yaml --slurm --nodes 1 --gpus-per-node 8 --partition P --time 4:00:00
    maws-scale sweep report configs/sweeps/maws_effect.yaml [--out DIR]

Every point is validated before anything runs (a bad key exits 2). Points run one after another here (each in its
own child process and output dir) or, with --slurm, as one submitit job array; finished points are skipped.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from rich.console import Console
from rich.table import Table

from maws_scale.commands._intermixed import allow_intermixed
from maws_scale.config import ConfigError
from maws_scale.experiments.sweep import Sweep, load_sweep

console = Console(stderr=True, soft_wrap=True)
SLURM_FLAGS = ("partition", "time", "cpus_per_task", "mem_gb", "account", "qos", "constraint")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="run a sweep of configs (grid × list), or `sweep report` its results",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    allow_intermixed(parser)
    parser.add_argument("target", metavar="SWEEP|report", help="sweep YAML, or 'report' followed by the sweep YAML")
    parser.add_argument(
        "rest",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides applied to every point (after 'report': the sweep YAML first)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list the points (and the sbatch script); run nothing")
    parser.add_argument("--json", action="store_true", help="with --dry-run / report: print JSON")
    parser.add_argument("--only", action="append", metavar="GLOB", help="run only points whose id matches")
    parser.add_argument("--force", action="store_true", help="re-run finished points too")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failed point")
    parser.add_argument("--out", help="report: output folder (default <output_dir>/report)")
    parser.add_argument("--slurm", action="store_true", help="submit the points as a SLURM job array (submitit)")
    parser.add_argument("--nodes", type=int)
    parser.add_argument("--gpus-per-node", type=int)
    helps = {
        "time": "time limit per point: minutes, HH:MM:SS or D-HH:MM:SS (default 24:00:00)",
        "cpus_per_task": "CPUs per task (default: data.num_workers + 1)",
    }
    for flag in SLURM_FLAGS:
        parser.add_argument(
            f"--{flag.replace('_', '-')}",
            type=float if flag == "mem_gb" else str,
            help=helps.get(flag),
        )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.target == "report":
        if not args.rest or "=" in args.rest[0]:
            raise ConfigError("sweep report: give the sweep YAML")
        return _report(load_sweep(args.rest[0], _overrides(args.rest[1:])), args)
    sweep = load_sweep(args.target, _overrides(args.rest))  # every point validated here
    if args.dry_run:
        from maws_scale.experiments.sweep_run import select

        return _dry_run(sweep, select(sweep, args.only, args.force), _launch(sweep, args), args.json)
    from maws_scale.experiments.sweep_run import SweepLock

    try:
        with SweepLock(sweep.output_dir):
            return _run(sweep, args)
    except KeyboardInterrupt:
        console.print(
            f"sweep {sweep.spec.name}: interrupted (Ctrl-C); the running point was stopped. Re-run the same command to "
            "continue (finished points are skipped).",
            highlight=False,
        )
        return 130


def _overrides(items: list[str]) -> list[str]:
    for item in items:
        if "=" not in item:
            hint = f" (did you mean `sweep report {item}`?)" if item.endswith((".yaml", ".yml")) else ""
            raise ConfigError(f"sweep: unexpected argument '{item}': overrides are KEY=VALUE{hint}")
    return items


def _run(sweep: Sweep, args: argparse.Namespace) -> int:
    from maws_scale.experiments.sweep_run import select

    pending = select(sweep, args.only, args.force)
    launch = _launch(sweep, args)
    if not pending:
        console.print(f"sweep {sweep.spec.name}: all {len(sweep.points)} points are finished", highlight=False)
        return 0
    chosen = len(select(sweep, args.only, force=True))
    unselected = f", {len(sweep.points) - chosen} not selected (--only)" if chosen < len(sweep.points) else ""
    console.print(
        f"sweep {sweep.spec.name}: {len(pending)} to run, {chosen - len(pending)} finished (skipped){unselected}; "
        f"MLflow {sweep.tracking_uri}",
        highlight=False,
    )
    from maws_scale.experiments.sweep_run import close_parent_run, sweep_parent_run

    parent = sweep_parent_run(sweep)
    if launch is None:
        from maws_scale.experiments.sweep_run import run_sequential

        status = "KILLED"
        try:
            outcomes = run_sequential(
                sweep, pending, fail_fast=args.fail_fast, console=console, parent=parent, force=args.force
            )
            failed = [o.point.run_id for o in outcomes if o.returncode != 0]
            status = "FAILED" if failed else "FINISHED"
        finally:
            close_parent_run(sweep, parent, status)
        if failed:
            console.print(f"[red]{len(failed)} point(s) failed:[/] {', '.join(failed)}", highlight=False)
        return 1 if failed else 0
    from maws_scale.experiments.sweep_run import submit_points

    jobs = submit_points(sweep, pending, launch, parent=parent, force=args.force)
    close_parent_run(sweep, parent, "FINISHED")  # a grouping run: the points' own runs carry their status
    for point, job in zip(pending, jobs):
        print(f"{point.run_id}\t{job.job_id}")
    return 0


def _launch(sweep: Sweep, args: argparse.Namespace):
    """The LaunchSpec for submitted sweeps (--slurm or the sweep's launch.launcher), None to run here."""
    extra: dict = {"slurm": {}}
    if args.slurm:
        extra["launcher"] = "slurm"
    if args.nodes is not None:
        extra["nodes"] = args.nodes
    if args.gpus_per_node is not None:
        extra["gpus_per_node"] = args.gpus_per_node
    for flag in SLURM_FLAGS:
        if getattr(args, flag) is not None:
            extra["slurm"][flag] = getattr(args, flag)
    from maws_scale.launch.spec import check_layout

    launcher = extra.get("launcher", sweep.spec.launch.get("launcher", "sequential"))
    spec = None if launcher == "sequential" else sweep.launch_spec(extra)
    world = spec.world_size() if spec is not None else 1  # a point run here is one plain process
    for point in sweep.points:  # each point's batch layout must fit the world it will run on
        if point.command == "eval":
            continue
        try:
            check_layout(point.config, point.command, world)
        except ConfigError as err:
            raise ConfigError(f"sweep point '{point.run_id}': {err}") from None
    return spec


def _dry_run(sweep: Sweep, pending, launch, as_json: bool) -> int:
    rows = [
        {
            "run_id": p.run_id,
            "status": p.status(),
            "coords": p.coords,
            "output_dir": str(p.run_dir),
            "argv": ["maws-scale", *p.standalone_argv(sweep.spec.base)],
        }
        for p in sweep.points
    ]
    sbatch = None
    if launch is not None and launch.launcher == "slurm" and pending:
        from maws_scale.experiments.sweep_run import array_sbatch

        sbatch = array_sbatch(sweep, len(pending), launch)
    if as_json:
        payload = {
            "name": sweep.spec.name,
            "tracking_uri": sweep.tracking_uri,
            "points": rows,
            "to_run": [p.run_id for p in pending],
            "launcher": launch.launcher if launch else "sequential",
            "sbatch": sbatch,
        }
        print(json.dumps(payload, indent=1, default=str))
        return 0
    table = Table(title=f"sweep {sweep.spec.name}: {len(sweep.points)} points, {len(pending)} to run")
    for column in ("run", "status", *sweep.coordinates()):
        table.add_column(column)
    for p in sweep.points:
        table.add_row(p.run_id, p.status(), *(str(p.coords.get(c, "")) for c in sweep.coordinates()))
    Console().print(table)
    for p in pending:  # the sweep writes <run_dir>/config.yaml only when it runs: show what builds it
        print(shlex.join(["maws-scale", *p.standalone_argv(sweep.spec.base)]))
    if sbatch:
        print(sbatch)
    return 0


def _report(sweep: Sweep, args: argparse.Namespace) -> int:
    from maws_scale.experiments.report import build_report, log_report

    try:
        report = build_report(sweep, Path(args.out) if args.out else None)
    except ValueError as err:
        console.print(f"[bold red]report:[/] {err}", highlight=False)
        return 1
    run_id = log_report(sweep, report)
    if args.json:
        print(json.dumps({"fits": report.fits, "files": [str(f) for f in report.files]}, indent=1))
        return 0
    from maws_scale.experiments.report import group_keys, markdown

    keys = group_keys(sweep)
    metrics = sweep.spec.report.metrics or [
        c for c in report.runs.columns if c not in ("run", "_mlflow", "stale", *keys)
    ]
    print(markdown(report.summary, keys, metrics))
    stale = list(report.runs.loc[report.runs["stale"], "run"]) if "stale" in report.runs else []
    if stale:
        console.print(
            f"[yellow]warning:[/] {len(stale)} point(s) show results of an earlier config ({', '.join(stale)}); "
            f"re-run `maws-scale sweep {sweep.path}` to refresh them",
            highlight=False,
        )
    for fit in report.fits:
        print(f"fit [{fit['group']}]: {fit['text']}")
        for warning in fit.get("warnings") or []:
            console.print(f"[yellow]warning:[/] fit [{fit['group']}]: {warning}", highlight=False)
    console.print(f"wrote {len(report.files)} files to {report.files[0].parent}; MLflow run {run_id}", highlight=False)
    return 0
