"""The MAWS recipe as one restartable run: MAE → consolidate → WSP from the MAE encoder → consolidate → evaluate.

Each stage trains under ``<output_dir>/<stage>/`` and ends with ``consolidated.pt`` (one fp32 state dict). A stage
whose consolidated weights exist is not run again when its recorded config matches (``train/rundir.py``; otherwise
the pipeline stops and names the differing keys), and an interrupted stage resumes from its newest complete
checkpoint, so re-running the same command after a crash continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from maws_scale.config import RunConfig
from maws_scale.parallel.distributed import DistInfo, init_distributed
from maws_scale.parallel.waits import wait_for_rank0
from maws_scale.track.mlflow import make_tracker, parent_run
from maws_scale.train.checkpoint import CONSOLIDATED
from maws_scale.train.loop import StageResult, stage_dir, train_stage
from maws_scale.train.preflight import preflight
from maws_scale.train.rundir import check_stage_dir, config_hash

log = logging.getLogger("maws_scale.train")
console = Console(stderr=True, soft_wrap=True, highlight=False)
EVALUATED = "evaluated.json"  # beside an evaluation's metrics.json: the config hash and weights it evaluated


@dataclass
class PipelineResult:
    """Consolidated weights of each stage, what ran this time, and the evaluation metrics (if any)."""

    weights: dict[str, Path] = field(default_factory=dict)
    ran: dict[str, StageResult] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    eval: dict[str, float] | None = None


def stage_configs(cfg: RunConfig) -> tuple[RunConfig, RunConfig]:
    """The MAE and WSP configs of a pipeline: ``stages.<stage>`` applied, resume=auto, WSP initialised from MAE."""
    resume = cfg.checkpoint.resume or "auto"
    mae = cfg.for_stage("mae")
    mae.checkpoint.resume = resume
    wsp = cfg.for_stage("wsp")
    wsp.checkpoint.resume = resume
    if wsp.wsp.init == "mae" and not wsp.wsp.init_from:
        wsp.wsp.init_from = str(stage_dir(mae) / CONSOLIDATED)
    return mae, wsp


def lit_config(cfg: RunConfig, wsp: RunConfig) -> RunConfig | None:
    """The LiT stage of a pipeline whose config has a ``stages.lit`` section: its image tower, locked, is the WSP
    stage's consolidated encoder unless ``clip.image_init_from`` names another checkpoint. None without one."""
    if "lit" not in cfg.stages:
        return None
    lit = cfg.for_stage("lit")
    lit.checkpoint.resume = cfg.checkpoint.resume or "auto"
    if not lit.clip.image_init_from:
        lit.clip.image_init_from = str(stage_dir(wsp) / CONSOLIDATED)
    return lit


def run_pipeline(cfg: RunConfig, info: DistInfo | None = None) -> PipelineResult:
    """Run (or finish) the MAE → WSP (→ LiT, with a ``stages.lit`` section) pipeline of ``cfg``, then evaluate the
    WSP encoder (and the LiT model zero-shot). In MLflow: one parent run
    (``<run_name>``, re-used by a re-run) with the MAE, WSP and eval runs nested under it; a failure marks it FAILED."""
    info = info or init_distributed(cfg.parallel.backend)
    mae, wsp = stage_configs(cfg)
    lit = lit_config(cfg, wsp)
    parent = make_tracker(wsp, cfg.output_dir, info.is_main, stage="pipeline")
    status = "FAILED"
    try:
        with parent_run(parent.start()):
            result = _run_stages(mae, wsp, lit, info)
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        parent.finish(status)
    if info.is_main and parent.link():
        console.print(f"MLflow (pipeline and its stages): {parent.link()}")
    return result


def _run_stages(mae: RunConfig, wsp: RunConfig, lit: RunConfig | None, info: DistInfo) -> PipelineResult:
    result = PipelineResult()
    stages = (mae, wsp) if wsp.wsp.init == "mae" else (wsp,)  # the WSP-from-scratch baseline needs no MAE stage
    stages = (*stages, lit) if lit is not None else stages
    preflight(stages, info.world_size, evaluate=wsp, device=info.device)  # every stage's inputs, before any step
    if len(stages) == 1 and info.is_main:
        console.print("wsp.init=random: the MAE stage is not run (WSP from random initialisation)")
    for stage_cfg in stages:
        done = finished_stage(stage_cfg)
        if done is not None:
            result.skipped.append(stage_cfg.stage)
            if info.is_main:
                console.print(f"{escape(f'[{stage_cfg.stage}]')} already finished ({done}); not run again")
        else:
            result.ran[stage_cfg.stage] = train_stage(stage_cfg, info)
        result.weights[stage_cfg.stage] = stage_dir(stage_cfg) / CONSOLIDATED
    result.eval = _evaluate(wsp, result.weights["wsp"], info)
    if lit is not None:
        zero_shot = _evaluate_zero_shot(lit, result.weights["lit"], info)
        if zero_shot is not None:
            result.eval = {**(result.eval or {}), **zero_shot}
    return result


