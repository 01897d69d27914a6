"""Peak tables, the measured device peak, and the throughput / MFU meter."""

from __future__ import annotations

import pytest
import torch

from maws_scale.track.throughput import (
    ThroughputMeter,
    datasheet_peak_tflops,
    measure_peak_tflops,
    peak_basis,
    peak_memory_gib,
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


def test_measured_peak_is_a_plausible_rate():
    tflops = measure_peak_tflops("cpu", "fp32", size=256, seconds=0.05)
    assert 1e-4 < tflops < 100  # somewhere between a slow shared core and a large server


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


def test_peak_memory():
    _ = torch.ones(1 << 20)
    assert peak_memory_gib("cpu") > 0.003
