"""``maws-scale bench``: real training steps of our stack (the trainer's own step: stage loss, DeepSpeed backward and
step, TP when configured) on synthetic input, timed, with the planner's prediction and a plain-PyTorch baseline.

Order: set-up; the measurement passes (a step, on GPU a step under ``max_memory_allocated``, a profiled step, an
observed step); then ``warmup`` (default 25) untimed and ``steps`` timed optimizer steps. With ``baseline`` the plain
loop (:mod:`maws_scale.perf.baseline`: the same model class, batches, loss and optimizer) is built only now and the
two run interleaved step by step, ABBA, warm-up included, so both see the same process warm-up and the same load of
a shared machine; the ratio is of the medians. Each step is timed by wall clock (after a device synchronize on GPU)
and by process CPU time (robust to other load on a shared CPU machine, so the baseline ratio is also given by CPU
time per image). The split into forward (stage loss), backward and optimizer step times those three calls inside
the trainer's step; ``other`` is the rest (loss checks, LR setting). Communication is the time spent inside
collectives during the profiled step (torch.profiler: NCCL kernels on GPU, ``gloo:*`` work on CPU; it overlaps
compute, so it is not a part of the step-time sum). Synthetic batches are drawn once and kept on the device, so data
loading is excluded; ``with_data`` uses the configured loader instead (not with ``baseline``).

Memory: on GPU ``torch.cuda.max_memory_allocated`` over one step. On CPU, tensor-storage accounting (see
:mod:`maws_scale.perf.storage`): at the end of a micro-batch's forward, every live storage plus every storage saved
for backward, each once, no allocator overhead; the process's peak RSS is reported beside it.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from maws_scale.config import ConfigError, RunConfig
from maws_scale.data.loader import SyntheticLoaderState
from maws_scale.parallel.distributed import DistInfo, init_distributed
from maws_scale.perf.baseline import ENCODER, PlainLoop, interleave
from maws_scale.train.hooks import StepHooks

WARMUP_STEPS = 25  # a cold process (allocator, oneDNN / cuBLAS plans, DeepSpeed's first steps) settles within this


@dataclass
class BenchOptions:
    steps: int = 20
    warmup: int = WARMUP_STEPS
    with_data: bool = False
    baseline: bool = False
    profile_dir: str | None = None
    peak_tflops: float | None = None
    num_classes: int | None = None
    out: str | None = None


class PhaseTimer(StepHooks):
    """Trainer hooks that time each phase of the step: CUDA events on GPU, ``perf_counter`` on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.records: dict[str, list[tuple[Any, Any]]] = defaultdict(list)

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def run(self, phase: str, fn: Any, *args: Any) -> Any:
        start = self.mark()
        try:
            return fn(*args)
        finally:
            self.records[phase].append((start, self.mark()))

    def elapsed(self, start: Any, end: Any) -> float:
        if self.cuda:
            return start.elapsed_time(end) / 1e3
        return end - start

    def collect(self) -> dict[str, float]:
        """Seconds per phase since the last collect (synchronises the device)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
        out = {k: sum(self.elapsed(s, e) for s, e in v) for k, v in self.records.items()}
        self.records.clear()
        return out


class DeviceBatches(SyntheticLoaderState):
    """A few synthetic batches drawn once from the configured synthetic loader and moved to the device, cycled: the
    loader's cost stays out of the timed steps. Keeps the loader's interface for the trainer."""

    def __init__(self, loader: Any, device: torch.device, count: int = 2) -> None:
        self.loader = loader
        self.num_classes = getattr(loader, "num_classes", None)
        self.epoch_size = getattr(loader, "epoch_size", 1 << 30)
        it = iter(loader)
        self.batches = [
            {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in next(it).items()} for _ in range(count)
        ]
        self.consumed = 0

    def __iter__(self):
        while True:
            batch = self.batches[self.consumed % len(self.batches)]
            self.consumed += 1
            yield batch


def bench_config(cfg: RunConfig, opts: BenchOptions) -> RunConfig:
    """The config the benchmark trains with: the user's, with its own output folder, random WSP init, no resume,
    synthetic data unless ``with_data``, and enough steps for warm-up + timing + the measurement steps."""
    raw = cfg.model_dump(mode="json")
    raw["output_dir"] = str(Path(cfg.output_dir) / "bench")
    raw["wsp"]["init"] = "random"
    raw["wsp"]["init_from"] = None
    if opts.num_classes:
        raw["wsp"]["num_classes"] = opts.num_classes
    raw["checkpoint"]["resume"] = None
    raw["data"]["synthetic"] = not opts.with_data
    raw["train"]["steps"] = opts.warmup + opts.steps + 4  # + the memory and communication passes
    raw["train"]["epochs"] = None
    raw["tracking"]["run_name"] = cfg.tracking.run_name or f"bench-{cfg.model.name}"
    raw["tracking"]["tags"] = {**cfg.tracking.tags, "kind": "bench"}
    return RunConfig.model_validate(raw)


def loader_factory(opts: BenchOptions, device: torch.device):
    from maws_scale.data import build_loader

    def factory(cfg: RunConfig, stage: str, dp_rank: int, dp_size: int):
        loader = build_loader(cfg, stage=stage, rank=dp_rank, world_size=dp_size, micro_batch=cfg.train.micro_batch)
        return loader if opts.with_data else DeviceBatches(loader, device)

    return factory


# ----- measurement passes -----------------------------------------------------------------------------------------
def _comm_seconds(trainer: Any, batches, device: torch.device, trace_dir: str | None, rank: int) -> float:
    """Seconds inside collectives during one profiled step (and a Chrome trace when ``trace_dir`` is set)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        trainer.train_step(batches)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    if trace_dir:
        path = Path(trace_dir)
        path.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(path / f"trace_rank{rank}.json"))
    total_us = 0.0
    for event in prof.events():
        name = event.name.lower()
        if device.type == "cuda" and "nccl" in name and event.device_type.name == "CUDA":
            total_us += event.device_time_total
        elif name.startswith("gloo:"):
            total_us += event.cpu_time_total
    return total_us / 1e6


