"""Fused MAE masking / loss kernels vs eager torch and torch.compile, on one GPU, side by side in one run.

    .venv/bin/python benchmarks/bench_kernels.py [--models vit_l16,vit_2b14,vit_6.5b14] [--compile on|off]
        [--json benchmarks/out/bench_kernels.json]
    .venv/bin/python benchmarks/bench_kernels.py --cpu-smoke      # Triton interpreter, tiny shapes: NOT a measurement
    .venv/bin/python benchmarks/bench_kernels.py --traffic-table  # the analytic bytes table of docs/kernels.md

For each model at a realistic batch (vit_l16 256, vit_2b14 128, vit_6.5b14 64; mask ratio 0.75; bf16 tokens and
images, fp32 mask token and position embeddings as under autocast), times the forward and the forward + backward of
each op three ways: the fused Triton kernels, the eager torch reference, and torch.compile of the reference. Timing
is triton.testing.do_bench (CUDA events, L2 flushed before each run, median). Effective bandwidth = the op's minimal
bytes (the fused kernels' analytic traffic, kernels/traffic.py) / time, also as a fraction of the device-to-device
copy bandwidth measured in the same run. Every implementation's output is checked against the eager one first.

Without a CUDA device the script refuses, unless --cpu-smoke: then it runs tiny shapes through the Triton CPU
interpreter only to show the script works end to end; those timings are not performance figures and are marked so.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from maws_scale.kernels.traffic import Traffic, gather_visible_traffic, loss_traffic, unshuffle_traffic

from maws_scale.models.registry import get_spec

BATCH = {"vit_l16": 256, "vit_2b14": 128, "vit_6.5b14": 64}
MASK_RATIO = 0.75
ACT_BYTES = 2  # bf16 tokens, images and predictions
SMOKE_NOTE = "CPU SMOKE RUN: Triton interpreter on tiny shapes. These timings are NOT performance figures."
REFUSAL = (
    "bench_kernels measures GPU kernels and this machine has no CUDA device: nothing was measured.\n"
    "Run it on a GPU, or pass --cpu-smoke to check that the script works (Triton CPU interpreter, tiny shapes, "
    "not a performance figure)."
)


@dataclass(frozen=True)
class Shape:
    """One configuration: encoder width for the gather, decoder width for the unshuffle, patch size for the loss."""

    model: str
    batch: int
    img: int
    patch: int
    chans: int
    width: int
    dec_width: int

    @property
    def length(self) -> int:
        return (self.img // self.patch) ** 2

    @property
    def keep(self) -> int:
        return int(self.length * (1 - MASK_RATIO))


def shapes(models: Iterable[str], smoke: bool) -> list[Shape]:
    """The registry's shapes at their benchmark batch, or tiny stand-ins (same patch size) for the CPU smoke run."""
    out = []
    for name in models:
        spec = get_spec(name)
        if smoke:
            out.append(Shape(f"{name}-tiny", 2, 4 * spec.patch, spec.patch, spec.in_chans, 64, 32))
        else:
            batch = BATCH.get(name, 64)
            out.append(Shape(name, batch, spec.img_size, spec.patch, spec.in_chans, spec.width, spec.decoder_width))
    return out


def traffic(shape: Shape) -> dict[str, tuple[Traffic, Traffic]]:
    """Analytic (forward, backward) traffic of the three ops at ``shape``, bf16 activations, int64 indices."""
    b, length, keep = shape.batch, shape.length, shape.keep
    return {
        "gather_visible": gather_visible_traffic(b, length, keep, shape.width, ACT_BYTES),
        "unshuffle_with_mask_tokens": unshuffle_traffic(b, length, keep, shape.dec_width, ACT_BYTES),
        "norm_pix_masked_mse": loss_traffic(
            b, shape.chans, shape.img, shape.img, shape.patch, MASK_RATIO, ACT_BYTES, ACT_BYTES
        ),
    }


