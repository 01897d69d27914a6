"""Throughput and model-FLOPs utilisation: datasheet peaks, a measured device peak, and a per-step meter.

MFU is reported twice: against the datasheet peak of the accelerator (A100 / H100 / H200 bf16 dense, or
``tracking.peak_tflops``), and against the device's own peak measured once at start-up with a large matmul in the
run's precision, so the number means something on a CPU run too. FP8 runs (``parallel.fp8``) are measured against
the same bf16 peak (``peak_basis`` says so): their MFU is directly comparable with the bf16 run's.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

# Dense (no sparsity) peak TFLOP/s from the vendor datasheets, by (device-name substring, precision); the first
# matching substring wins, so the NVL and PCIe cards come before the SXM name they contain. "fp32" is the TF32 tensor-
# core peak; with TF32 off (torch's default for matmuls) fp32 runs on the CUDA cores: FP32_CUDA_CORES.
PEAK_TFLOPS: dict[tuple[str, str], float] = {
    ("A100", "bf16"): 312.0,
    ("A100", "fp16"): 312.0,
    ("A100", "fp32"): 156.0,
    ("H100 NVL", "bf16"): 835.0,
    ("H100 NVL", "fp16"): 835.0,
    ("H100 NVL", "fp32"): 418.0,
    ("H100 PCIe", "bf16"): 756.0,
    ("H100 PCIe", "fp16"): 756.0,
    ("H100 PCIe", "fp32"): 378.0,
    ("H100", "bf16"): 989.0,  # SXM
    ("H100", "fp16"): 989.0,
    ("H100", "fp32"): 494.0,
    ("H200 NVL", "bf16"): 835.0,
    ("H200 NVL", "fp16"): 835.0,
    ("H200 NVL", "fp32"): 418.0,
    ("H200", "bf16"): 989.0,
    ("H200", "fp16"): 989.0,
    ("H200", "fp32"): 494.0,
}
FP32_CUDA_CORES: dict[str, float] = {"A100": 19.5, "H100 NVL": 60.0, "H100 PCIe": 51.0, "H100": 67.0, "H200 NVL": 60.0,
                                     "H200": 67.0}  # fmt: skip
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def device_name(device: torch.device | str | None = None) -> str:
    """Human name of the accelerator (``torch.cuda.get_device_name``) or ``cpu``."""
    device = torch.device(device) if device is not None else None
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        return torch.cuda.get_device_name(device)
    return "cpu"


def tf32_enabled() -> bool:
    """Whether fp32 matmuls may use TF32 tensor cores (``torch.backends.cuda.matmul.allow_tf32``; off by default)."""
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32)
    except AttributeError:  # a torch without the flag: its matmul precision setting says the same
        return torch.get_float32_matmul_precision() != "highest"


def datasheet_peak_tflops(name: str, precision: str = "bf16", tf32: bool | None = None) -> float | None:
    """Datasheet peak for a device name such as 'NVIDIA H100 80GB HBM3'; None when the device is not in the table.

    fp32: the TF32 tensor-core peak when ``tf32`` (default: :func:`tf32_enabled`), else the CUDA-core FP32 peak."""
    if precision == "fp32" and not (tf32_enabled() if tf32 is None else tf32):
        return next((v for key, v in FP32_CUDA_CORES.items() if key in name), None)
    for (key, prec), value in PEAK_TFLOPS.items():
        if key in name and prec == precision:
            return value
    return None


def peak_basis(precision: str, tf32: bool | None = None, fp8: str = "none") -> str:
    """What the datasheet MFU of ``precision`` is measured against, for logs and reports.

    With ``parallel.fp8`` the FP8 matmuls are still counted against the ``precision`` (bf16) peak, not the FP8 peak
    (twice as high on Hopper): the MFU of an FP8 run compares directly with its bf16 run, and may exceed what the
    bf16 tensor cores alone could reach."""
    if precision != "fp32":
        basis = f"{precision} dense tensor-core peak"
    elif tf32_enabled() if tf32 is None else tf32:
        basis = "fp32 with TF32 on: TF32 dense tensor-core peak"
    else:
        basis = "fp32 with TF32 off: FP32 CUDA-core peak"
    if fp8 != "none":
        basis += f" (parallel.fp8={fp8}: FP8 matmuls counted against this peak, not the FP8 peak)"
    return basis


def measure_peak_tflops(
    device: torch.device | str = "cpu",
    precision: str = "bf16",
    size: int | None = None,
    seconds: float = 0.3,
    trials: int = 3,
) -> float:
    """Achieved TFLOP/s of repeated square matmuls on ``device`` in ``precision`` (a practical ceiling).

    The best of ``trials`` windows of ``seconds / trials`` each, so a moment of contention on a shared machine does not
    lower the ceiling (which would push MFU above 1 later)."""
    device = torch.device(device)
    dtype = DTYPES[precision]
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.float32  # CPU fp16 matmul is emulated and says nothing about the hardware
    n = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.matmul(a, b)  # warm-up (kernel selection, allocation)
    sync()
    best = 0.0
    for _ in range(max(1, trials)):
        iters, start = 0, time.perf_counter()
        while True:
            torch.matmul(a, b)
            iters += 1
            if iters % 2 == 0:
                sync()
                if time.perf_counter() - start >= seconds / max(1, trials):
                    break
        best = max(best, 2.0 * n**3 * iters / (time.perf_counter() - start) / 1e12)
    return best


def peak_memory_gib(device: torch.device | str = "cpu") -> float:
    """Peak memory so far: allocated accelerator memory on CUDA, the process's peak resident set on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


