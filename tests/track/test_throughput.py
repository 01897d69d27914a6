"""Peak tables, the measured device peak, and the throughput / MFU meter."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from maws_scale.track import throughput
from maws_scale.track.throughput import (
    ThroughputMeter,
    datasheet_peak_tflops,
    measure_peak_tflops,
    peak_basis,
)


@pytest.mark.parametrize(
    ("name", "precision", "peak"),
    [
        ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
        ("NVIDIA H100 80GB HBM3", "bf16", 989.0),
        ("NVIDIA H100 PCIe", "bf16", 756.0),
        ("NVIDIA H200", "bf16", 989.0),
        ("NVIDIA H100 NVL", "bf16", 835.0),  # not the SXM 989
        ("NVIDIA H200 NVL", "bf16", 835.0),
        ("NVIDIA H100 80GB HBM3", "fp32", 494.0),
        ("cpu", "bf16", None),
        ("Tesla V100-SXM2-32GB", "bf16", None),
    ],
)
def test_datasheet_peaks(name, precision, peak):
    assert datasheet_peak_tflops(name, precision, tf32=True) == peak


def test_fp32_without_tf32_is_measured_against_the_cuda_cores(monkeypatch):
    from maws_scale.track import throughput

    assert throughput.tf32_enabled() is False  # torch's default
    monkeypatch.setattr(throughput, "tf32_enabled", lambda: False)
    assert datasheet_peak_tflops("NVIDIA H100 80GB HBM3", "fp32") == 67.0
    assert datasheet_peak_tflops("NVIDIA H100 NVL", "fp32") == 60.0
    assert peak_basis("fp32") == "fp32 with TF32 off: FP32 CUDA-core peak"
    assert datasheet_peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0  # other precisions are unaffected
    monkeypatch.setattr(throughput, "tf32_enabled", lambda: True)
    assert datasheet_peak_tflops("NVIDIA H100 80GB HBM3", "fp32") == 494.0 and "TF32 on" in peak_basis("fp32")


def test_measured_peak_counts_the_timed_matmuls(monkeypatch):
    """A clock that advances 0.1 s per read: the window closes after 6 matmuls (checked every 2) at t = 0.3 s and
    the rate is read at t = 0.4 s, so the peak is 6 products of 64³ multiply-adds in 0.4 s."""
    reads = iter(i * 0.1 for i in range(100))
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(reads))
    products = []
    real_matmul = torch.matmul
    monkeypatch.setattr(throughput.torch, "matmul", lambda a, b: products.append(a.shape) or real_matmul(a, b))
    tflops = measure_peak_tflops("cpu", "fp32", size=64, seconds=0.3, trials=1)
    assert len(products) == 1 + 6  # the warm-up, then the timed window
    assert tflops == pytest.approx(6 * 2 * 64**3 / 0.4 / 1e12)


def test_meter_computes_rates_and_mfu():
    clock = iter([100.0, 102.0, 102.0])
    meter = ThroughputMeter(
        flops_per_sample=3 * 10**12,
        tokens_per_sample=196,
        world_size=4,
        datasheet_peak=989.0,
        measured_peak=500.0,
        clock=lambda: next(clock),
    )
    meter.update(512)
    meter.update(512)
    rate = meter.rate()
    assert rate.images_per_s == pytest.approx(512.0)  # 1024 images in 2 s
    assert rate.tokens_per_s == pytest.approx(512.0 * 196)
    assert rate.tflops_per_device == pytest.approx(512.0 * 3 / 4)  # 3 TFLOP per sample over 4 devices
    assert rate.mfu == pytest.approx(384.0 / 989.0)
    assert rate.mfu_measured == pytest.approx(384.0 / 500.0)
    assert set(rate.as_metrics()) == {"images_per_s", "tokens_per_s", "tflops_per_device", "mfu", "mfu_measured"}


def test_unknown_peak_leaves_mfu_out():
    meter = ThroughputMeter(10, 1, 1, datasheet_peak=None, measured_peak=1.0)
    meter.update(1)
    assert "mfu" not in meter.rate().as_metrics()


def test_cpu_peak_memory_sees_a_known_tensor():
    """In a fresh process, a touched tensor that takes the resident set 512 MiB past its earlier peak raises the
    reported peak by 0.5 GiB (ru_maxrss is in KiB on Linux)."""
    code = (
        "import re, torch\n"
        "from maws_scale.track.throughput import peak_memory_gib\n"
        "rss = int(re.search(r'VmRSS:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) / 2**20\n"
        "before = peak_memory_gib('cpu')\n"
        "extra = int((before - rss) * 2**30) + 2**29\n"  # up to the earlier peak, then 512 MiB more
        "x = torch.ones(extra // 4)\n"  # float32, every page written
        "print(peak_memory_gib('cpu') - before)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split()[-1]) == pytest.approx(0.5, abs=0.05), result.stdout


def test_fp8_runs_say_their_mfu_is_against_the_bf16_peak():
    assert peak_basis("bf16", fp8="none") == "bf16 dense tensor-core peak"
    basis = peak_basis("bf16", fp8="rowwise")
    assert basis.startswith("bf16 dense tensor-core peak") and "not the FP8 peak" in basis and "rowwise" in basis