def traffic_markdown(models: Iterable[str] = tuple(BATCH)) -> str:
    """Markdown table of the analytic traffic (MB = 10⁶ bytes) for the benchmark shapes: docs/kernels.md embeds it."""
    lines = [
        "| model | batch | op | direction | fused MB | eager MB | eager / fused |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for shape in shapes(models, smoke=False):
        for op, pair in traffic(shape).items():
            for t in pair:
                ratio = t.unfused_bytes / t.fused_bytes
                lines.append(
                    f"| {shape.model} | {shape.batch} | {op} | {t.direction} | {t.fused_bytes / 1e6:,.1f} "
                    f"| {t.unfused_bytes / 1e6:,.1f} | {ratio:.1f}x |"
                )
    return "\n".join(lines)


def make_timer(smoke: bool) -> Callable:
    """``timer(fn, leaves) -> ms``: do_bench's median on a GPU; a plain median of 3 wall-clock runs in smoke mode."""
    if not smoke:
        from triton.testing import do_bench

        return lambda fn, leaves: do_bench(fn, warmup=25, rep=100, grad_to_none=leaves, return_mode="median")

    def wall(fn, leaves):
        fn()  # warm-up (compiles a torch.compile backward on first use)
        times = []
        for _ in range(3):
            for leaf in leaves:
                leaf.grad = None
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    return wall


def copy_bandwidth(torch, device: str, timer: Callable, smoke: bool) -> float:
    """Device-to-device copy bandwidth in GB/s (read + write bytes / time) of a 1 GiB (smoke: 64 MiB) buffer."""
    size = (64 << 20) if smoke else (1 << 30)
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src), [])
    return 2 * size / (ms * 1e-3) / 1e9


def op_inputs(torch, shape: Shape, device: str, gen) -> dict[str, tuple[tuple, tuple]]:
    """Per op: (arguments, leaves that take gradients), as the MAE model passes them."""
    from maws_scale.kernels.masking import random_masking_ids

    b, length, keep = shape.batch, shape.length, shape.keep
    keep_ids, restore_ids, mask = random_masking_ids(b, length, keep, device, gen)

    def rand(*size, dtype=torch.bfloat16, grad=False):
        return torch.randn(*size, generator=gen).to(device, dtype).requires_grad_(grad)

    tokens, pos = rand(b, length, shape.width, grad=True), rand(length, shape.width, dtype=torch.float32)
    visible, token = rand(b, keep, shape.dec_width, grad=True), rand(shape.dec_width, dtype=torch.float32, grad=True)
    dec_pos = rand(length, shape.dec_width, dtype=torch.float32)
    imgs = rand(b, shape.chans, shape.img, shape.img)
    pred = rand(b, length, shape.patch**2 * shape.chans, grad=True)
    return {
        "gather_visible": ((tokens, pos, keep_ids), (tokens,)),
        "unshuffle_with_mask_tokens": ((visible, token, restore_ids, dec_pos), (visible, token)),
        "norm_pix_masked_mse": ((imgs, pred, mask, shape.patch), (pred,)),
    }


def implementations(op: str, use_compile: bool) -> dict[str, Callable]:
    """eager / fused / compiled callables of one op."""
    from maws_scale.kernels import reference

    from maws_scale import kernels

    public = getattr(kernels, op)
    ref = getattr(reference, f"{op}_torch")
    impls = {  # eager first: the others are checked against its output
        "eager": lambda *args: public(*args, impl="torch"),
        "fused": lambda *args: public(*args, impl="triton"),
    }
    if use_compile:
        import torch

        impls["compiled"] = torch.compile(ref, dynamic=False)
    return impls


