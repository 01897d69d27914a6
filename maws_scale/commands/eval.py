"""`maws-scale eval CHECKPOINT --config CONFIG --data DIR [--train-data DIR] [--json] [KEY=VALUE ...]`.

Frozen-feature evaluation of an MAE or WSP checkpoint's encoder (pooling: ``model.pool``): linear probe, kNN
(k = ``eval.knn_k``) and few-shot (``eval.few_shot`` shots, ``eval.seeds`` draws). ``--data`` is the labeled set
scored on (default ``data.eval_path``); probes are fitted on ``--train-data`` (``eval.train_path``) or, without it,
on a deterministic 80 % split of ``--data``. Metrics go to MLflow when ``tracking.enabled`` (run ``eval-<name>``).

Under a launcher (torchrun, the deepspeed launcher: ``WORLD_SIZE`` > 1) the feature pass is sharded: every rank
extracts its slice of the eval sets on its device, rank 0 gathers the features, fits the probes, prints and logs the
metrics; the other ranks write nothing.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from maws_scale.commands._intermixed import allow_intermixed
from maws_scale.config import ConfigError, load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="linear probe, kNN and few-shot accuracy of a checkpoint's frozen features",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    allow_intermixed(parser)
    parser.add_argument(
        "checkpoint",
        help="MAE or WSP checkpoint (state dict, e.g. <output_dir>/wsp/consolidated.pt), or 'random' for an untrained "
        "encoder (seed: the config's seed) — the floor every probe should beat",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    parser.add_argument("--config", help="run config the checkpoint was trained with (model.*); default: defaults")
    parser.add_argument("--data", help="labeled Arrow set to score on (default data.eval_path)")
    parser.add_argument("--train-data", help="labeled set to fit the probes on (default: split --data)")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    parser.add_argument(
        "--device",
        default=None,
        help="where features are extracted (default: this job's GPU, cuda:LOCAL_RANK, else cpu)",
    )
    parser.set_defaults(func=run)


def job_device(requested: str | None = None):
    """``--device``, else this process's GPU (``cuda:$LOCAL_RANK``) where CUDA is, else CPU."""
    import torch

    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def launched_world() -> int:
    """The number of ranks the launcher started (``WORLD_SIZE``; 1 for a plain process)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.eval_path={args.data}")
    if args.train_data:
        overrides.append(f"eval.train_path={args.train_data}")
    cfg = load_config(args.config, overrides)
    if args.checkpoint != "random" and not Path(args.checkpoint).is_file():
        raise ConfigError(f"CHECKPOINT: {args.checkpoint} not found")

    from maws_scale.eval import evaluate_checkpoint
    from maws_scale.eval.checkpoint import CheckpointError

    rank, world, device = 0, 1, job_device(args.device)
    if launched_world() > 1:  # every rank extracts its slice; the world is torn down by cli.main
        from maws_scale.parallel.distributed import init_distributed

        info = init_distributed(cfg.parallel.backend)
        rank, world = info.rank, info.world_size
        if args.device is None and info.device.type == "cuda":
            device = info.device
    tracker = _tracker(cfg, args.checkpoint) if rank == 0 else None
    try:
        metrics = evaluate_checkpoint(cfg, args.checkpoint, tracker=tracker, device=device, shard=(rank, world))
    except CheckpointError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False)
        if tracker is not None:
            tracker.finish("FAILED")
        return 1
    except BaseException as err:  # never leave the run RUNNING
        if tracker is not None:
            tracker.finish("KILLED" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "FAILED")
        raise
    if tracker is not None:
        tracker.finish()
    if world > 1:
        from maws_scale.parallel.waits import wait_for_rank0

        wait_for_rank0(cfg.parallel.wait_minutes)  # rank 0 fits the probes; the others wait outside NCCL
    if rank != 0:
        return 0
    if args.json:
        print(json.dumps(metrics, indent=1, sort_keys=True))
    else:
        table = Table(title=f"{args.checkpoint} (pool {cfg.model.pool})")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in sorted(metrics.items()):
            table.add_row(key, f"{value:.2f}")
        Console().print(table)
    return 0


def _tracker(cfg, checkpoint: str):
    if not cfg.tracking.enabled:
        return None
    from maws_scale.track.mlflow import (
        PARENT_TAG,
        MLflowTracker,
        artifact_location,
        current_parent,
        default_uri,
        provenance_tags,
    )

    uri = cfg.tracking.uri or default_uri(cfg.output_dir)
    tags = {"stage": "eval", "model": cfg.model_label, "checkpoint": str(checkpoint), **provenance_tags(cfg)}
    if current_parent():  # a sweep point: nested under the sweep's run
        tags[PARENT_TAG] = current_parent()
    tracker = MLflowTracker(
        uri=uri,
        experiment=cfg.tracking.experiment,
        run_name=cfg.tracking.run_name or f"eval-{Path(checkpoint).parent.name}-{Path(checkpoint).stem}",
        tags={**tags, **cfg.tracking.tags},
        artifact_location=artifact_location(uri, cfg.output_dir),
        system_metrics_s=cfg.tracking.system_metrics_s,
    )
    tracker.log_params({"checkpoint": str(checkpoint), "model": cfg.model.model_dump(), "eval": cfg.eval.model_dump()})
    return tracker
