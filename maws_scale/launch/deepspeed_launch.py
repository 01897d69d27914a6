"""Launch through DeepSpeed's own launcher: ``deepspeed --hostfile H … --module maws_scale.cli pipeline CONFIG``.

The hostfile is read with DeepSpeed's parser (``host slots=N`` lines) and trimmed to ``--nodes`` hosts and
``--gpus-per-node`` slots exactly as ``deepspeed`` will do, so the plan (and ``--dry-run``) shows the real world
size and, per node, the ``deepspeed.launcher.launch`` command that ``deepspeed`` runs there over pdsh/ssh (the same
line works by hand with ``--no_ssh``-style launches, one per node).
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType

from maws_scale.config import ConfigError
from maws_scale.launch.spec import LaunchSpec

MODULE = "maws_scale.cli"


@dataclass
class DeepSpeedPlan:
    """The command to run here, and what each node will run."""

    command: list[str]
    hosts: dict[str, list[int]]
    world_size: int
    master_addr: str
    master_port: int
    node_commands: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict:
        data = asdict(self)
        data["command_line"] = shlex.join(self.command)
        data["node_command_lines"] = {h: shlex.join(c) for h, c in self.node_commands.items()}
        return data


def _runner() -> ModuleType:
    """``deepspeed.launcher.runner``, imported with DeepSpeed's start-up log lines sent to stderr (stdout may be
    the ``--json`` output)."""
    with contextlib.redirect_stdout(sys.stderr):
        from deepspeed.launcher import runner
    return runner


def read_hostfile(path: str) -> dict[str, int]:
    """``{host: slots}`` in file order, parsed by DeepSpeed's launcher; ConfigError if missing or malformed."""
    if not Path(path).is_file():
        raise ConfigError(f"--hostfile: {path} not found")
    try:
        return dict(_runner().fetch_hostfile(path))
    except ValueError as err:
        raise ConfigError(f"--hostfile: {path}: {err}") from None


def select_hosts(pool: dict[str, int], nodes: int | None, gpus_per_node: int | None) -> dict[str, list[int]]:
    """The first ``nodes`` hosts with slots ``0..gpus_per_node-1``; refuse more than the hostfile offers."""
    runner = _runner()
    if nodes is not None and nodes > len(pool):
        raise ConfigError(f"--nodes={nodes} but the hostfile lists {len(pool)} host(s): {', '.join(pool)}")
    chosen = list(pool)[: nodes or len(pool)]
    if gpus_per_node is not None:
        short = [h for h in chosen if pool[h] < gpus_per_node]
        if short:
            raise ConfigError(f"--gpus-per-node={gpus_per_node} but {short[0]} has only {pool[short[0]]} slots")
    active = runner.parse_inclusion_exclusion(pool, "", "")
    return dict(runner.apply_num_nodes_and_gpus(active, nodes or -1, gpus_per_node or -1))


def plan_deepspeed(spec: LaunchSpec, python: str | None = None) -> DeepSpeedPlan:
    """Build the ``deepspeed`` command line (and the per-node launch lines) for ``spec``."""
    if not spec.hostfile:
        raise ConfigError("--hostfile: the deepspeed launcher needs a hostfile ('host slots=N' per line)")
    hosts = select_hosts(read_hostfile(spec.hostfile), spec.nodes, spec.gpus_per_node)
    world = sum(len(slots) for slots in hosts.values())
    master_addr = spec.master_addr or next(iter(hosts))
    user = [MODULE, spec.command, spec.config, *spec.overrides]
    command = ["deepspeed", "--hostfile", spec.hostfile]
    if spec.nodes is not None:
        command += ["--num_nodes", str(spec.nodes)]
    if spec.gpus_per_node is not None:
        command += ["--num_gpus", str(spec.gpus_per_node)]
    command += ["--master_addr", master_addr, "--master_port", str(spec.master_port)]
    if not spec.ssh_check:
        command.append("--no_ssh_check")
    command += ["--no_local_rank", "--module", *user]

    world_info = _runner().encode_world_info(hosts)
    python = python or sys.executable
    node_commands = {
        host: [
            python,
            "-u",
            "-m",
            "deepspeed.launcher.launch",
            f"--world_info={world_info}",
            f"--node_rank={rank}",
            f"--master_addr={master_addr}",
            f"--master_port={spec.master_port}",
            "--module",
            "--no_local_rank",
            *user,
        ]
        for rank, host in enumerate(hosts)
    }
    return DeepSpeedPlan(command, hosts, world, master_addr, spec.master_port, node_commands)


def run_deepspeed(plan: DeepSpeedPlan) -> int:
    """Run the ``deepspeed`` command (found on PATH, else ``python -m deepspeed.launcher.runner``); its exit code."""
    command = list(plan.command)
    if shutil.which(command[0]) is None:
        command = [sys.executable, "-m", "deepspeed.launcher.runner", *command[1:]]
    return subprocess.call(command)