def memory_step(trainer: Any, batches, cpu: bool, baseline: dict[int, int] | None = None) -> tuple[int | None, Any]:
    """One more step, observed: the engine's model states just before the optimizer step at the accumulation
    boundary (gradients complete, optimizer states allocated) and, on CPU, the tensor-storage high-water mark —
    the largest of (live storages ∪ storages saved for backward) at the end of each micro-batch's forward and of
    live storages before each ``engine.step`` (gradient buckets). ``baseline``: storages to leave out of the
    engine's (a snapshot taken before it was built, :func:`~maws_scale.perf.storage.live_storages`)."""
    from maws_scale.perf.storage import SavedTensors, engine_state_bytes, live_storages

    engine = trainer.engine
    seen: dict[str, Any] = {"peak": 0, "states": None}
    inputs: dict[int, int] = dict(baseline or {})  # neither are the cached synthetic batches
    for batch in getattr(trainer.loader, "batches", []):
        for value in batch.values():
            if isinstance(value, torch.Tensor):
                inputs[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()

    class Observer(StepHooks):
        def run(self, phase: str, fn: Any, *args: Any) -> Any:
            if phase == "forward":
                with SavedTensors(engine.module.parameters()) as saved:
                    out = fn(*args)
                if cpu:
                    seen["peak"] = max(seen["peak"], sum({**live_storages(), **saved._seen}.values()))
                return out
            if phase == "optimizer":
                if cpu:
                    seen["peak"] = max(seen["peak"], sum(live_storages().values()))
                if engine.is_gradient_accumulation_boundary():
                    seen["states"] = engine_state_bytes(engine, baseline=inputs)
            return fn(*args)

    previous, trainer.hooks = trainer.hooks, Observer()
    try:
        trainer.train_step(batches)
    finally:
        trainer.hooks = previous
    return (seen["peak"] if cpu else None), seen["states"]


def _rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----- the benchmark ------------------------------------------------------------------------------------------------
@dataclass
class RankResult:
    step_s: list[float]
    cpu_s: list[float]
    phases: dict[str, float]
    comm_s: float
    peak_bytes: int
    rss_bytes: int
    states: dict[str, int]
    baseline: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def run_bench(cfg: RunConfig, opts: BenchOptions, info: DistInfo | None = None) -> dict[str, Any] | None:
    """Run the benchmark on every rank; rank 0 returns the aggregated result (and writes it), the others None.

    Order: set-up, the memory and communication passes (their own steps), then ``warmup`` and ``steps`` timed
    steps, interleaved step by step with the plain loop when ``opts.baseline`` (:func:`.baseline.interleave`).
    """
    from maws_scale.train.loop import Trainer

    if opts.baseline and opts.with_data:
        raise ConfigError("--baseline times both sides on the same cached synthetic batches; drop --with-data")
    if opts.baseline and cfg.parallel.tp > 1:
        raise ConfigError("--baseline: the plain loop has no tensor parallelism; run it with parallel.tp=1")
    info = info or init_distributed(cfg.parallel.backend)
    bcfg = bench_config(cfg, opts)
    trainer = Trainer(bcfg, info, loader_factory=loader_factory(opts, info.device))
    trainer.setup()
    device = info.device
    batches = iter(trainer.loader)
    cuda = device.type == "cuda"
    # measurement passes first, before the baseline exists: its model and optimizer would count in the peak
    trainer.train_step(batches)
    gpu_peak = None
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        trainer.train_step(batches)
        gpu_peak = int(torch.cuda.max_memory_allocated(device))
    comm = _comm_seconds(trainer, batches, device, opts.profile_dir, info.rank)
    cpu_peak, states = memory_step(trainer, batches, cpu=not cuda)
    peak = gpu_peak if cuda else cpu_peak

    plain = _plain_loop(bcfg, trainer, device) if opts.baseline else None
    timer = PhaseTimer(device)
    trainer.hooks = timer
    phases: dict[str, float] = defaultdict(float)
    done = [0]

    def ours() -> None:
        trainer.train_step(batches)
        split = timer.collect()
        done[0] += 1
        if done[0] > opts.warmup:
            for k, v in split.items():
                phases[k] += v

    try:
        times = interleave(
            ours,
            plain.step if plain is not None else None,
            opts.steps,
            opts.warmup,
            sync=(lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None),
        )
    finally:
        trainer.hooks = StepHooks()
    result = RankResult(
        step_s=times.a_s,
        cpu_s=times.a_cpu_s,
        phases={k: v / max(opts.steps, 1) for k, v in phases.items()},
        comm_s=comm,
        peak_bytes=peak,
        rss_bytes=_rss_bytes(),
        states={
            "params": states.params,
            "grads": states.grads,
            "optimizer": states.optimizer,
            "buckets": states.buckets,
        },
    )
    if plain is not None:
        result.baseline = {
            "encoder": ENCODER.format(name=type(plain.model).__name__),
            "model_class": f"{type(plain.model).__module__}.{type(plain.model).__qualname__}",
            "optimizer": f"{type(plain.optimizer).__module__}.{type(plain.optimizer).__qualname__}",
            "micro_batch": bcfg.train.micro_batch,
            "param_tensors": sum(1 for p in plain.model.parameters() if p.requires_grad),  # the same model as ours
            "step_s_list": times.b_s,
            "cpu_s_list": times.b_cpu_s,
            "images_per_step": bcfg.train.micro_batch * trainer.accum,
        }
    gathered = [result]
    if dist.is_initialized() and dist.get_world_size() > 1:
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, result)
    summary = None
    if info.is_main:
        summary = summarize(bcfg, trainer, gathered, opts, device)
        write_result(summary, trainer, opts)
    trainer.tracker.finish("FINISHED")
    _release_engine(trainer, device)
    return summary


