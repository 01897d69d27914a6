"""Host syncs of real training steps on a GPU: ``torch.cuda.set_sync_debug_mode("warn")`` during non-log steps.

    .venv/bin/python benchmarks/sync_debug.py [--model vit_b16] [--stage mae] [--steps 6] [--json OUT]

Builds the trainer (one process, synthetic data), runs one warm-up step, then ``--steps`` steps with CUDA's sync
debug mode on and collects every "called a synchronizing CUDA operation" warning with the frame that caused it. The
trainer is meant to sync once per optimizer step (the skip decision, ``StepGuard.resolve``); DeepSpeed adds its own.
Writes JSON (counts per source line) and exits 0; it needs a CUDA device (exit 2 without one), except with
``--stand-in``: the same trainer and steps on CPU, no sync counting (``syncs`` is null), for gpu_check.sh's CPU twin.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import warnings
from collections import Counter
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_b16")
    parser.add_argument("--stage", choices=["mae", "wsp"], default="mae")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--json", default="benchmarks/out/sync_debug.json")
    parser.add_argument("--stand-in", action="store_true", help="CPU: run the steps, count nothing")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.stand_in:
        print("sync_debug.py needs a CUDA device", file=sys.stderr)
        return 2
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", "29533")
    from maws_scale.config import load_config
    from maws_scale.train.loop import Trainer

    cfg = load_config(
        None,
        [
            f"model.name={args.model}",
            f"stage={args.stage}",
            "wsp.num_classes=1000",
            "wsp.init=random",
            "data.synthetic=true",
            "tracking.enabled=false",
            "train.micro_batch=32",
            "train.global_batch=64",  # two micro-batches per optimizer step
            f"train.steps={args.steps + 2}",
            "train.log_every=1000",
            "output_dir=runs/sync_debug",
        ],
    )
    trainer = Trainer(cfg)
    trainer.setup()
    batches = iter(trainer.loader)
    trainer.train_step(batches)  # warm-up: allocator, cached constants, kernels
    sources: Counter = Counter()
    if args.stand_in:
        for _ in range(args.steps):
            trainer.train_step(batches)
        return report(args, trainer, "cpu (stand-in: syncs not counted)", None, Path(args.json))
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(args.steps):
                trainer.train_step(batches)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        if "synchroniz" in str(w.message):
            sources[f"{w.filename}:{w.lineno}"] += 1
    return report(args, trainer, torch.cuda.get_device_name(), sources, Path(args.json))


def report(args: argparse.Namespace, trainer, device: str, sources: Counter | None, path: Path) -> int:
    """Write and print the result JSON (``sources`` None: not counted)."""
    syncs = None if sources is None else sum(sources.values())
    result = {
        "model": args.model,
        "stage": args.stage,
        "steps": args.steps,
        "accum": trainer.accum,
        "device": device,
        "syncs": syncs,
        "syncs_per_step": None if syncs is None else syncs / args.steps,
        "sources": None if sources is None else dict(sources.most_common()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(1)
