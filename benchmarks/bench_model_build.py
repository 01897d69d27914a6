"""Peak host memory and time of building a model through the trainer's parallel plan, at TP=1 and TP=N (CPU, gloo).

    .venv/bin/python benchmarks/bench_model_build.py [--model vit_2b14] [--tp 2] [--classes 1000]
        [--json benchmarks/out/bench_model_build.json]

Runs the trainer's own build (``parallel.plan.make_plan(cfg).build(stage.build_model, ...)``, the WSP stage, fp32,
ZeRO-0) in fresh processes, one layout after the other: first one process at TP=1 (the whole model), then ``--tp``
processes under torchrun at TP=``--tp`` (each builds on the meta device and materialises its shard). Each process
reports its peak resident set size (``ru_maxrss``, which includes the interpreter and the imported libraries: the
``baseline`` column is that peak measured before the build starts) and the wall time of the build alone. Prints a
table and writes JSON; the ratio column divides each TP rank's peak by the TP=1 peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _resident_bytes() -> int:
    """The current resident set (what the built model keeps), from /proc (0 where there is none)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def worker(args: argparse.Namespace) -> None:
    """One rank: build through the plan, report (rank, baseline peak, peak, seconds, parameters held) as JSON."""
    import torch
    import torch.distributed as dist

    from maws_scale.config import load_config
    from maws_scale.parallel.distributed import init_distributed, shutdown_distributed
    from maws_scale.parallel.plan import make_plan
    from maws_scale.train.stages import WSPStage

    torch.set_num_threads(1)
    cfg = load_config(
        None,
        [
            f"model.name={args.model}",
            "stage=wsp",
            f"wsp.num_classes={args.classes}",
            f"parallel.tp={args.tp_size}",
            "parallel.zero_stage=0",
            "parallel.precision=fp32",
            f"train.global_batch={args.tp_size}",
            "train.micro_batch=1",
        ],
    )
    info = init_distributed("gloo")
    plan = make_plan(cfg, info)
    stage = WSPStage(cfg, args.classes)
    baseline = _peak_bytes()
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    model = plan.build(stage.build_model, {})
    seconds = time.perf_counter() - start
    row = {
        "rank": info.rank,
        "baseline_bytes": baseline,
        "peak_bytes": _peak_bytes(),
        "resident_after_bytes": _resident_bytes(),
        "seconds": seconds,
        "params_held": sum(p.numel() for p in model.parameters()),
    }
    rows = [None] * info.world_size
    if dist.is_initialized() and info.world_size > 1:
        dist.all_gather_object(rows, row)
    else:
        rows = [row]
    if info.rank == 0:
        Path(args.worker_out).write_text(json.dumps(rows))
    shutdown_distributed()


def _run_layout(args: argparse.Namespace, tp: int, out: Path) -> list[dict]:
    script = str(Path(__file__).resolve())
    flags = ["--worker", "--model", args.model, "--classes", str(args.classes), "--tp-size", str(tp)]
    flags += ["--worker-out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu"}
    if tp == 1:
        command = [sys.executable, script, *flags]
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29561", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(tp), script, *flags]
    subprocess.run(command, check=True, env=env, cwd=ROOT)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_2b14")
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--json", default="benchmarks/out/bench_model_build.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tp-size", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        layouts = {1: _run_layout(args, 1, Path(tmp) / "tp1.json")}
        layouts[args.tp] = _run_layout(args, args.tp, Path(tmp) / f"tp{args.tp}.json")
    whole = layouts[1][0]["peak_bytes"]
    gib = 1024**3
    print(f"{args.model} WSP ({args.classes} classes), fp32, built through parallel.plan; peak RSS per process")
    print(
        f"{'layout':<8}{'rank':>5}{'params held':>14}{'baseline GiB':>14}{'peak GiB':>10}{'build s':>9}{'peak/TP1':>10}"
    )
    for tp, rows in layouts.items():
        for row in rows:
            print(
                f"{'TP=' + str(tp):<8}{row['rank']:>5}{row['params_held'] / 1e9:>13.3f}B"
                f"{row['baseline_bytes'] / gib:>14.2f}{row['peak_bytes'] / gib:>10.2f}{row['seconds']:>9.1f}"
                f"{row['peak_bytes'] / whole:>10.2f}"
            )
    result = {
        "model": args.model,
        "classes": args.classes,
        "tp": args.tp,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "layouts": {str(tp): rows for tp, rows in layouts.items()},
        "max_peak_ratio": max(r["peak_bytes"] for r in layouts[args.tp]) / whole,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"max TP={args.tp} rank peak / TP=1 peak = {result['max_peak_ratio']:.2f}; wrote {out}")


if __name__ == "__main__":
    main()
