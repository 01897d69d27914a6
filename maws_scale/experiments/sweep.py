"""Sweeps: a grid × list of config overrides on a base config, run locally one after another or submitted as jobs.

A sweep YAML::

    name: maws_effect
    base: ../demo.yaml                  # run config, relative to this file
    command: pipeline                   # pipeline | train
    output_dir: runs/sweeps/maws_effect # each point runs in <output_dir>/<run_id>/ (relative to the working dir)
    env: {OMP_NUM_THREADS: "1"}         # environment of every run
    overrides: {train.micro_batch: 64}  # for every point
    list:                               # points; 'label' names a point (a coordinate, not a config key),
      - {label: maws, stages.mae.train.steps: 400}      # 'command' runs it with another command than the sweep's
      - {label: wsp_random, command: train, stage: wsp, wsp.init: random}
      - {label: mae_only, command: eval, checkpoint: "{output_dir}/maws-seed{seed}/mae/consolidated.pt"}
      - {label: mae, command: train, stage: mae, evaluate: false}   # 'evaluate: false': no eval after `train`
      - {label: from_mae, command: train, stage: wsp, wsp.init_from: "{output_dir}/mae-seed{seed}/mae/consolidated.pt"}
    grid:                               # crossed with every list entry
      seed: [0, 1, 2]
    launch: {}                          # run here, one point after another; or {launcher: slurm, nodes: .., ...}
    report: {...}                       # see maws_scale.experiments.report

Every run logs to one MLflow store per sweep (``sqlite:///<output_dir>/mlflow.db`` unless ``tracking_uri`` is set)
in the experiment ``name``, tagged ``sweep``, ``sweep_run`` and one tag per coordinate. A point run with ``train``
(one stage) is then evaluated like the pipeline's final stage (``evaluate: true``): ``maws-scale eval`` on
``<run_dir>/<stage>/consolidated.pt``. An ``eval`` point evaluates an existing ``checkpoint`` (``{output_dir}`` and
the coordinates, dots as underscores, are filled in); list it after the points that make it. Any other string
value holding ``{output_dir}`` (e.g. ``wsp.init_from``: another point's weights) is filled in the same way. A run
that finished leaves ``<run_dir>/sweep_done.json`` holding its config hash; re-running the sweep skips it unless
its config changed. A point about to run whose folder holds a run of another config (or any run, with ``--force``)
first has that folder moved to ``<output_dir>/_previous/<run_id>-<config hash>/``: old results are kept, never
overwritten, and the new run starts fresh. Each run is tagged ``config_hash``, so the report tells current results
from stale ones. ``evaluate: false`` in a list entry skips the evaluation of that ``train`` point.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from maws_scale.config import ConfigError, RunConfig, load_config
from maws_scale.launch.spec import LaunchSpec

DONE = "sweep_done.json"
STARTED = "sweep_point.json"  # the config hash of the run a point's folder holds, written before it starts
PREVIOUS = (
    "_previous"  # <output_dir>/_previous/<run_id>-<hash>/: runs of a point's earlier configs (ids never start with _)
)
HASH_TAG = "config_hash"
LABEL = "label"
COMMAND = "command"
COMMANDS = ("pipeline", "train", "eval")
CHECKPOINT = "checkpoint"
EVALUATE = "evaluate"
RESERVED = (LABEL, COMMAND, CHECKPOINT, EVALUATE)


class FitSpec(BaseModel):
    """A scaling fit of column ``y`` (a final metric) against ``x`` (a metric, coordinate or derived column:
    ``params``, ``compute``, ``samples``). Kinds (``maws_scale.experiments.scaling``): ``power`` y = a·x^b in log-log;
    ``saturating`` y = E + A·x^-α with bootstrap CIs; ``two_term`` y = E + A/x^α + B/x2^β (x = N, x2 = D);
    ``frontier`` IsoFLOP minima of y per compute band (x = compute, x2 = params) and N_opt(C) = k·C^a."""

    model_config = ConfigDict(extra="forbid")
    x: str
    y: str
    kind: Literal["power", "saturating", "two_term", "frontier"] = "power"
    x2: str | None = Field(None, description="two_term: the second variable (samples); frontier: the size (params)")
    group_by: list[str] = Field(default_factory=list, description="one fit per value of these coordinates")

    @model_validator(mode="after")
    def _second_variable(self) -> FitSpec:
        if self.kind in ("two_term", "frontier") and not self.x2:
            raise ValueError(f"a {self.kind} fit needs x2 (two_term: samples; frontier: params)")
        return self


class GainSpec(BaseModel):
    """The MAWS plots. Gain: per value of ``x`` (e.g. the WSP budget) and of the ``lines`` coordinates (e.g. the
    model size), the difference ``treated − base`` of each metric between two arms (values of the ``arm``
    coordinate), paired by seed: mean ± std (ddof 1) and n; one panel per pair, one line per size. Curves: the
    ``curve`` history of every arm named in ``pairs`` on shared axes, one panel per size × ``x``."""

    model_config = ConfigDict(extra="forbid")
    x: str
    arm: str = Field("label", description="the coordinate that names an arm")
    pairs: list[tuple[str, str]] = Field(min_length=1, description="[treated, base] arms: gain = treated − base")
    lines: list[str] = Field(default_factory=list, description="one line per value of these coordinates")
    metrics: list[str] = Field(min_length=1, description="final metrics whose gain is plotted and tabulated")
    curve: str | None = Field(None, description="a history (e.g. wsp/loss) drawn for every arm on one plot")


class ReportSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metrics: list[str] = Field(default_factory=list, description="final metrics in the table (default: all)")
    fits: list[FitSpec] = Field(default_factory=list)
    curves: list[str] = Field(default_factory=list, description="metric histories to plot (mean ± std over seeds)")
    bars: list[str] = Field(default_factory=list, description="final metrics to plot per group (mean ± std)")
    seed_key: str = "seed"
    group_by: list[str] | None = Field(None, description="coordinates that define a group (default: all but seed)")
    smooth: int = Field(1, ge=1, description="rolling mean window of the curve plots (steps)")
    tail: int = Field(10, ge=0, description="add '<curve> last<N>': mean of each curve's last N values (0 = off)")
    gain: GainSpec | None = Field(None, description="gain of arms over a base arm vs x, one line per size")


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    base: str
    command: Literal["pipeline", "train"] = "pipeline"
    output_dir: str | None = Field(None, description="default runs/sweeps/<name>")
    tracking_uri: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    list_: list[dict[str, Any]] = Field(default_factory=list, alias="list")
    evaluate: bool = Field(True, description="evaluate the checkpoint of points run with `train`")
    env: dict[str, str] = Field(default_factory=dict, description="environment of every run, e.g. OMP_NUM_THREADS")
    launch: dict[str, Any] = Field(default_factory=dict, description="{} runs here; launcher: slurm submits")
    report: ReportSpec = Field(default_factory=ReportSpec)

    @field_validator("overrides", mode="before")
    @classmethod
    def _overrides(cls, value: Any) -> dict[str, Any]:
        if isinstance(value, list):  # ["key=value", ...] like the command line
            return {k.strip(): yaml.safe_load(v) for k, _, v in (item.partition("=") for item in value)}
        return value or {}

    @field_validator("grid")
    @classmethod
    def _grid(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        empty = [k for k, v in value.items() if not v]
        if empty:
            raise ValueError(f"grid.{empty[0]}: an empty list would give no runs")
        if set(value) & {COMMAND, CHECKPOINT, EVALUATE}:
            raise ValueError("grid: set a point's command / checkpoint / evaluate in a list entry")
        return value

    @field_validator("list_")
    @classmethod
    def _list(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, entry in enumerate(value):
            if entry.get(COMMAND, "pipeline") not in COMMANDS:
                raise ValueError(f"list[{i}].command: must be one of {', '.join(COMMANDS)}, got {entry[COMMAND]!r}")
            if (entry.get(COMMAND) == "eval") != (CHECKPOINT in entry):
                raise ValueError(f"list[{i}]: 'command: eval' and 'checkpoint: PATH' go together")
            if not isinstance(entry.get(EVALUATE, True), bool):
                raise ValueError(f"list[{i}].evaluate: must be true or false, got {entry[EVALUATE]!r}")
        return value


@dataclass
class Point:
    """One run of a sweep."""

    run_id: str
    coords: dict[str, Any]
    config: RunConfig
    run_dir: Path
    command: str = "pipeline"
    evaluates: str | None = None
    evaluate: bool = True
    config_hash: str = ""  # of the config before its ``config_hash`` tag is added (see :func:`load_sweep`)
    overrides: list[str] | None = None  # KEY=VALUE items that build ``config`` from the sweep's base config

    @property
    def config_path(self) -> Path:
        return self.run_dir / "config.yaml"

    @property
    def done_path(self) -> Path:
        return self.run_dir / DONE

    def status(self) -> str:
        """done | changed (finished with another config) | pending."""
        done = _read_hash(self.done_path)
        if done is None:
            return "pending"
        return "done" if done == self.config_hash else "changed"

    def folder_hash(self) -> str | None:
        """The config hash of the run ``run_dir`` holds ('' for a folder of unknown config, None when empty)."""
        for marker in (self.done_path, self.run_dir / STARTED):
            found = _read_hash(marker)
            if found is not None:
                return found
        if self.run_dir.is_dir() and any(self.run_dir.iterdir()):
            return ""
        return None

    def prepare(self, sweep_name: str, force: bool = False) -> Path | None:
        """Make ``run_dir`` ready for this point's run: a folder holding a run of another config (or any run, with
        ``force``) is moved to ``<output_dir>/_previous/`` first (returned); then write ``config.yaml``."""
        held = self.folder_hash()
        moved = None
        if held is not None and (force or held != self.config_hash):
            moved = _free_path(self.run_dir.parent / PREVIOUS / f"{self.run_id}-{held or 'unknown'}")
            moved.parent.mkdir(parents=True, exist_ok=True)
            self.run_dir.rename(moved)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.run_dir / STARTED, json.dumps({"run_id": self.run_id, "config_hash": self.config_hash}))
        _atomic_write(self.config_path, f"# sweep {sweep_name}, point {self.run_id}\n{self.config.to_yaml()}")
        return moved

    def argv(self) -> list[str]:
        """The ``maws-scale`` arguments that run this point."""
        if self.command == "eval":
            return ["eval", str(self.evaluates), "--config", str(self.config_path)]
        return [self.command, str(self.config_path)]

    def standalone_argv(self, base: str) -> list[str]:
        """``maws-scale`` arguments that run this point from the base config and overrides, writing nothing first
        (what ``sweep --dry-run`` shows: the point's ``config.yaml`` does not exist until the sweep runs)."""
        cfg = self.config
        tracking = [
            f"output_dir={self.run_dir}",
            f"tracking.uri={cfg.tracking.uri}",
            f"tracking.experiment={cfg.tracking.experiment}",
            f"tracking.run_name={cfg.tracking.run_name}",
            f"tracking.tags={_dump(cfg.tracking.tags)}",
        ]
        settings = [*(self.overrides or []), *tracking]
        if self.command == "eval":
            return ["eval", str(self.evaluates), "--config", base, *settings]
        return [self.command, base, *settings]

    def checkpoint(self) -> Path:
        """The consolidated weights a ``train`` point leaves: ``<run_dir>/<stage>/consolidated.pt``."""
        from maws_scale.train.checkpoint import CONSOLIDATED

        return self.run_dir / self.config.stage / CONSOLIDATED

    def eval_argv(self) -> list[str]:
        """``maws-scale eval`` of a ``train`` point's checkpoint (the pipeline evaluates by itself)."""
        return ["eval", str(self.checkpoint()), "--config", str(self.config_path)]


@dataclass
class Sweep:
    spec: SweepSpec
    path: Path
    points: list[Point]

    @property
    def output_dir(self) -> Path:
        return Path(self.spec.output_dir or f"runs/sweeps/{self.spec.name}")

    @property
    def tracking_uri(self) -> str:
        return self.spec.tracking_uri or f"sqlite:///{(self.output_dir / 'mlflow.db').absolute()}"

    def coordinates(self) -> list[str]:
        keys: list[str] = []
        for entry in self.spec.list_:
            keys += [k for k in entry if k not in keys and k not in (COMMAND, CHECKPOINT, EVALUATE)]
        return keys + [k for k in self.spec.grid if k not in keys]

    def launch_spec(self, extra: dict[str, Any] | None = None) -> LaunchSpec:
        raw = {**self.spec.launch, **(extra or {}), "config": str(self.spec.base), "command": self.spec.command}
        raw["slurm"] = {**self.spec.launch.get("slurm", {}), **(extra or {}).get("slurm", {})}
        try:
            return LaunchSpec.model_validate(raw)
        except ValidationError as err:
            first = err.errors()[0]
            raise ConfigError(f"{self.path}: launch.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def load_sweep_spec(path: str | os.PathLike) -> SweepSpec:
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read sweep ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"]).replace("list_", "list")
        raise ConfigError(f"{path}: {key}: {first['msg'].removeprefix('Value error, ')}") from None


def expand(spec: SweepSpec) -> list[dict[str, Any]]:
    """Coordinates of every point: each ``list`` entry (or one empty entry) × the cartesian product of ``grid``."""
    entries = spec.list_ or [{}]
    keys = list(spec.grid)
    combos = [dict(zip(keys, values)) for values in itertools.product(*(spec.grid[k] for k in keys))]
    points = []
    for i, entry in enumerate(entries):
        clash = sorted(set(entry) & set(keys))
        if clash:
            raise ConfigError(f"list[{i}] and grid both set '{clash[0]}'; set it in one place")
        points += [{**entry, **combo} for combo in combos]
    return points


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "x"


def _distinguishing(entries: list[dict[str, Any]], candidates: list[str]) -> set[str]:
    """The fewest short keys (greedy, shortest values first) whose values tell ``entries`` apart."""
    varying = [k for k in candidates if len({_slug(e.get(k)) for e in entries}) > 1]
    varying.sort(key=lambda k: (sum(len(_slug(e.get(k))) for e in entries), k))
    chosen: list[str] = []
    for key in varying:
        if len({tuple(_slug(e.get(k)) for k in chosen) for e in entries}) == len(entries):
            break
        chosen.append(key)
    return set(chosen)


def run_ids(points: list[dict[str, Any]], grid_keys: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Readable unique ids: a list entry's label stands for its keys (plus the fewest of them that tell entries
    with the same label apart), then ``<name><value>`` for the grid coordinates, where the name is the key's last
    part (``seed1``, ``poolgap``) unless two keys share it."""
    keys = {k for c in points for k in c if k not in RESERVED}
    last = [k.split(".")[-1] for k in keys]
    names = {k: k.split(".")[-1] if last.count(k.split(".")[-1]) == 1 else k.replace(".", "_") for k in keys}
    shown: dict[str, set[str]] = {}
    for label in {c[LABEL] for c in points if LABEL in c}:
        entries = [{k: v for k, v in c.items() if k not in grid_keys} for c in points if c.get(LABEL) == label]
        unique = list({json.dumps(e, sort_keys=True, default=str): e for e in entries}.values())
        candidates = sorted({k for e in unique for k in e if k not in RESERVED})
        shown[label] = _distinguishing(unique, candidates)

    def make(coords: dict[str, Any]) -> str:
        labelled = LABEL in coords
        parts = [_slug(coords[LABEL])] if labelled else []
        for key, value in coords.items():
            if key in RESERVED:
                continue
            if not labelled or key in grid_keys or key in shown[coords[LABEL]]:
                parts.append(f"{names[key]}{_slug(value)}")
        return "-".join(parts) or "run"

    ids = [make(c) for c in points]
    if len(set(ids)) < len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"sweep: two points would both run as '{dup}'; the list/grid repeats a point")
    return ids


def _dump(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip().removesuffix("\n...").strip()


def load_sweep(path: str | os.PathLike, overrides: list[str] | None = None) -> Sweep:
    """Read, expand and validate every point (ConfigError names the point and key) — nothing runs here.
    ``overrides``: ``key=value`` items from the command line, applied to every point over the YAML's ``overrides``."""
    path = Path(path)
    spec = load_sweep_spec(path)
    extra = {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"sweep: '{item}' is not a KEY=VALUE override")
        extra[key.strip()] = yaml.safe_load(value)
    swept = sorted(set(extra) & {k for entry in spec.list_ for k in entry} | set(extra) & set(spec.grid))
    if swept:
        raise ConfigError(f"sweep: '{swept[0]}' is swept by {path}; change it there, not on the command line")
    spec.overrides = {**spec.overrides, **extra}
    base = (path.parent / spec.base) if not Path(spec.base).is_absolute() else Path(spec.base)
    if not base.is_file() and Path(spec.base).is_file():
        base = Path(spec.base)
    spec.base = str(base)
    sweep = Sweep(spec, path, [])
    coords_list = expand(spec)
    for run_id, coords in zip(run_ids(coords_list, list(spec.grid)), coords_list):
        run_dir = sweep.output_dir / run_id
        command = coords.get(COMMAND, spec.command)
        evaluate = coords.get(EVALUATE, True)
        coords = _fill(sweep, run_id, coords)  # '{output_dir}/m-seed{seed}/..': e.g. another point's MAE stage
        evaluates = str(coords[CHECKPOINT]) if command == "eval" else None
        coords = {k: v for k, v in coords.items() if k not in (COMMAND, CHECKPOINT, EVALUATE)}
        settings = {**spec.overrides, **{k: v for k, v in coords.items() if k != LABEL}}
        overrides = [f"{k}={_dump(v)}" for k, v in settings.items()]
        try:
            cfg = load_config(base, overrides)
        except ConfigError as err:
            raise ConfigError(f"sweep point '{run_id}': {err}") from None
        tags = {**cfg.tracking.tags, "sweep": spec.name, "sweep_run": run_id}
        tags.update({k: _dump(v) if not isinstance(v, str) else v for k, v in coords.items()})
        cfg.output_dir = str(run_dir)
        cfg.tracking.uri = sweep.tracking_uri
        cfg.tracking.experiment = spec.name
        cfg.tracking.run_name = run_id
        cfg.tracking.tags = tags
        if command == "train":
            try:
                cfg = cfg.resolved()
                cfg.check_standalone()
            except ConfigError as err:
                raise ConfigError(f"sweep point '{run_id}': {err}") from None
        digest = hashlib.sha256(cfg.to_yaml().encode()).hexdigest()[:16]
        cfg.tracking.tags = {**cfg.tracking.tags, HASH_TAG: digest}  # the report tells current runs from stale ones
        sweep.points.append(Point(run_id, coords, cfg, run_dir, command, evaluates, evaluate, digest, overrides))
    return sweep


def _fill(sweep: Sweep, run_id: str, coords: dict[str, Any]) -> dict[str, Any]:
    """Fill ``{output_dir}`` and the coordinates (dots as underscores) into ``checkpoint`` and into any string
    value that names ``{output_dir}``."""
    fields = {k.replace(".", "_"): v for k, v in coords.items()}
    out = dict(coords)
    for key, value in coords.items():
        if not isinstance(value, str) or (key != CHECKPOINT and "{output_dir}" not in value):
            continue
        try:
            out[key] = value.format(output_dir=sweep.output_dir, **fields)
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(f"sweep point '{run_id}': {key}: cannot fill {value!r} ({err})") from None
    return out


def _read_hash(path: Path) -> str | None:
    """The ``config_hash`` of a JSON marker; None when absent or unreadable."""
    try:
        return str(json.loads(path.read_text())["config_hash"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _free_path(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3`` … when taken."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def prepare_points(sweep: Sweep, points: list[Point], force: bool = False) -> list[tuple[Point, Path]]:
    """:meth:`Point.prepare` the points about to run (only those); return (point, folder its old run moved to)."""
    moved = []
    for point in points:
        old = point.prepare(sweep.spec.name, force)
        if old is not None:
            moved.append((point, old))
    return moved


def mark_done(point: Point, extra: dict[str, Any] | None = None) -> None:
    from maws_scale.launch.slurm import write_done

    write_done(point.done_path, {"run_id": point.run_id, "config_hash": point.config_hash, **(extra or {})})