def _plain_loop(cfg: RunConfig, trainer: Any, device: torch.device) -> PlainLoop:
    """The plain loop on the trainer's own cached batches (same model class, loss and optimizer)."""
    try:
        return PlainLoop(cfg, trainer.stage, trainer.loader.batches, trainer.accum, device)
    except torch.cuda.OutOfMemoryError as err:
        raise RuntimeError(
            "--baseline: the plain loop does not fit beside our engine on this device (both stay resident to be "
            "timed step by step); lower train.micro_batch or run without --baseline"
        ) from err


def _release_engine(trainer: Any, device: torch.device) -> None:
    """Destroy the DeepSpeed engine and drop the model, optimizer and cached batches (idempotent).

    ``trainer.guard`` wraps the optimizer (its state is 12 bytes/param in fp32 AdamW): it must go too, or the
    baseline runs beside our optimizer state."""
    import gc

    engine = getattr(trainer, "engine", None)
    if engine is not None and hasattr(engine, "destroy"):
        engine.destroy()
    trainer.engine = trainer.plan = trainer.loader = trainer.guard = None
    if getattr(trainer, "stage", None) is not None:
        trainer.stage.bind(None)  # the TP plan's WSP loss is bound to the released model's groups
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def summarize(cfg: RunConfig, trainer: Any, ranks: list[RankResult], opts: BenchOptions, device) -> dict[str, Any]:
    """Rank 0's report: throughput, MFU, step split, memory, the planner's prediction, the baseline."""
    from maws_scale import kernels
    from maws_scale.perf.planner import Hardware, plan_layout
    from maws_scale.track.throughput import datasheet_peak_tflops, device_name, peak_basis

    world = len(ranks)
    step_s = statistics.mean(statistics.median(r.step_s) for r in ranks)
    images = cfg.train.global_batch / step_s
    flops = trainer.stage.flops_per_sample()
    tflops = images * flops / world / 1e12
    name = device_name(device)
    datasheet = opts.peak_tflops or cfg.tracking.peak_tflops or datasheet_peak_tflops(name, cfg.parallel.precision)
    measured_peak = trainer.measured_peak
    peak_bytes = max(r.peak_bytes for r in ranks)
    total_mem = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 1 << 50
    num_classes = getattr(trainer.stage, "num_classes", None)
    plan = plan_layout(
        cfg,
        Hardware(
            gpus=world, gpu_mem=total_mem, reserve=0, peak_tflops=float(datasheet or 1.0), device_type=device.type
        ),
        num_classes=num_classes,
        fused_kernels=kernels.triton_available(device),
    )
    predicted = plan.memory()
    worst = max(ranks, key=lambda r: sum(r.states.values()))
    phases = {k: statistics.mean(r.phases.get(k, 0.0) for r in ranks) for k in ("forward", "backward", "optimizer")}
    phases["other"] = max(0.0, step_s - sum(phases.values()))
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "model": cfg.model.name,
        "stage": cfg.stage,
        "device": name,
        "world_size": world,
        "dp": trainer.dp_size,
        "tp": cfg.parallel.tp,
        "zero_stage": cfg.parallel.zero_stage,
        "precision": cfg.parallel.precision,
        "peak_basis": peak_basis(cfg.parallel.precision, fp8=cfg.parallel.fp8),  # TF32 on/off; FP8 vs bf16
        "activation_checkpointing": cfg.parallel.activation_checkpointing,
        "offload": cfg.parallel.offload,
        "micro_batch": cfg.train.micro_batch,
        "grad_accum": trainer.accum,
        "global_batch": cfg.train.global_batch,
        "steps": opts.steps,
        "warmup": opts.warmup,
        "data": "loader" if opts.with_data else "synthetic (on device)",
        "step_s": step_s,
        "step_s_per_rank": [statistics.median(r.step_s) for r in ranks],
        "cpu_s_per_rank": [statistics.median(r.cpu_s) for r in ranks],
        "step_s_list": ranks[0].step_s,
        "timing": "median of the timed steps"
        + (", interleaved step by step with the baseline (ABBA)" if ranks[0].baseline else ""),
        "load_average": list(os.getloadavg()),
        "images_per_s": images,
        "tokens_per_s": images * trainer.stage.tokens_per_sample(),
        "phases_s": phases,
        "comm_s": statistics.mean(r.comm_s for r in ranks),
        "flops_per_sample": flops,
        "tflops_per_device": tflops,
        "peak_tflops_datasheet": datasheet,
        "peak_tflops_measured": measured_peak,
        "mfu": tflops / datasheet if datasheet else None,
        "mfu_measured_peak": tflops / measured_peak if measured_peak else None,
        "memory_method": "cuda max_memory_allocated"
        if device.type == "cuda"
        else "tensor storages (live + saved for backward, end of forward)",
        "peak_mem_bytes": peak_bytes,
        "peak_rss_bytes": max(r.rss_bytes for r in ranks),
        "planner_peak_bytes": predicted["peak"],
        "planner_error_pct": 100.0 * (predicted["peak"] - peak_bytes) / peak_bytes,
        "model_states_measured": worst.states,
        "model_states_predicted": {k: predicted[k] for k in ("params", "grads", "optimizer", "buffers")},
    }
    baselines = [r.baseline for r in ranks if r.baseline]
    if baselines:
        base_step = statistics.mean(statistics.median(b["step_s_list"]) for b in baselines)
        base_cpu = statistics.mean(statistics.median(b["cpu_s_list"]) for b in baselines)
        per_step = baselines[0]["images_per_step"]
        ours_cpu = statistics.mean(statistics.median(r.cpu_s) for r in ranks)
        ours_per_device = images / world
        base_images = per_step / base_step
        out["baseline"] = {
            **baselines[0],
            "step_s": base_step,
            "cpu_s": base_cpu,
            "images_per_s": base_images,
            "images_per_s_per_device": base_images,
            "speedup": ours_per_device / base_images if base_images else math.nan,
            # process CPU time per image, ours vs baseline: robust to other load on a shared CPU machine
            "speedup_cpu_time": (base_cpu / per_step) / (ours_cpu * world / cfg.train.global_batch),
        }
    return out


def write_result(summary: dict[str, Any], trainer: Any, opts: BenchOptions) -> Path:
    """Write the JSON (``opts.out`` or ``<output_dir>/bench.json``) and log metrics and the file to the tracker."""
    path = Path(opts.out) if opts.out else Path(trainer.cfg.output_dir) / "bench.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    metrics = {
        f"bench/{k}": float(v)
        for k, v in summary.items()
        if isinstance(v, (int, float)) and v is not None and not isinstance(v, bool)
    }
    metrics.update({f"bench/phase_{k}_s": v for k, v in summary["phases_s"].items()})
    if "baseline" in summary:
        metrics["bench/baseline_images_per_s"] = summary["baseline"]["images_per_s_per_device"]
        metrics["bench/speedup_vs_baseline"] = summary["baseline"]["speedup"]
        metrics["bench/speedup_vs_baseline_cpu_time"] = summary["baseline"]["speedup_cpu_time"]
    trainer.tracker.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=0)
    trainer.tracker.log_artifact(path)
    return path
