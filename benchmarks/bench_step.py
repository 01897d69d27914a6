"""Training-step throughput of our stack vs the plain-PyTorch baseline, side by side in one process per case.

    .venv/bin/python benchmarks/bench_step.py --suite cpu [--repeat 3] [--json benchmarks/out/bench_step_cpu.json]
    .venv/bin/python benchmarks/bench_step.py --suite gpu [--nproc 1] [--repeat 1] [--json ...]
    .venv/bin/python benchmarks/bench_step.py --suite gpu --cases "vit_2b14 MAE" --no-baseline --repeat 1

Each case runs ``maws-scale bench ... --baseline --json`` in a fresh process (under torchrun for ``--nproc`` > 1 or a
multi-rank case), ``--repeat`` times; the row is the repeat with the median ratio to the baseline (median img/s
without one). With the baseline each row also gives the step's **overhead per parameter tensor**: (our step − the
plain loop's step) ÷ the number of trainable parameter tensors, in ms, by wall clock and by process CPU time, so that
it can be scaled to a model with more tensors (DeepSpeed's step costs a fixed amount of Python per tensor). Prints a
table and rewrites the
JSON after every case; a failing case is reported with the tail of its stderr (in the JSON's ``failed``) and the
others still run (exit 1). ``--cases`` selects cases by name, ``--no-baseline`` skips the baseline, ``--set KEY=VALUE``
(repeatable) adds a config override to every case and to its name (``--set model.compile=blocks``: the compiled run).

- ``cpu``: two model sizes on this 2-core machine, vit_tiny_p8 (MAE: 108 parameter tensors) and vit_small_p8 (MAE:
  156), fp32 MAE at ZeRO-0/1/2 on one rank (the overhead per tensor of #29); then vit_tiny_p8 bf16 ZeRO-2 and bf16
  ZeRO-3 on 2 ranks. Inside each process ours and the plain loop (same model class, loss, optimizer, batches) run
  interleaved step by step after 25 warm-up steps (``maws-scale bench --baseline``); the row is the repeat with the
  median ratio. The CPU is shared: process CPU time is reported beside the wall clock, and the load average with
  each.
- ``gpu``: the issue's cases — vit_l16, vit_h14, vit_2b14 MAE and WSP at the largest micro-batch the planner says fits
  the device (ZeRO-1, no TP or offload, checkpointing as the planner prefers; the largest power of two at or below
  its micro-batch), and vit_6.5b14 MAE with ZeRO-3 + optimizer offload — with the
  targets (ViT-2B MAE MFU ≥ 50 %, ViT-2B WSP MFU ≥ 55 %, ≥ 1.5× the baseline) checked here and only here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAN_MEMORY_FRACTION = 0.9  # the gpu suite's micro-batches are planned to peak at most here
WSP_CLASSES = 27_000  # an assumed IG hashtag vocabulary size; pass --num-classes to change it


@dataclass
class Case:
    name: str
    overrides: list[str]
    nproc: int = 1
    targets: dict[str, float] = field(default_factory=dict)


def cpu_cases() -> list[Case]:
    """The overhead per parameter tensor of #29: fp32, ZeRO-0/1/2, one rank, MAE at two model sizes and WSP; then
    bf16 ZeRO-2 and ZeRO-3 on 2 ranks."""
    common = ["optim.impl=torch", "tracking.enabled=false", "train.global_batch=16", "train.micro_batch=16"]
    cases = []
    for model, stage in (("vit_tiny_p8", "mae"), ("vit_tiny_p8", "wsp"), ("vit_small_p8", "mae")):
        head = ["wsp.num_classes=1000"] if stage == "wsp" else []
        for zero in (0, 1, 2):
            overrides = [
                f"model.name={model}",
                f"stage={stage}",
                "parallel.precision=fp32",
                f"parallel.zero_stage={zero}",
            ]
            cases.append(Case(f"{model} {stage.upper()} fp32 zero{zero}", [*overrides, *head, *common]))
    bf16 = ["model.name=vit_tiny_p8", "stage=mae", "parallel.precision=bf16", *common]
    cases.append(Case("vit_tiny_p8 MAE bf16 zero2", [*bf16, "parallel.zero_stage=2"]))
    cases.append(Case("vit_tiny_p8 MAE bf16 zero3 ×2 ranks", [*bf16, "parallel.zero_stage=3"], nproc=2))
    return cases


def selected(name: str, patterns: list[str] | None) -> bool:
    """``--cases``: a case runs when its name contains one of the comma-separated patterns (case-insensitive)."""
    return not patterns or any(p.lower() in name.lower() for p in patterns)


def gpu_cases(nproc: int, num_classes: int, patterns: list[str] | None = None) -> list[Case]:
    """Micro-batch and checkpointing from the planner for this device's memory (the fastest fitting layout); only
    the cases ``patterns`` select are planned."""
    import torch

    from maws_scale.config import load_config
    from maws_scale.perf.planner import Hardware, search

    mem = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 80 << 30
    # headroom: plan for 90 % of the card (allocator fragmentation, cuBLAS/NCCL workspaces the planner does not see)
    hw = Hardware(gpus=nproc, gpu_mem=int(mem * PLAN_MEMORY_FRACTION))
    cases = []
    for model in ("vit_l16", "vit_h14", "vit_2b14"):
        for stage in ("mae", "wsp"):
            if not selected(f"{model} {stage.upper()}", patterns):
                continue
            cfg = load_config(
                None,
                [f"model.name={model}", f"stage={stage}", f"wsp.num_classes={num_classes}", "train.global_batch=65536"],
            )
            # one GPU: ZeRO-1 (the configs' default; ZeRO-0 in bf16 is DeepSpeed's per-parameter unfused optimizer,
            # whose step cost the speed model does not see), no TP, no offload; checkpointing if the model prefers it
            rows = [
                r
                for r in search(cfg, hw)
                if r.fits
                and r.plan.layout.tp == 1
                and r.plan.layout.offload == "none"
                and r.plan.layout.zero_stage == 1
                # one layout for the eager, compiled and FP8 runs: selective_op is refused with model.compile
                and r.plan.layout.recompute != "selective_op"
            ]
            if not rows:
                continue
            lay = rows[0].plan.layout
            micro = 1 << (lay.micro_batch.bit_length() - 1)  # a power of two at or below the planner's largest
            targets = {"speedup": 1.5}
            if model == "vit_2b14":
                targets["mfu"] = 0.50 if stage == "mae" else 0.55
            cases.append(
                Case(
                    f"{model} {stage.upper()} zero{lay.zero_stage} ckpt={lay.recompute}",
                    [
                        f"model.name={model}",
                        f"stage={stage}",
                        f"wsp.num_classes={num_classes}",
                        f"parallel.zero_stage={lay.zero_stage}",
                        f"parallel.activation_checkpointing={lay.recompute}",
                        f"train.micro_batch={micro}",
                        f"train.global_batch={micro * nproc}",
                    ],
                    nproc=nproc,
                    targets=targets,
                )
            )
    if not selected("vit_6.5b14 MAE zero3 + offload optimizer, ckpt on", patterns):
        return cases
    cases.append(
        Case(
            "vit_6.5b14 MAE zero3 + offload optimizer, ckpt on",
            [
                "model.name=vit_6.5b14",
                "stage=mae",
                "parallel.zero_stage=3",
                "parallel.offload=optimizer",
                "parallel.activation_checkpointing=true",
                "train.micro_batch=32",
                f"train.global_batch={32 * nproc}",
            ],
            nproc=nproc,
        )
    )
    return cases


def with_overrides(cases: list[Case], overrides: list[str]) -> list[Case]:
    """``cases`` with ``overrides`` (``--set``) appended to their config and named in their label."""
    if not overrides:
        return cases
    return [replace(c, name=f"{c.name} [{' '.join(overrides)}]", overrides=[*c.overrides, *overrides]) for c in cases]


class CaseFailed(RuntimeError):
    """A case's process failed; the message ends with the tail of its stderr."""