@dataclass
class StepRate:
    """Throughput numbers of one measured interval."""

    images_per_s: float
    tokens_per_s: float
    tflops_per_device: float
    mfu: float | None
    mfu_measured: float | None

    def as_metrics(self) -> dict[str, float]:
        out = {
            "images_per_s": self.images_per_s,
            "tokens_per_s": self.tokens_per_s,
            "tflops_per_device": self.tflops_per_device,
        }
        if self.mfu is not None:
            out["mfu"] = self.mfu
        if self.mfu_measured is not None:
            out["mfu_measured"] = self.mfu_measured
        return out


class ThroughputMeter:
    """Images/s, tokens/s, TFLOP/s per device and MFU over the steps since the last :meth:`rate` call.

    ``flops_per_sample`` is forward + backward model FLOPs for one sample (``models.flops.step_flops``); activation
    recomputation is not counted (the usual MFU convention). ``world_size`` counts every device, TP ranks included.
    """

    def __init__(
        self,
        flops_per_sample: int,
        tokens_per_sample: int,
        world_size: int,
        datasheet_peak: float | None,
        measured_peak: float | None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.clock = clock
        self.flops_per_sample = flops_per_sample
        self.tokens_per_sample = tokens_per_sample
        self.world_size = world_size
        self.datasheet_peak = datasheet_peak
        self.measured_peak = measured_peak
        self.reset()

    def reset(self) -> None:
        self._samples = 0
        self._start = self.clock()

    def update(self, samples: int) -> None:
        """Count ``samples`` (global batch) processed since the last reset."""
        self._samples += samples

    def rate(self, reset: bool = True) -> StepRate:
        elapsed = max(self.clock() - self._start, 1e-9)
        images = self._samples / elapsed
        tflops = images * self.flops_per_sample / self.world_size / 1e12
        result = StepRate(
            images_per_s=images,
            tokens_per_s=images * self.tokens_per_sample,
            tflops_per_device=tflops,
            mfu=tflops / self.datasheet_peak if self.datasheet_peak else None,
            mfu_measured=tflops / self.measured_peak if self.measured_peak else None,
        )
        if reset:
            self.reset()
        return result


DATA_WAIT_WARN_PCT = 10.0


def data_wait_advice(wait_pct: float, num_workers: int, decode: str = "cpu") -> str | None:
    """The one-time warning when the trainer waited for data more than ``DATA_WAIT_WARN_PCT`` % of a logging
    window (None below it): what to change, most direct first."""
    if not wait_pct > DATA_WAIT_WARN_PCT:
        return None
    ways = [
        f"more loader workers (data.num_workers={num_workers}; `maws-scale bench --data CONFIG` says how many)",
        "shards resized at build time (`data build --resize shorter:256`)",
        "raw-pixel shards for low resolutions (`data build --encoding raw --resize square:N`)",
    ]
    if decode != "gpu":
        ways.append("JPEG decode on the GPU (data.decode=gpu)")
    return (
        f"data wait {wait_pct:.0f}% of the last logging window (above {DATA_WAIT_WARN_PCT:.0f}%): the GPUs wait for "
        "the loader. Ways out: " + "; ".join(ways) + " (docs/data.md, 'feeding the GPUs'). Warned once per stage."
    )
