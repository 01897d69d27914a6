"""MAE under tensor parallelism: replicated vs sharded decoder, side by side in one run (CPU, gloo, 2 ranks).

    .venv/bin/python -m torch.distributed.run --nproc_per_node 2 benchmarks/bench_tp_decoder.py \
        [--batch 32] [--steps 6] [--json benchmarks/out/bench_tp_decoder.json]

Part 1 (measured here): forward + backward time per step of the same MAE at TP=1 (each rank runs the whole model
on its own: the single-device time), TP=2 with the decoder replicated, and TP=2 with the decoder sharded like the
encoder, timed round-robin step by step (median of --steps after 2 warm-ups): wall time (max over ranks) and CPU
time (sum over ranks; robust to other load on a shared machine, blind to communication waits); plus parameters per
rank. Two shapes: the registry's vit_small_p8 (a decoder-heavy toy) and a miniature with about MAWS-2B's
decoder/encoder FLOP ratio.

Part 2 (arithmetic, no device): for each MAWS size at TP=4 and 8, the decoder's share of forward FLOPs, the per-rank
compute that sharding the decoder saves, and the tensor-parallel all-reduce volume it adds (per sample, elements).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

warnings.filterwarnings("ignore")

from maws_scale.models import build_mae  # noqa: E402
from maws_scale.models.flops import flops_breakdown  # noqa: E402
from maws_scale.models.registry import get_spec  # noqa: E402
from maws_scale.parallel.distributed import init_distributed  # noqa: E402
from maws_scale.parallel.mpu import init_model_parallel  # noqa: E402
from maws_scale.parallel.tensor_parallel import parallelize_vit  # noqa: E402

SHAPES = {
    "vit_small_p8 (registry)": dict(name="vit_small_p8"),
    # encoder 256×8 on 13 visible tokens, decoder 64×4 on 50: decoder/encoder FLOPs ≈ vit_2b14's 0.06
    "mini, 2B-like decoder share": dict(name="vit_small_p8", decoder_width=64, decoder_depth=2, decoder_heads=4),
}


def one_step(model, imgs, seed: int) -> tuple[float, float]:
    """(wall seconds, max over ranks; CPU seconds, summed over ranks) of one forward + backward."""
    dist.barrier()
    wall, cpu = time.perf_counter(), time.process_time()
    loss = model(imgs, generator=torch.Generator().manual_seed(seed))[0]
    loss.backward()
    spent = torch.tensor([time.perf_counter() - wall, time.process_time() - cpu], dtype=torch.float64)
    wall_max = spent[:1].clone()
    dist.all_reduce(wall_max, op=dist.ReduceOp.MAX)
    dist.all_reduce(spent)
    return wall_max.item(), spent[1].item()


def measure(args, group) -> list[dict]:
    """The layouts of one shape timed round-robin, step by step, so background load hits them alike."""
    rows = []
    for label, shape in SHAPES.items():
        name = shape["name"]
        options = {k: v for k, v in shape.items() if k != "name"}
        torch.manual_seed(0)
        plain = build_mae(name, attention="sdpa", **options)
        spec = get_spec(name)
        imgs = torch.randn(args.batch, 3, spec.img_size, spec.img_size, generator=torch.Generator().manual_seed(0))
        flops = flops_breakdown(plain, "mae")
        layouts = {
            "TP=1": copy.deepcopy(plain),
            "TP=2, decoder replicated": parallelize_vit(copy.deepcopy(plain), group, shard_decoder=False),
            "TP=2, decoder sharded": parallelize_vit(copy.deepcopy(plain), group, shard_decoder=True),
        }
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in layouts}
        for step in range(args.steps + 2):
            for layout, model in layouts.items():
                sample = one_step(model, imgs, step)
                if step >= 2:
                    times[layout].append(sample)
        base = None
        for layout, model in layouts.items():
            wall = statistics.median(t[0] for t in times[layout]) * 1e3
            cpu = statistics.median(t[1] for t in times[layout]) * 1e3
            base = base or wall
            rows.append(
                {
                    "shape": label,
                    "decoder_flop_share": flops["decoder"] / (flops["encoder"] + flops["decoder"]),
                    "layout": layout,
                    "ms_per_step": wall,
                    "cpu_ms_per_step": cpu,
                    "vs_tp1": base / wall,
                    "params_per_rank": sum(p.numel() for p in model.parameters()),
                }
            )
    return rows


def arithmetic() -> list[dict]:
    rows = []
    for name in ("vit_l16", "vit_h14", "vit_2b14", "vit_6.5b14"):
        spec = get_spec(name)
        f = flops_breakdown(name, "mae")
        enc, dec = f["encoder"], f["decoder"]
        enc_volume = spec.depth * 2 * 2 * f["tokens"] * spec.width  # 2 all-reduces forward + 2 backward per block
        dec_volume = spec.decoder_depth * 2 * 2 * (1 + spec.num_patches()) * spec.decoder_width
        for tp in (4, 8):
            replicated = enc / tp + dec
            sharded = (enc + dec) / tp
            rows.append(
                {
                    "model": name,
                    "tp": tp,
                    "decoder_flop_share": dec / (enc + dec),
                    "compute_saved_by_sharding": 1 - sharded / replicated,
                    "allreduce_volume_added": dec_volume / enc_volume,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--json", default="benchmarks/out/bench_tp_decoder.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = init_distributed("gloo")
    mpu = init_model_parallel(info.world_size)
    measured = measure(args, mpu.get_tensor_model_parallel_group())
    planned = arithmetic()
    if info.rank == 0:
        print(
            f"Part 1: measured, CPU ({platform.processor() or platform.machine()}), gloo, {info.world_size} ranks, "
            f"1 thread each, batch {args.batch}, fp32, median of {args.steps} steps"
        )
        print(
            f"{'shape':30} {'dec. FLOPs':>10} {'layout':26} {'ms/step':>9} {'speed-up':>9} {'CPU ms':>8} "
            f"{'params/rank':>12}"
        )
        for r in measured:
            print(
                f"{r['shape']:30} {r['decoder_flop_share']:10.1%} {r['layout']:26} {r['ms_per_step']:9.1f} "
                f"{r['vs_tp1']:8.2f}x {r['cpu_ms_per_step']:8.0f} {r['params_per_rank']:12,}"
            )
        print("\nPart 2: arithmetic (MAE, 224 px, mask 0.75), per sample")
        print(
            f"{'model':12} {'tp':>3} {'decoder FLOPs':>14} {'compute saved by sharding':>26} "
            f"{'all-reduce volume added':>24}"
        )
        for r in planned:
            print(
                f"{r['model']:12} {r['tp']:3d} {r['decoder_flop_share']:14.1%} "
                f"{r['compute_saved_by_sharding']:26.1%} {r['allreduce_volume_added']:24.1%}"
            )
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "device": f"cpu/{platform.machine()}",
            "world": info.world_size,
            "batch": args.batch,
            "measured": measured,
            "arithmetic": planned,
        }
        out.write_text(json.dumps(record, indent=2))
        print(f"\nwrote {out}")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
