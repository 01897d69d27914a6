"""torchrun worker: collective evaluation, every rank extracting its slice of the features.

    python -m torch.distributed.run --nproc_per_node N eval_worker.py DATA CHECKPOINT RESULT.json

Rank 0 writes RESULT.json: the gathered probe-train features (keys, values) and the metrics.
"""

from __future__ import annotations

import json
import sys

from dist_support import prepare_worker

from maws_scale.config import load_config
from maws_scale.eval import evaluate_checkpoint
from maws_scale.eval.checkpoint import load_encoder
from maws_scale.eval.evaluate import _features
from maws_scale.parallel.distributed import init_distributed, shutdown_distributed

MAX_TRAIN = 101  # odd: the ranks' strided slices differ in length


def eval_config(data: str):
    return load_config(
        None,
        [
            "model.name=vit_micro_p4",
            f"data.eval_path={data}",
            f"eval.train_path={data}",
            f"eval.max_train={MAX_TRAIN}",
            "data.num_workers=0",
            "eval.few_shot=[1]",
            "eval.seeds=1",
            "tracking.enabled=false",
        ],
    )


def main() -> None:
    data, checkpoint, out = sys.argv[1:4]
    prepare_worker()
    info = init_distributed("gloo")
    cfg = eval_config(data)
    shard = (info.rank, info.world_size)
    features = _features(load_encoder(cfg, checkpoint), cfg, data, MAX_TRAIN, "features", False, shard)
    metrics = evaluate_checkpoint(cfg, checkpoint, shard=shard)
    if info.rank == 0:
        with open(out, "w") as f:
            json.dump({"keys": features.keys, "x": features.x.tolist(), "metrics": metrics}, f)
    else:
        assert features is None and metrics is None, "only rank 0 holds the gathered features and the metrics"
    shutdown_distributed()


if __name__ == "__main__":
    main()
