"""torchrun worker for the distributed training tests: run one or more trainings and record what happened.

    python -m torch.distributed.run --nproc_per_node N dist_worker.py RESULT.json [--kill-after K] RUN [RUN ...]

Each RUN is a comma-separated list of ``key=value`` config overrides; runs execute one after another in the same
processes (to pay the start-up once). Rank 0 writes RESULT.json: per run, the losses and, for MAE runs, per step
the sorted global sample ids every rank trained on. ``--kill-after K`` SIGKILLs every rank right after step K.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import sys

import torch
import torch.distributed as dist
from dist_support import prepare_worker

from maws_scale.config import load_config
from maws_scale.parallel.distributed import init_distributed, shutdown_distributed
from maws_scale.train.loop import Trainer
from maws_scale.train.stages import MAEStage


class RecordingStage(MAEStage):
    """MAEStage that remembers the global sample ids of every micro-batch it trains on."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.seen: list[list[int]] = []

    def loss(self, model, batch, device, dtype):
        self.seen.append(batch["sample_ids"].tolist())
        return super().loss(model, batch, device, dtype)


class KillingTrainer(Trainer):
    """Dies like a crashed job (SIGKILL, no clean-up) right after step ``kill_after``. With ``record_live``, every
    checkpoint save is followed by the plan's live consolidation into ``<stage dir>/live/<step tag>.pt``: what the
    offline export of that step must reproduce."""

    kill_after: int | None = None
    record_live = False

    def save(self):
        path = super().save()
        if self.record_live:
            out = self.dir / "live" / f"{path.name}.pt"
            self.plan.consolidate(self.engine, self.manager.latest(), out, {})
        return path

    def _record(self, metrics):
        super()._record(metrics)
        if self.kill_after is not None and self.step == self.kill_after:
            if dist.is_initialized():
                dist.barrier()
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("result")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--kill-after", type=int)
    args = parser.parse_args()
    prepare_worker()
    info = init_distributed()
    results = []
    for run in args.runs:
        cfg = load_config(None, run.split(","))
        stage = RecordingStage(cfg) if cfg.stage == "mae" else None  # WSP: the trainer builds its own stage
        trainer = KillingTrainer(cfg, info, stage=stage)
        trainer.kill_after = args.kill_after
        trainer.record_live = cfg.parallel.tp > 1
        result = trainer.run()
        per_step = _gather_ids(stage.seen if stage else [[] for _ in range(result.steps)], trainer.accum)
        blocks = getattr(trainer.plan.model, "blocks", [])
        metrics = trainer.dir / "metrics.jsonl"
        lines = metrics.read_text().splitlines() if info.rank == 0 and metrics.is_file() else []
        evals = [record for record in map(json.loads, lines) if "eval/top1" in record]
        results.append(
            {
                "losses": result.losses,
                "ids": per_step,
                "steps": result.steps,
                "skipped": result.skipped_steps,
                "start": result.steps - len(per_step),
                "leaf_blocks": bool(blocks) and all(getattr(b, "_z3_leaf", False) for b in blocks),
                "evals": evals,  # stages that evaluate (finetune): the held-out metrics, per eval step
            }
        )
    if info.rank == 0:
        with open(args.result, "w") as f:
            json.dump(results, f)
    shutdown_distributed()


def _gather_ids(seen: list[list[int]], accum: int) -> list[list[int]]:
    """Per optimizer step: the sorted sample ids of all ranks' micro-batches (the global batch)."""
    steps = [list(itertools.chain.from_iterable(seen[i : i + accum])) for i in range(0, len(seen), accum)]
    gathered: list = [None] * (dist.get_world_size() if dist.is_initialized() else 1)
    if dist.is_initialized():
        dist.all_gather_object(gathered, steps)
    else:
        gathered = [steps]
    return [sorted(itertools.chain.from_iterable(rank[i] for rank in gathered)) for i in range(len(steps))]


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
