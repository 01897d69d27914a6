"""Is data the bottleneck? The loader's measured images per second per worker against the planner's step rate.

``maws-scale bench --data CONFIG`` runs the config's loader (its data, image size, crop scale, flip, decode) in
this process, as one DataLoader worker would, and divides the planner's images per second per GPU by the measured
rate: the workers each GPU needs, against the cores a node has per GPU. ``maws-scale plan --data-rate R`` prints
the same line for a rate measured before.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from maws_scale.config import RunConfig

LOADER_STAGES = ("mae", "wsp", "clip")
WAYS_OUT = (
    "more data.num_workers (up to the cores per GPU)",
    "`data build --resize shorter:256` (about 2x per core on 512-1024 px photos)",
    "`data build --encoding raw --resize square:N` for low resolutions (about 10x)",
    "data.decode=gpu (JPEG decode on the GPU)",
)


@dataclass
class FeedCheck:
    """Loader rate per worker vs what the planned step rate needs."""

    worker_img_per_s: float
    gpu_img_per_s: float
    gpus: int
    cores_per_node: int
    gpus_per_node: int
    num_workers: int

    @property
    def workers_per_gpu(self) -> int:
        return max(1, math.ceil(self.gpu_img_per_s / self.worker_img_per_s))

    @property
    def cores_per_gpu(self) -> float:
        return self.cores_per_node / self.gpus_per_node

    @property
    def data_bound(self) -> bool:
        return self.workers_per_gpu > self.cores_per_gpu

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "workers_per_gpu": self.workers_per_gpu,
            "cores_per_gpu": self.cores_per_gpu,
            "data_bound": self.data_bound,
        }

    def line(self) -> str:
        """The workers-needed line (and what to change when the node's cores cannot keep up)."""
        text = (
            f"data feed: the planner's step rate needs {self.gpu_img_per_s:,.0f} img/s per GPU ({self.gpus} GPUs); "
            f"one loader worker does {self.worker_img_per_s:,.0f} img/s → {self.workers_per_gpu} "
            f"worker{'s' if self.workers_per_gpu > 1 else ''} per GPU; "
            f"the node has {self.cores_per_gpu:g} cores per GPU ({self.cores_per_node} cores / {self.gpus_per_node} "
            "GPUs)"
        )
        if self.data_bound:
            fed = 100 * self.cores_per_gpu / self.workers_per_gpu
            return (
                f"{text}: DATA-BOUND, at most {fed:.0f}% of the planned speed. Ways out: " + "; ".join(WAYS_OUT) + "."
            )
        if self.workers_per_gpu > self.num_workers:
            return f"{text}: enough cores, but data.num_workers={self.num_workers}: set it to {self.workers_per_gpu}."
        return f"{text}: OK (data.num_workers={self.num_workers})."


def planned_gpu_rate(cfg: RunConfig, gpus: int, gpus_per_node: int, gpu: str = "H100") -> float:
    """The planner's images per second per GPU for the config's layout on ``gpus`` GPUs of type ``gpu``."""
    from maws_scale.perf.planner import Hardware, parse_bytes, plan_layout
    from maws_scale.track.throughput import datasheet_peak_tflops

    hw = Hardware(
        gpus=gpus,
        gpu_mem=parse_bytes("80GiB"),
        reserve=parse_bytes("2GiB"),
        gpus_per_node=gpus_per_node,
        peak_tflops=float(datasheet_peak_tflops(gpu, cfg.parallel.precision)),
    )
    plan = plan_layout(cfg, hw, fused_kernels=cfg.model.kernels != "torch")
    return plan.speed.est_images_per_s / gpus


def measure_worker_rate(cfg: RunConfig, batches: int = 20, warmup: int = 2) -> dict[str, Any]:
    """Images per CPU-second of the config's loader run in this process (one worker's work): ``warmup`` batches
    untimed, then ``batches`` timed. Prints a progress line every few batches to stderr."""
    import torch

    from maws_scale.data import build_loader

    torch.set_num_threads(1)
    stage = cfg.stage if cfg.stage in LOADER_STAGES else "mae"
    in_process = cfg.model_copy(update={"data": cfg.data.model_copy(update={"num_workers": 0})})
    loader = build_loader(in_process, stage)
    images = 0
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(batches):
        images += int(next(iterator)["images"].shape[0])
        if (i + 1) % 5 == 0 or i + 1 == batches:
            print(f"data feed: {i + 1}/{batches} batches, {images} images", file=sys.stderr, flush=True)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "stage": stage,
        "images": images,
        "cpu_s": cpu,
        "wall_s": wall,
        "img_per_cpu_s": images / cpu,
        "img_size": cfg.img_size,
        "bad_records": loader.error_counts(),
    }


def default_cores() -> int:
    """CPU cores of this machine (the scheduler's affinity where it is set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