def bench_command(case: Case, steps: int, warmup: int, out: Path, run_dir: Path, baseline: bool = True) -> list[str]:
    """The command line of one case (``maws-scale bench``, under torchrun for several ranks)."""
    args = [
        "bench",
        "/dev/null",
        *case.overrides,
        f"output_dir={run_dir}",
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
        *(["--baseline"] if baseline else []),
        "--out",
        str(out),
    ]
    if case.nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={case.nproc}",
            "--standalone",
            "-m",
            "maws_scale.cli",
            *args,
        ]
    else:
        cmd = [sys.executable, "-m", "maws_scale.cli", *args]
    return cmd


def run_case(
    case: Case, steps: int, warmup: int, out_dir: Path, index: int, threads: int | None, baseline: bool = True
) -> dict:
    out = out_dir / f"case{index}-{time.time_ns()}.json"
    cmd = bench_command(case, steps, warmup, out, out_dir / f"run{index}", baseline)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-40:])
        raise CaseFailed(f"{case.name}: exit {proc.returncode}\n{tail}")
    return json.loads(out.read_text())


def overhead_ms_per_tensor(result: dict) -> dict[str, float | None]:
    """(our step − the plain loop's step) ÷ trainable parameter tensors, ms, by wall clock and by CPU time per rank."""
    base = result.get("baseline") or {}
    tensors = base.get("param_tensors")
    if not tensors:
        return {"wall": None, "cpu": None}
    ours_cpu = statistics.mean(result["cpu_s_per_rank"])
    return {
        "wall": 1e3 * (result["step_s"] - base["step_s"]) / tensors,
        "cpu": 1e3 * (ours_cpu - base["cpu_s"]) / tensors,
    }