def run_shape(torch, shape: Shape, device: str, timer: Callable, copy_gbps: float, use_compile: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    rows = []
    for op, (args, leaves) in op_inputs(torch, shape, device, gen).items():
        fwd_traffic, bwd_traffic = traffic(shape)[op]
        want = None
        for impl, fn in implementations(op, use_compile).items():
            row = {"model": shape.model, "batch": shape.batch, "op": op, "impl": impl}
            try:
                out = fn(*args)
                want = out.detach().float() if want is None else want
                row["max_abs_diff_vs_eager"] = (out.detach().float() - want).abs().max().item()
                grad = torch.randn(out.shape, generator=gen).to(device, out.dtype)
                fwd_ms = timer(lambda fn=fn, args=args: fn(*args), [])
                both_ms = timer(lambda fn=fn, args=args, grad=grad: fn(*args).backward(grad), list(leaves))
            except Exception as err:  # e.g. a torch.compile failure: report it, keep the other rows
                rows.append({**row, "direction": "fwd", "error": f"{type(err).__name__}: {err}"[:300]})
                continue
            for direction, ms, nbytes in (
                ("fwd", fwd_ms, fwd_traffic.fused_bytes),
                ("fwd+bwd", both_ms, fwd_traffic.fused_bytes + bwd_traffic.fused_bytes),
            ):
                gbps = nbytes / (ms * 1e-3) / 1e9
                rows.append({**row, "direction": direction, "ms": ms, "min_bytes": nbytes, "eff_GBps": gbps,
                             "frac_of_copy": gbps / copy_gbps})  # fmt: skip
    for row in rows:
        eager = next((r for r in rows if r["op"] == row["op"] and r["direction"] == row["direction"]
                      and r["impl"] == "eager" and "ms" in r), None)  # fmt: skip
        if eager and "ms" in row:
            row["speedup_vs_eager"] = eager["ms"] / row["ms"]
    return rows


def print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("model", "B", "op", "dir", "impl", "ms", "eff GB/s", "% copy", "vs eager", "max |diff|"):
        table.add_column(col, justify="left" if col in ("model", "op", "dir", "impl") else "right")
    for r in rows:
        if "error" in r:
            table.add_row(r["model"], str(r["batch"]), r["op"], r["direction"], r["impl"], r["error"][:60], *[""] * 4)
            continue
        table.add_row(
            r["model"], str(r["batch"]), r["op"], r["direction"], r["impl"], f"{r['ms']:.3f}", f"{r['eff_GBps']:.1f}",
            f"{100 * r['frac_of_copy']:.0f}%", f"{r.get('speedup_vs_eager', float('nan')):.2f}x",
            f"{r['max_abs_diff_vs_eager']:.2e}",
        )  # fmt: skip
    Console(width=200).print(table)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(BATCH), help="comma-separated registry names")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="torch.compile baseline (auto: on for GPU runs, off for --cpu-smoke)")  # fmt: skip
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes through the Triton CPU interpreter")
    parser.add_argument("--traffic-table", action="store_true", help="print the analytic traffic table and exit")
    parser.add_argument(
        "--json", default=None, help="output path (default benchmarks/out/bench_kernels[_cpu_smoke].json)"
    )
    args = parser.parse_args(None if argv is None else list(argv))
    models = [m for m in args.models.split(",") if m]
    if args.traffic_table:
        print(traffic_markdown(models))
        return 0
    if args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton or decorates the kernels
    import torch
    import triton

    if not args.cpu_smoke and not torch.cuda.is_available():
        print(REFUSAL, file=sys.stderr)
        return 2
    smoke, device = args.cpu_smoke, "cpu" if args.cpu_smoke else "cuda"
    use_compile = args.compile == "on" or (args.compile == "auto" and not smoke)
    timer = make_timer(smoke)
    if smoke:
        print(SMOKE_NOTE)
    copy_gbps = copy_bandwidth(torch, device, timer, smoke)
    rows = []
    for shape in shapes(models, smoke):
        rows += run_shape(torch, shape, device, timer, copy_gbps, use_compile)
    name = torch.cuda.get_device_name() if not smoke else "CPU (Triton interpreter)"
    title = f"{name}: copy {copy_gbps:.0f} GB/s" + (f" -- {SMOKE_NOTE}" if smoke else "")
    print_table(rows, title)
    result = {
        "benchmark": "bench_kernels",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "cpu-smoke" if smoke else "gpu",
        "performance_figure": not smoke,
        "note": SMOKE_NOTE if smoke else "medians of triton.testing.do_bench; min_bytes analytic (kernels/traffic.py)",
        "device": name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "copy_GBps": copy_gbps,
        "shapes": [asdict(s) | {"length": s.length, "keep": s.keep} for s in shapes(models, smoke)],
        "rows": rows,
    }
    default = "benchmarks/out/bench_kernels_cpu_smoke.json" if smoke else "benchmarks/out/bench_kernels.json"
    path = Path(args.json or default)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}" + (" (cpu smoke: not a performance figure)" if smoke else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
