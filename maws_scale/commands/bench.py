"""`maws-scale bench CONFIG [KEY=VALUE ...]`: time real training steps of the configured stage, report throughput,
MFU, the step split, peak memory next to the planner's prediction, and (``--baseline``) a plain PyTorch loop of the
same model, loss and optimizer, interleaved with ours step by step in the same process. Works as one process and
under torchrun / the deepspeed launcher."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from maws_scale.commands._common import add_config_arguments, config_from_args
from maws_scale.commands._intermixed import allow_intermixed


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = allow_intermixed(
        subparsers.add_parser(
            "bench",
            help="time training steps on synthetic input: img/s, TFLOP/s, MFU, memory vs the planner, baseline",
            description="Runs warm-up then timed optimizer steps of the config's stage through the real trainer "
            "(DeepSpeed, TP as configured) on synthetic images kept on the device (data loading excluded unless "
            "--with-data). Results go to MLflow and a JSON file (docs/bench.md).",
        )
    )
    add_config_arguments(parser)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps (default 20)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=25,
        help="untimed warm-up steps (default 25; with --baseline interleaved with the baseline's)",
    )
    parser.add_argument("--with-data", action="store_true", help="read the configured data set (loader timed too)")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also time a plain PyTorch loop of the same model, loss and optimizer, interleaved step by step",
    )
    parser.add_argument("--profile", metavar="DIR", help="write a torch.profiler Chrome trace per rank into DIR")
    parser.add_argument("--peak-tflops", type=float, help="peak TFLOP/s per device for MFU (default: datasheet)")
    parser.add_argument("--num-classes", type=int, help="WSP head size (default wsp.num_classes, else 1000)")
    feed = parser.add_argument_group("data feed (--data): is the loader fast enough for the planned step rate?")
    feed.add_argument(
        "--data",
        action="store_true",
        help="measure the config's loader (img/s per worker, its transforms) instead of training steps, and print "
        "the workers per GPU the planner's step rate needs against the cores per GPU",
    )
    feed.add_argument("--data-batches", type=int, default=20, help="--data: timed loader batches (default 20)")
    feed.add_argument("--gpus", type=int, help="--data: GPUs of the planned job (default parallel.world_size, else 64)")
    feed.add_argument("--gpus-per-node", type=int, default=8, help="--data: GPUs per node (default 8)")
    feed.add_argument("--cores-per-node", type=int, help="--data: CPU cores per node (default: this machine's)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--out", help="JSON result file (default <output_dir>/bench/bench.json)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maws_scale.config import ConfigError
    from maws_scale.perf.profile import BenchOptions, run_bench

    cfg = config_from_args(args).resolved()  # a pipeline config: the stage named by `stage=` (default mae)
    if args.data:
        return run_data_feed(cfg, args)
    if args.steps < 1 or args.warmup < 0:
        raise ConfigError("--steps must be at least 1 and --warmup at least 0")
    opts = BenchOptions(
        steps=args.steps,
        warmup=args.warmup,
        with_data=args.with_data,
        baseline=args.baseline,
        profile_dir=args.profile,
        peak_tflops=args.peak_tflops,
        num_classes=args.num_classes,
        out=args.out,
    )
    summary = run_bench(cfg, opts)
    if summary is None:  # not rank 0
        return 0
    if args.json:
        print(json.dumps(summary))
    else:
        print_summary(Console(), summary)
    return 0


def run_data_feed(cfg, args: argparse.Namespace) -> int:
    """``bench --data``: the loader's measured rate per worker against the planner's step rate."""
    from maws_scale.config import ConfigError
    from maws_scale.perf.data_feed import FeedCheck, default_cores, measure_worker_rate, planned_gpu_rate

    if args.data_batches < 1 or args.gpus_per_node < 1 or (args.gpus is not None and args.gpus < 1):
        raise ConfigError("--data-batches, --gpus and --gpus-per-node must be at least 1")
    gpus = args.gpus or cfg.parallel.world_size or 64
    measured = measure_worker_rate(cfg, batches=args.data_batches)
    check = FeedCheck(
        worker_img_per_s=measured["img_per_cpu_s"],
        gpu_img_per_s=planned_gpu_rate(cfg, gpus, args.gpus_per_node),
        gpus=gpus,
        cores_per_node=args.cores_per_node or default_cores(),
        gpus_per_node=args.gpus_per_node,
        num_workers=cfg.data.num_workers,
    )
    if args.json:
        print(json.dumps({"loader": measured, "feed": check.as_dict(), "line": check.line()}))
        return 0
    console = Console()
    console.print(
        f"[bold]{cfg.model_label}[/] {measured['stage']} loader on {cfg.data.path}: {measured['images']} images at "
        f"{measured['img_size']} px (crop {tuple(cfg.data.crop_scale)}, flip {cfg.data.hflip}, decode "
        f"{cfg.data.decode}) in {measured['cpu_s']:.2f} CPU-s → {measured['img_per_cpu_s']:,.0f} img/s per worker"
        + (f"; bad records {measured['bad_records']}" if measured["bad_records"] else ""),
        highlight=False,
    )
    console.print(check.line(), highlight=False)
    return 0


def _pct(value: float | None) -> str:
    return f"{100 * value:.1f}%" if value is not None else "n/a"


def print_summary(console: Console, s: dict) -> None:
    console.print(
        f"[bold]{s['model']}[/] {s['stage']} on {s['world_size']} × {s['device']}: zero {s['zero_stage']}, "
        f"tp {s['tp']}, {s['precision']}, checkpointing {s['activation_checkpointing']}, "
        f"micro {s['micro_batch']} × accum {s['grad_accum']} × dp {s['dp']} = {s['global_batch']}, "
        f"{s['steps']} timed steps after {s['warmup']} (median), data: {s['data']}, "
        f"load average {s['load_average'][0]:.1f}"
    )
    table = Table(title_justify="left")
    for col in ("run", "img/s", "img/s/device", "step ms", "TFLOP/s/dev", "MFU", "MFU (device peak)", "peak mem GiB"):
        table.add_column(col, justify="right" if col != "run" else "left")
    world = s["world_size"]
    table.add_row(
        "maws-scale",
        f"{s['images_per_s']:,.2f}",
        f"{s['images_per_s'] / world:,.2f}",
        f"{1e3 * s['step_s']:,.1f}",
        f"{s['tflops_per_device']:.4f}",
        _pct(s["mfu"]),
        _pct(s["mfu_measured_peak"]),
        f"{s['peak_mem_bytes'] / 2**30:.3f}",
    )
    base = s.get("baseline")
    if base:
        per_dev = base["images_per_s_per_device"]
        tflops = per_dev * s["flops_per_sample"] / 1e12
        peak = s["peak_tflops_datasheet"]
        mem = base.get("peak_mem_bytes")  # not measured: the two sides are resident together
        table.add_row(
            "baseline",
            f"{per_dev * world:,.2f}",
            f"{per_dev:,.2f}",
            f"{1e3 * base['step_s']:,.1f}",
            f"{tflops:.4f}",
            _pct(tflops / peak if peak else None),
            _pct(tflops / s["peak_tflops_measured"]),
            f"{mem / 2**30:.3f}" if mem else "n/a",
        )
    console.print(table)
    if base:
        console.print(
            f"speed-up vs baseline ({base['encoder']}): [bold]{base['speedup']:.2f}×[/] per device "
            f"(wall clock); {base['speedup_cpu_time']:.2f}× by process CPU time per image"
        )
    ph = s["phases_s"]
    console.print(
        "step split: "
        + ", ".join(f"{k} {1e3 * v:,.1f} ms" for k, v in ph.items())
        + f"; inside collectives {1e3 * s['comm_s']:,.1f} ms (overlaps compute)"
    )
    console.print(
        f"tokens/s {s['tokens_per_s']:,.0f}; peak memory ({s['memory_method']}) {s['peak_mem_bytes'] / 2**30:.3f} GiB, "
        f"planner {s['planner_peak_bytes'] / 2**30:.3f} GiB ({s['planner_error_pct']:+.1f}%)"
    )