def row(case: Case, result: dict) -> dict:
    base = result.get("baseline") or {}
    overhead = overhead_ms_per_tensor(result)
    checks = {}
    if "mfu" in case.targets:
        checks["mfu"] = result["mfu"] is not None and result["mfu"] >= case.targets["mfu"]
    if "speedup" in case.targets and base:
        checks["speedup"] = base.get("speedup", 0.0) >= case.targets["speedup"]
    return {
        "case": case.name,
        "micro_batch": result["micro_batch"],
        "images_per_s": result["images_per_s"],
        "tflops_per_device": result["tflops_per_device"],
        "mfu": result["mfu"],
        "mfu_measured_peak": result["mfu_measured_peak"],
        "baseline_images_per_s": base.get("images_per_s_per_device", 0.0) * result["world_size"],
        "speedup": base.get("speedup"),
        "speedup_cpu_time": base.get("speedup_cpu_time"),
        "step_ms": 1e3 * result["step_s"],
        "baseline_step_ms": 1e3 * base["step_s"] if base else None,
        "param_tensors": base.get("param_tensors"),
        "overhead_ms_per_tensor": overhead["wall"],
        "overhead_ms_per_tensor_cpu_time": overhead["cpu"],
        "speedups_over_repeats": None,
        "load_average": result.get("load_average"),
        "peak_mem_gib": result["peak_mem_bytes"] / 2**30,
        "planner_error_pct": result["planner_error_pct"],
        "targets": case.targets,
        "meets_targets": checks,
    }


def fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--nproc", type=int, default=1, help="GPUs per case for the gpu suite")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 25)")
    parser.add_argument("--num-classes", type=int, default=WSP_CLASSES)
    parser.add_argument("--cases", default=None, help="comma-separated name patterns, e.g. 'vit_2b14 MAE'")
    parser.add_argument("--no-baseline", action="store_true", help="skip the plain-PyTorch baseline run")
    parser.add_argument("--json", default=None, help="output JSON (default benchmarks/out/bench_step_<suite>.json)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every case")
    args = parser.parse_args(argv)
    if args.suite == "gpu":
        import torch

        if not torch.cuda.is_available():
            print("--suite gpu needs a CUDA device", file=sys.stderr)
            return 2
    patterns = [p.strip() for p in args.cases.split(",") if p.strip()] if args.cases else None
    if args.suite == "cpu":
        cases = [c for c in cpu_cases() if selected(c.name, patterns)]
    else:
        cases = gpu_cases(args.nproc, args.num_classes, patterns)
    if not cases:
        print(f"--cases {args.cases!r} selects no case of the {args.suite} suite", file=sys.stderr)
        return 2
    cases = with_overrides(cases, args.set)
    steps = args.steps or 20
    warmup = args.warmup if args.warmup is not None else 25
    # one thread per process on the shared CPU machine: idle OpenMP workers spinning against other load cost more
    # than a second core gains (measured: several times slower steps with 2 threads under load)
    threads = 1 if args.suite == "cpu" else None
    out = Path(args.json or ROOT / "benchmarks" / "out" / f"bench_step_{args.suite}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "suite": args.suite,
        "date": time.strftime("%Y-%m-%d"),
        "host": platform.processor(),
        "cpus": os.cpu_count(),
        "omp_threads": threads,
        "repeat": args.repeat,
        "steps": steps,
        "warmup": warmup,
        "baseline": not args.no_baseline,
        "command": " ".join(sys.argv),
    }
    rows, raw, failed = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(cases):
            try:
                results = [
                    run_case(case, steps, warmup, Path(tmp), i, threads, baseline=not args.no_baseline)
                    for _ in range(args.repeat)
                ]
            except CaseFailed as err:
                print(f"FAILED {err}", file=sys.stderr, flush=True)
                failed.append({"case": case.name, "overrides": case.overrides, "error": str(err)})
                write_json(out, meta, rows, raw, failed)
                continue
            raw.append({"case": case.name, "overrides": case.overrides, "nproc": case.nproc, "results": results})
            key = (lambda r: r["baseline"]["speedup"]) if not args.no_baseline else (lambda r: r["images_per_s"])
            median = statistics.median_low([key(r) for r in results])
            chosen = next(r for r in results if key(r) == median)
            rows.append(row(case, chosen))
            r = rows[-1]
            if not args.no_baseline:
                r["speedups_over_repeats"] = [x["baseline"]["speedup"] for x in results]
            print(
                f"{r['case']:<48} micro {r['micro_batch']:>4}  {r['images_per_s']:>10.2f} img/s  "
                f"MFU {fmt(r['mfu'], '.1%'):>6} (device peak {fmt(r['mfu_measured_peak'], '.1%')})  "
                f"baseline {r['baseline_images_per_s']:>10.2f} img/s  speed-up {fmt(r['speedup'], '.2f')}× "
                f"(CPU time {fmt(r['speedup_cpu_time'], '.2f')}×)  "
                f"overhead {fmt(r['overhead_ms_per_tensor'], '.3f')} ms/tensor "
                f"(CPU time {fmt(r['overhead_ms_per_tensor_cpu_time'], '.3f')}, {r['param_tensors']} tensors)  "
                f"peak {r['peak_mem_gib']:.3f} GiB "
                f"(planner {r['planner_error_pct']:+.0f}%)  load {fmt((r['load_average'] or [None])[0], '.1f')}  "
                f"{r['meets_targets'] or ''}",
                flush=True,
            )
            write_json(out, meta, rows, raw, failed)  # after every case: a killed run keeps what it measured
    print(f"wrote {out}")
    return 1 if failed else 0


def write_json(out: Path, meta: dict, rows: list, raw: list, failed: list) -> None:
    device = raw[0]["results"][0]["device"] if raw else "?"
    body = {**meta, "device": device, "rows": rows, "failed": failed, "runs": raw}
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    os.replace(tmp, out)


if __name__ == "__main__":
    sys.exit(main())
