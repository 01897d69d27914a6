"""`maws-scale launch`: run the pipeline (or one stage) on a cluster — DeepSpeed hostfile launch or SLURM (submitit).

    maws-scale launch CONFIG --hostfile jobs/hostfile --gpus-per-node 8 [--nodes 8] [KEY=VALUE ...]
    maws-scale launch CONFIG --slurm --nodes 8 --gpus-per-node 8 --partition P --time 72:00:00 [KEY=VALUE ...]
    maws-scale launch --job jobs/vit_2b14_maws_8x8.yaml [--dry-run [--json]]

The run config and every stage's batch layout on nodes × GPUs are validated first: a bad config exits 2 and
launches nothing. ``--dry-run`` prints what would run (the deepspeed command lines, or the sbatch script);
``--json`` prints it as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shlex

from rich.console import Console

from maws_scale.commands._intermixed import allow_intermixed
from maws_scale.config import ConfigError
from maws_scale.launch.spec import COMMANDS, LaunchSpec, load_job, make_spec, validate_run

console = Console(stderr=True, soft_wrap=True)

# flag dest → LaunchSpec field (top level) or slurm.<field>
TOP_FLAGS = ("command", "nodes", "gpus_per_node", "hostfile", "master_addr", "master_port")
SLURM_FLAGS = ("partition", "time", "cpus_per_task", "mem_gb", "account", "qos", "constraint", "job_name", "folder")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "launch",
        help="launch a run on a cluster (deepspeed hostfile or SLURM via submitit)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    allow_intermixed(parser)
    parser.add_argument("config", nargs="?", help="run config (YAML); optional with --job")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    parser.add_argument("--job", help="job spec YAML (jobs/*.yaml); flags given here win over it")
    parser.add_argument("--command", choices=COMMANDS, default=None, help="what each rank runs (default pipeline)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--slurm", action="store_const", const="slurm", dest="launcher", help="submit to SLURM")
    where.add_argument(
        "--local", action="store_const", const="local", dest="launcher", help="submitit LocalExecutor (one node)"
    )
    parser.add_argument("--hostfile", help="deepspeed hostfile ('host slots=N' lines)")
    parser.add_argument("--nodes", type=int, default=None)
    parser.add_argument("--gpus-per-node", type=int, default=None)
    parser.add_argument("--master-addr", default=None, help="deepspeed: default the first host")
    parser.add_argument("--master-port", type=int, default=None)
    parser.add_argument("--no-ssh-check", action="store_true", help="deepspeed: skip its passwordless-ssh probe")
    slurm = parser.add_argument_group("SLURM")
    slurm.add_argument("--partition")
    slurm.add_argument(
        "--time", help="time limit: minutes, HH:MM:SS or D-HH:MM:SS (default 24:00:00; requeued when it runs out)"
    )
    slurm.add_argument("--cpus-per-task", type=int)
    slurm.add_argument("--mem-gb", type=float)
    slurm.add_argument("--account")
    slurm.add_argument("--qos")
    slurm.add_argument("--constraint")
    slurm.add_argument("--job-name")
    slurm.add_argument("--folder", help="submitit folder (default <output_dir>/submitit)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be launched; launch nothing")
    parser.add_argument("--json", action="store_true", help="with --dry-run: one JSON object")
    parser.set_defaults(func=run)


def spec_from_args(args: argparse.Namespace) -> LaunchSpec:
    """Merge the job YAML (if any) with the flags given on the command line; validate."""
    raw = load_job(args.job) if args.job else {}
    raw.setdefault("slurm", {})
    if args.config:
        raw["config"] = args.config
    if args.overrides:
        raw["overrides"] = [*raw.get("overrides", []), *args.overrides]
    if args.launcher:
        raw["launcher"] = args.launcher
    elif args.hostfile:
        raw["launcher"] = "deepspeed"
    for name in TOP_FLAGS:
        if getattr(args, name) is not None:
            raw[name] = getattr(args, name)
    for name in SLURM_FLAGS:
        if getattr(args, name) is not None:
            raw["slurm"][name] = getattr(args, name)
    if args.no_ssh_check:
        raw["ssh_check"] = False
    if "config" not in raw:
        raise ConfigError("launch: give a run CONFIG (or --job with a 'config:' key)")
    return make_spec(raw, origin=args.job or "launch")


def run(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    if spec.launcher == "deepspeed":
        return _deepspeed(spec, args)
    return _submitit(spec, args)


def _deepspeed(spec: LaunchSpec, args: argparse.Namespace) -> int:
    from maws_scale.launch.deepspeed_launch import plan_deepspeed, run_deepspeed

    plan = plan_deepspeed(spec)
    validate_run(spec, plan.world_size)
    if args.dry_run:
        if args.json:
            print(json.dumps({"launcher": "deepspeed", **plan.to_json()}, indent=1))
        else:
            print(f"# {len(plan.hosts)} node(s), world size {plan.world_size}; run here:")
            print(shlex.join(plan.command))
            for host, command in plan.node_commands.items():
                print(f"# on {host}:")
                print(shlex.join(command))
        return 0
    console.print(f"[bold]launch[/] deepspeed on {len(plan.hosts)} node(s), world {plan.world_size}", highlight=False)
    return run_deepspeed(plan)


def _submitit(spec: LaunchSpec, args: argparse.Namespace) -> int:
    from maws_scale.launch.slurm import dry_run_spec, submit

    if spec.launcher == "slurm" and (spec.nodes is None or spec.gpus_per_node is None):
        raise ConfigError("--slurm needs --nodes and --gpus-per-node (or nodes / gpus_per_node in the job spec)")
    cfg = validate_run(spec, spec.world_size())
    if args.dry_run:
        plan = dry_run_spec(spec, cfg.output_dir, num_workers=cfg.data.num_workers)
        if args.json:
            print(json.dumps(plan, indent=1, default=str))
        else:
            print(plan["sbatch"] or json.dumps(plan["parameters"], indent=1, default=str))
            print(f"# each of the {plan['world_size']} tasks runs: {shlex.join(plan['task']['argv'])}")
            print(f"# after preemption/timeout it is requeued as: {shlex.join(plan['task']['on_requeue'])}")
        return 0
    job = submit(spec, cfg.output_dir, num_workers=cfg.data.num_workers)
    console.print(
        f"[bold]submitted[/] {spec.launcher} job {job.job_id}: {spec.nodes or 1} node(s) × "
        f"{spec.gpus_per_node or 1} GPU(s); logs in {job.paths.folder}",
        highlight=False,
    )
    print(job.job_id)
    return 0
