"""Where our step's time goes beside the plain PyTorch loop: torch.profiler over the same steps of both, per op.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_step.py [--zero 1] [--stage mae] [--precision fp32]
        [--model vit_tiny_p8] [--steps 10] [--warmup 25] [--top 15] [--json benchmarks/out/profile_step.json]

One process, one gloo rank: the trainer's step (``Trainer.train_step``: DeepSpeed engine, skip guard) and the plain
loop of ``maws-scale bench --baseline`` (same model class, batches, loss, fused AdamW), warmed up interleaved, then
``--steps`` steps of each under ``torch.profiler`` (CPU activity), one profiled step per window, interleaved A B B
A. Prints, per aten op / profiler range, self CPU ms per step for ours and the plain loop and the difference, sorted
by the difference: what our step adds. Also a cProfile of ours by Python function (DeepSpeed's bookkeeping). Writes
JSON.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def self_cpu_ms(prof, steps: int) -> dict[str, float]:
    return {e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_tiny_p8")
    parser.add_argument("--stage", choices=["mae", "wsp"], default="mae")
    parser.add_argument("--zero", type=int, choices=[0, 1, 2], default=1)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=25)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "out" / "profile_step.json"))
    parser.add_argument(
        "--gpu-settings",
        action="store_true",
        help="ZeRO-1/2 with the CUDA settings (overlap_comm, contiguous_gradients, block-sized buckets): the step "
        "before they were chosen by device",
    )
    parser.add_argument("--no-profile", action="store_true", help="only the interleaved timing")
    args = parser.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from maws_scale.config import load_config
    from maws_scale.parallel.distributed import init_distributed
    from maws_scale.perf.baseline import PlainLoop, interleave
    from maws_scale.perf.profile import BenchOptions, bench_config, loader_factory
    from maws_scale.train.loop import Trainer

    world = init_distributed("gloo")
    out_dir = tempfile.mkdtemp(prefix="profile_step-")
    overrides = [
        f"model.name={args.model}",
        f"stage={args.stage}",
        "wsp.num_classes=1000",
        f"parallel.zero_stage={args.zero}",
        f"parallel.precision={args.precision}",
        f"train.global_batch={args.batch}",
        f"train.micro_batch={args.batch}",
        "optim.impl=torch",
        "tracking.enabled=false",
        f"output_dir={out_dir}",
    ]
    if args.gpu_settings and args.zero in (1, 2):
        from maws_scale.parallel.ds_config import load_template

        template, _ = load_template(load_config(None, overrides))
        template["zero_optimization"].update(overlap_comm=True, contiguous_gradients=True)
        path = Path(out_dir) / "gpu_settings.json"
        path.write_text(json.dumps(template))
        overrides.append(f"parallel.ds_config={path}")
    cfg = load_config(None, overrides)
    opts = BenchOptions(steps=args.steps, warmup=args.warmup)
    trainer = Trainer(bench_config(cfg, opts), world, loader_factory=loader_factory(opts, world.device))
    trainer.setup()
    batches = iter(trainer.loader)
    plain = PlainLoop(trainer.cfg, trainer.stage, trainer.loader.batches, trainer.accum, world.device)
    times = interleave(lambda: trainer.train_step(batches), plain.step, args.steps, args.warmup)
    med = {n: sorted(v)[len(v) // 2] for n, v in (("ours", times.a_cpu_s), ("plain", times.b_cpu_s))}
    wall = {n: sorted(v)[len(v) // 2] for n, v in (("ours", times.a_s), ("plain", times.b_s))}
    print(
        f"{args.model} {args.stage} {args.precision} ZeRO-{args.zero}{' (GPU settings)' if args.gpu_settings else ''}"
        f", batch {args.batch}, one gloo rank; {args.steps} steps after {args.warmup} interleaved warm-up; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"interleaved medians per step: ours {1e3 * wall['ours']:.1f} ms wall / {1e3 * med['ours']:.1f} ms CPU, "
        f"plain {1e3 * wall['plain']:.1f} / {1e3 * med['plain']:.1f} ms: ratio {wall['plain'] / wall['ours']:.3f} "
        f"wall, {med['plain'] / med['ours']:.3f} CPU",
        flush=True,
    )
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        "overrides": overrides,
        "load_average": list(os.getloadavg()),
        "torch": torch.__version__,
        "cpu_s_median": med,
        "wall_s_median": wall,
        "ratio_wall": wall["plain"] / wall["ours"],
        "ratio_cpu": med["plain"] / med["ours"],
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    if args.no_profile:
        path.write_text(json.dumps(result, indent=2) + "\n")
        trainer.tracker.finish("FINISHED")
        return 0
    sides = {"ours": lambda: trainer.train_step(batches), "plain": plain.step}
    tables: dict[str, dict[str, float]] = {"ours": {}, "plain": {}}
    for i in range(args.steps):  # one profiled step per window, A B B A …: drift and load hit both sides alike
        for name in ("ours", "plain") if i % 2 == 0 else ("plain", "ours"):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                sides[name]()
            for key, ms in self_cpu_ms(prof, args.steps).items():
                tables[name][key] = tables[name].get(key, 0.0) + ms
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(args.steps):
        trainer.train_step(batches)
    pr.disable()
    text = io.StringIO()
    pstats.Stats(pr, stream=text).sort_stats("tottime").print_stats(args.top)

    keys = set(tables["ours"]) | set(tables["plain"])
    rows = sorted(
        ({"op": k, "ours_ms": tables["ours"].get(k, 0.0), "plain_ms": tables["plain"].get(k, 0.0)} for k in keys),
        key=lambda r: r["plain_ms"] - r["ours_ms"],
    )
    for r in rows:
        r["added_ms"] = r["ours_ms"] - r["plain_ms"]
    total = {n: sum(t.values()) for n, t in tables.items()}
    print(f"profiler self CPU per step: ours {total['ours']:.1f} ms, plain {total['plain']:.1f} ms")
    print(f"{'op':<60} {'ours ms':>9} {'plain ms':>9} {'added ms':>9}")
    for r in rows[: args.top]:
        print(f"{r['op'][:60]:<60} {r['ours_ms']:>9.2f} {r['plain_ms']:>9.2f} {r['added_ms']:>+9.2f}")
    print("cProfile of ours, by internal time:")
    print("\n".join(text.getvalue().splitlines()[: args.top + 12]))
    result.update(profiler_self_cpu_ms_per_step=total, ops=rows, cprofile=text.getvalue())
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    trainer.tracker.finish("FINISHED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
