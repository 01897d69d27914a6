"""What to launch and where: a :class:`LaunchSpec` (from a job YAML and/or command-line flags), validated up front.

A job YAML (``jobs/*.yaml``) holds the same fields as ``maws-scale launch``'s flags::

    config: configs/vit_2b14_maws.yaml      # the run config (validated before anything starts)
    command: pipeline                       # pipeline | train
    overrides: [checkpoint.every=2000]
    launcher: slurm                         # slurm | deepspeed | local
    nodes: 8
    gpus_per_node: 8
    slurm: {partition: learn, time: "72:00:00", cpus_per_task: 10, mem_gb: 480, setup: [...]}

Flags given on the command line win over the YAML.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from maws_scale.config import ConfigError, RunConfig, load_config

COMMANDS = ("pipeline", "train")


def parse_minutes(value: int | float | str) -> int:
    """SLURM time limits → minutes: 90, "90", "HH:MM:SS", "MM:SS", "D-HH", "D-HH:MM[:SS]"."""
    if isinstance(value, (int, float)):
        minutes = int(value)
    else:
        text = str(value).strip()
        match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
        if not match:
            raise ValueError(f"not a SLURM time: '{value}' (minutes, HH:MM:SS or D-HH:MM:SS)")
        days, a, b, c = match.groups()
        if days is not None:  # D-HH[:MM[:SS]]
            minutes = int(days) * 1440 + int(a) * 60 + int(b or 0) + (1 if c and int(c) else 0)
        elif b is None:  # MM
            minutes = int(a)
        elif c is None:  # MM:SS
            minutes = int(a) + (1 if int(b) else 0)
        else:  # HH:MM:SS
            minutes = int(a) * 60 + int(b) + (1 if int(c) else 0)
    if minutes <= 0:
        raise ValueError(f"time limit must be positive, got '{value}'")
    return minutes


class SlurmOptions(BaseModel):
    """sbatch resources besides nodes and GPUs (submitit ``SlurmExecutor`` parameter names)."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = None
    time: int = Field(60 * 24, gt=0, description="minutes (the YAML and --time also take HH:MM:SS or D-HH:MM:SS)")
    cpus_per_task: int | None = Field(None, gt=0, description="CPUs per task (one task per GPU)")
    mem_gb: float | None = Field(None, gt=0, description="memory per node")
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclusive: bool | None = Field(
        None, description="whole nodes; default: only for a multi-node job or one that takes 8+ GPUs of its node"
    )
    job_name: str | None = None
    folder: str | None = Field(None, description="submitit logs and pickles; default <output_dir>/submitit")
    max_requeue: int = Field(10, ge=0, description="requeues after preemption or timeout (submitit max_num_timeout)")
    signal_delay_s: int = Field(120, ge=10, description="USR2 this long before the time limit: save and requeue")
    setup: list[str] = Field(default_factory=list, description="shell lines run before srun (module load, env)")
    additional: dict[str, Any] = Field(default_factory=dict, description="extra #SBATCH flags")

    @field_validator("time", mode="before")
    @classmethod
    def _minutes(cls, value: Any) -> int:
        return parse_minutes(value)


class LaunchSpec(BaseModel):
    """A launch: run config + command + where it runs."""

    model_config = ConfigDict(extra="forbid")

    config: str
    command: Literal["pipeline", "train"] = "pipeline"
    overrides: list[str] = Field(default_factory=list)
    launcher: Literal["deepspeed", "slurm", "local"] = "deepspeed"
    nodes: int | None = Field(None, gt=0, description="default: every host of the hostfile (deepspeed), 1 (slurm)")
    gpus_per_node: int | None = Field(None, gt=0)
    hostfile: str | None = None
    master_addr: str | None = None
    master_port: int = Field(29500, gt=0, lt=65536)
    ssh_check: bool = True
    slurm: SlurmOptions = Field(default_factory=SlurmOptions)

    def world_size(self) -> int:
        return (self.nodes or 1) * (self.gpus_per_node or 1)


def load_job(path: str | os.PathLike) -> dict[str, Any]:
    """The raw mapping of a job YAML; relative ``config`` / ``hostfile`` paths stay relative to the working dir."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read job spec ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a job spec must be a mapping")
    return raw


def make_spec(raw: dict[str, Any], origin: str = "launch") -> LaunchSpec:
    """Validate a launch mapping; raise ConfigError naming the key."""
    try:
        return LaunchSpec.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{origin}: {key}: {first['msg'].removeprefix('Value error, ')}") from None


def validate_run(spec: LaunchSpec, world_size: int) -> RunConfig:
    """Load the run config with its overrides and check every stage's batch layout on ``world_size`` ranks.

    Raises ConfigError (naming the key) before any process or job is started.
    """
    cfg = load_config(spec.config, spec.overrides)
    check_layout(cfg, spec.command, world_size)
    return cfg


def command_stages(cfg: RunConfig, command: str) -> list[str]:
    """The stages ``command`` runs: a pipeline config's ``stages`` sections, else ``cfg.stage``."""
    return list(cfg.stages) if command == "pipeline" and cfg.stages else [cfg.stage]


def check_layout(cfg: RunConfig, command: str, world_size: int) -> None:
    """Every stage ``command`` runs must split its global batch over ``world_size`` ranks (ConfigError if not)."""
    for stage in command_stages(cfg, command):
        resolved = cfg.for_stage(stage)
        resolved.batch_layout(world_size)
        if command == "train":
            resolved.check_standalone()
    if cfg.parallel.world_size is not None and cfg.parallel.world_size != world_size:
        raise ConfigError(f"parallel.world_size={cfg.parallel.world_size} but the launch has {world_size} ranks")
