"""torchrun worker: build the real training engine for each config, run a step, and record the model-state bytes
each rank holds (measured by tensor storage) next to the planner's prediction for that rank.

    python -m torch.distributed.run --nproc_per_node N states_worker.py RESULT.json RUN [RUN ...]

Each RUN is a comma-separated list of ``key=value`` overrides; runs share the processes (start-up paid once), and a
storage snapshot taken before each engine is built (its storages kept alive) keeps leftovers of earlier runs out.
Rank 0 writes RESULT.json: per run, per rank, {"measured": {...}, "predicted": {...}}.
"""

from __future__ import annotations

import json
import sys
import warnings

import torch.distributed as dist
from dist_support import prepare_worker

from maws_scale.config import load_config
from maws_scale.parallel.distributed import init_distributed, shutdown_distributed
from maws_scale.perf.planner import predict_states
from maws_scale.perf.profile import BenchOptions, bench_config, loader_factory, memory_step
from maws_scale.perf.storage import live_storages
from maws_scale.train.loop import Trainer


def main() -> None:
    warnings.filterwarnings("ignore")
    prepare_worker()
    out, runs = sys.argv[1], sys.argv[2:]
    info = init_distributed("gloo")
    results = []
    for index, run in enumerate(runs):
        opts = BenchOptions(steps=1, warmup=0)
        # each run its own folder: a run folder holding another config's run is refused (train/rundir.py)
        cfg = bench_config(load_config(None, [*run.split(","), f"output_dir=runs/{index}"]), opts)
        hold: list = []
        before = live_storages(hold)
        trainer = Trainer(cfg, info, loader_factory=loader_factory(opts, info.device))
        trainer.setup()
        batches = iter(trainer.loader)
        trainer.train_step(batches)  # optimizer states exist from here on
        _, states = memory_step(trainer, batches, cpu=False, baseline=before)
        predicted = predict_states(cfg, info.world_size, rank=trainer.plan.dp_rank)
        record = {
            "rank": info.rank,
            "measured": {
                "params": states.params,
                "grads": states.grads,
                "optimizer": states.optimizer,
                "buckets": states.buckets,
            },
            "predicted": {"params": predicted.params, "grads": predicted.grads, "optimizer": predicted.optimizer},
        }
        gathered = [None] * info.world_size
        dist.all_gather_object(gathered, record)
        results.append({"run": run, "ranks": gathered})
        trainer.engine.destroy()
        del trainer, batches
    if info.rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    shutdown_distributed()


if __name__ == "__main__":
    main()
