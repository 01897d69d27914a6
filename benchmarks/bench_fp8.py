"""FP8 training (parallel.fp8) against bf16 on the Fashion-MNIST demo data: loss curves side by side, one process.

    .venv/bin/python benchmarks/bench_fp8.py [--stages mae,wsp] [--steps 200] [--limit 4096] [--json PATH]

The demo's model and settings (``configs/demo.yaml``: vit_tiny_p4 at 28 px, batch 64, its per-stage LR and steps),
trained from the same seed in ``parallel.precision=bf16`` (ZeRO-1) without FP8 and with each ``--recipes`` FP8
recipe; WSP starts from random weights (``wsp.init=random``), so the stages are compared independently. On a
device without FP8 (this CPU) the FP8 runs use torchao's emulation (``parallel.fp8_emulate``): the same casts and
scales, high-precision matmuls — a numerics check, not a speed figure. The mosaics are built once under
``data/fmnist-fp8`` (``--limit`` of them) from /usr/share/datasets/fashion-mnist. Prints a table (per run: the
mean loss of the last 10 steps, the largest and mean per-step relative difference from the bf16 curve, process CPU
seconds per step) and writes the curves and the table as JSON (default ``benchmarks/out/bench_fp8.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_data(root: Path, limit: int) -> Path:
    """The demo's noisy 2x2 mosaics (``limit`` of them) and their vocabulary, built once."""
    from maws_scale.data.build import build_dataset
    from maws_scale.data.fashion_mnist import FashionMNISTSource
    from maws_scale.data.labels import build_vocab

    train = root / "train"
    if not (train / "vocab.json").is_file():
        build_dataset(FashionMNISTSource(noise=0.2, limit=limit, seed=0), train, progress=False)
        build_vocab(train, min_count=1)
    return train


def run(stage: str, data: Path, out: Path, steps: int | None, extra: list[str], info) -> tuple[list[float], float]:
    """Train ``stage`` of the demo config with ``extra`` overrides; → (losses, CPU seconds per step of this process,
    which a shared machine's load does not inflate as it does wall-clock time)."""
    from maws_scale.config import load_config
    from maws_scale.train.loop import Trainer

    overrides = [
        f"data.path={data}",
        "data.eval_path=null",
        "eval.enabled=false",
        "tracking.enabled=false",
        "parallel.precision=bf16",
        "parallel.zero_stage=1",
        "optim.impl=torch",
        f"output_dir={out}",
        *([f"stages.{stage}.train.steps={steps}"] if steps else []),
        *extra,
    ]
    if stage == "wsp":
        overrides.append("wsp.init=random")
    cfg = load_config(ROOT / "configs" / "demo.yaml", overrides).for_stage(stage)
    start = time.process_time()
    result = Trainer(cfg, info).run()
    return result.losses, (time.process_time() - start) / max(1, len(result.losses))


def compare(losses: list[float], ref: list[float]) -> dict[str, float]:
    rel = [abs(a - b) / abs(b) for a, b in zip(losses, ref)]
    return {
        "last10_mean": statistics.mean(losses[-10:]),
        "max_rel_diff": max(rel),
        "mean_rel_diff": statistics.mean(rel),
        "last10_rel_diff": abs(statistics.mean(losses[-10:]) - statistics.mean(ref[-10:])) / statistics.mean(ref[-10:]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default="mae,wsp")
    parser.add_argument("--recipes", default="tensorwise,rowwise")
    parser.add_argument("--steps", type=int, default=None, help="steps per stage (default: the demo config's)")
    parser.add_argument("--limit", type=int, default=4096, help="mosaics to build (the demo uses 20000)")
    parser.add_argument("--data", default=str(ROOT / "data" / "fmnist-fp8"))
    parser.add_argument("--runs", default=str(ROOT / "runs" / "bench_fp8"))
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "out" / "bench_fp8.json"))
    args = parser.parse_args(argv)

    import torch

    from maws_scale.parallel.distributed import init_distributed
    from maws_scale.parallel.fp8 import fp8_unsupported

    info = init_distributed("gloo" if not torch.cuda.is_available() else "auto")
    emulate = fp8_unsupported(info.device, emulate=False) is not None
    data = build_data(Path(args.data), args.limit)
    rows, curves = [], {}
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "device": str(info.device),
        "emulated": emulate,
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
        "note": "emulated FP8 (CPU): numerics only; cpu_s_per_step is not an FP8 speed" if emulate else "",
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stage in args.stages.split(","):
        variants = [("bf16", [])] + [
            (f"fp8 {r}" + (" (emulated)" if emulate else ""), [f"parallel.fp8={r}", f"parallel.fp8_emulate={emulate}"])
            for r in args.recipes.split(",")
        ]
        ref = None
        for name, extra in variants:
            out = Path(args.runs) / f"{stage}-{name.split(' (')[0].replace(' ', '-')}-{time.time_ns()}"
            losses, per_step = run(stage, data, out, args.steps, extra, info)
            ref = ref or losses
            curves[f"{stage} {name}"] = losses
            rows.append({"stage": stage, "run": name, "steps": len(losses), "cpu_s_per_step": per_step,
                         **compare(losses, ref)})  # fmt: skip
            r = rows[-1]
            print(
                f"{stage:<4} {name:<24} steps {r['steps']:>4}  last-10 loss {r['last10_mean']:.4f}  "
                f"vs bf16: max {100 * r['max_rel_diff']:.2f} %  mean {100 * r['mean_rel_diff']:.2f} %  "
                f"last-10 {100 * r['last10_rel_diff']:.2f} %  {r['cpu_s_per_step']:.3f} CPU-s/step",
                flush=True,
            )
            path.write_text(json.dumps({"meta": meta, "rows": rows, "curves": curves}, indent=2) + "\n")  # as it goes
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