def finished_stage(cfg: RunConfig) -> Path | None:
    """The consolidated weights of ``cfg.stage`` when this config already finished it (None: not finished); a stage
    finished by another config raises ConfigError naming the differing keys."""
    done = stage_dir(cfg) / CONSOLIDATED
    if not done.is_file():
        return None
    check_stage_dir(cfg, stage_dir(cfg), has_results=True)
    return done


def _evaluate_zero_shot(cfg: RunConfig, weights: Path, info: DistInfo) -> dict[str, float] | None:
    """Zero-shot classification and retrieval of the LiT model on rank 0 (``eval/zero_shot.py``)."""
    if not (cfg.eval.enabled and cfg.data.eval_path):
        return None
    from maws_scale.eval.zero_shot import load_clip, zero_shot_metrics

    def compute(tracker) -> dict[str, float]:
        metrics = zero_shot_metrics(load_clip(cfg, weights, info.device), cfg)
        tracker.log_metrics(metrics, step=cfg.train.steps or 0)
        return metrics

    return _on_rank0(cfg, weights, info, "eval-lit", compute)


def evaluate_untrained(cfg: RunConfig, info: DistInfo | None = None) -> dict[str, float] | None:
    """The floor of every probe: ``cfg``'s encoder untrained (seed ``cfg.seed``), evaluated like the pipeline's WSP
    encoder, in ``<output_dir>/eval-random/`` and the run's MLflow store; a repeat with the same config is a no-op."""
    info = info or init_distributed(cfg.parallel.backend)
    _, wsp = stage_configs(cfg)
    return _evaluate(wsp, Path("random"), info, name="eval-random")


def _evaluate(cfg: RunConfig, weights: Path, info: DistInfo, name: str = "eval") -> dict[str, float] | None:
    """``maws_scale.eval.evaluate_checkpoint`` when eval is on and eval data is set: every rank extracts its slice of
    the features on its training device (bf16 on CUDA), rank 0 gathers them and fits the probes."""
    if not (cfg.eval.enabled and cfg.data.eval_path):
        return None
    from maws_scale.eval import evaluate_checkpoint

    def compute(tracker) -> dict[str, float] | None:
        shard = (info.rank, info.world_size)
        return evaluate_checkpoint(cfg, str(weights), tracker=tracker, device=info.device, shard=shard)

    return _on_rank0(cfg, weights, info, name, compute, collective=True)


def _on_rank0(
    cfg: RunConfig,
    weights: Path,
    info: DistInfo,
    name: str,
    compute: Callable[[Any], dict[str, float] | None],
    collective: bool = False,
) -> dict[str, float] | None:
    """Run ``compute(tracker)`` on rank 0 in its own MLflow run ``name`` (nested under the pipeline's run, closed
    FAILED if it raises), print the metrics and write them to ``<output_dir>/<name>/metrics.json``; with
    ``collective`` every rank runs it (its tracker None on the others). Every rank then waits in a gloo group with a
    long timeout (rank-0 work can outlast the NCCL watchdog). Returns the metrics on rank 0, None elsewhere."""
    folder = Path(cfg.output_dir) / name
    record = {"config": config_hash(cfg), "weights": str(weights), **_identity(weights)}
    earlier = _earlier_metrics(folder, record)
    if earlier is not None:  # the same weights evaluated with the same config: a no-op that says so
        if info.is_main:
            console.print(
                f"{escape(f'[{name}]')} already done for {weights} ({folder / 'metrics.json'}); not run again"
            )
        return earlier if info.is_main else None
    metrics = None
    if info.is_main:
        tracker = make_tracker(cfg, folder, is_main=True, stage=name)
        tracker.log_tags({"checkpoint": str(weights)})
        status = "FAILED"
        try:
            metrics = compute(tracker)
            status = "FINISHED"
        finally:
            tracker.finish(status)
        if metrics is not None:  # beside the MLflow run: what `experiments/demo_figures.py` and scripts read
            out = Path(cfg.output_dir) / name / "metrics.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(".metrics.json.tmp")
            tmp.write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, out)
            done = out.with_name(EVALUATED)
            tmp.write_text(json.dumps(record, indent=1) + "\n")
            os.replace(tmp, done)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted((metrics or {}).items()))
        console.print(f"{escape(f'[{name}]')} {shown}")
    elif collective:
        compute(None)
    wait_for_rank0(cfg.parallel.wait_minutes)
    return metrics


def _identity(weights: Path) -> dict[str, int]:
    """Size and modification time of the weights: a retrained stage's new file differs (hashing GBs would not pay)."""
    try:
        stat = weights.stat()
    except OSError:
        return {}
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _earlier_metrics(folder: Path, record: dict[str, Any]) -> dict[str, float] | None:
    """The metrics of an earlier evaluation of the same weights with the same config, if one finished."""
    try:
        done = json.loads((folder / EVALUATED).read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return metrics if done == record and isinstance(metrics, dict) else None
