"""Analytic traffic model: hand-computed cases, fused below eager, and docs/kernels.md in step with the generator."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from maws_scale.kernels.geometry import batch_splits, block_d
from maws_scale.kernels.traffic import gather_visible_traffic, loss_traffic, unshuffle_traffic

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "bench_kernels.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_kernels", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_kernels", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gather_by_hand():
    # B=2, L=4, K=1, D=8, bf16, int64 ids: full 128 B, kept 32 B, pos 64 B, ids 16 B
    fwd, bwd = gather_visible_traffic(2, 4, 1, 8)
    assert fwd.fused_bytes == 32 + 64 + 16 + 32
    assert fwd.unfused_bytes == (128 + 64 + 128) + (32 + 16 + 32)
    assert bwd.fused_bytes == (16 + 2 * 4 * 4 + 2 * 1 * 4) + (32 + 32 + 128)
    assert bwd.unfused_bytes == 128 + (2 * 32 + 16 + 32)


def test_unshuffle_by_hand():
    # B=2, L=4, K=1, D=8, bf16: full 128 B, kept 32 B, pos 64 B, token 16 B, ids 64 B; one chunk per sample
    fwd, bwd = unshuffle_traffic(2, 4, 1, 8)
    assert fwd.fused_bytes == 32 + 16 + 64 + 64 + 128
    assert fwd.unfused_bytes == (32 + 16 + 128) + (128 + 64 + 128) + (128 + 64 + 128)
    chunks, _ = batch_splits(2, 4)
    partials = chunks * 4 * 8 * 4
    assert bwd.fused_bytes == (128 + 64 + 32 + partials) + (partials + 32)
    assert bwd.unfused_bytes == 128 + (2 * 128 + 64 + 128) + (128 - 32 + 32)


def test_loss_by_hand():
    # B=1, C=1, 4x4 image, p=2: X = 16 pixels, L = 4, weights 16 B; half the patches masked
    fwd, bwd = loss_traffic(1, 1, 4, 4, 2, mask_ratio=0.5)
    assert fwd.fused_bytes == 8 * (2 + 2) + 16 + 16 + 2 * 16
    assert fwd.unfused_bytes == 16 * 68 + 3 * 16
    assert bwd.fused_bytes == 8 * 4 + 16 + 16 * 2
    assert bwd.unfused_bytes == 16 * 14
    fp32_fwd, _ = loss_traffic(1, 1, 4, 4, 2, mask_ratio=0.5, img_elem=4, pred_elem=4, norm_pix=False)
    assert fp32_fwd.unfused_bytes == 16 * (8 + 12 + 8 + 4) + 3 * 16  # no casts, no normalisation passes


@pytest.mark.parametrize("model", ["vit_l16", "vit_2b14", "vit_6.5b14"])
def test_fused_moves_less_than_eager(model):
    bench = load_bench()
    for shape in bench.shapes([model], smoke=False):
        for pair in bench.traffic(shape).values():
            for t in pair:
                assert 0 < t.fused_bytes < t.unfused_bytes, (t.op, t.direction)


def test_geometry():
    assert [block_d(w) for w in (1, 80, 128, 1280, 4096)] == [16, 128, 128, 1024, 1024]
    assert batch_splits(256, 196) == (6, 43)  # 6 chunks of <= 43 samples: ~1176 programs
    assert batch_splits(5, 10, splits=2) == (2, 3)
    assert batch_splits(5, 10_000) == (1, 5)
    assert batch_splits(0, 10) == (1, 1)


def test_docs_table_is_what_the_generator_prints():
    printed = subprocess.run(
        [sys.executable, str(BENCH), "--traffic-table"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    docs = (ROOT / "docs" / "kernels.md").read_text()
    start, end = "<!-- traffic-table:start -->\n", "\n<!-- traffic-table:end -->"
    assert docs[docs.index(start) + len(start) : docs.index(end)] == printed, (
        "regenerate: bench_kernels.py --traffic-table"
    )


def test_benchmark_refuses_without_a_gpu_and_smoke_runs(tmp_path):
    """No CUDA here: the plain run must refuse; --cpu-smoke must run one tiny model and label its output."""
    if not torch.cuda.is_available():
        refused = subprocess.run([sys.executable, str(BENCH)], cwd=ROOT, capture_output=True, text=True)
        assert refused.returncode == 2 and "no CUDA device" in refused.stderr
    out = tmp_path / "smoke.json"
    command = [sys.executable, str(BENCH), "--cpu-smoke", "--models", "vit_l16", "--json", str(out)]
    smoke = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    assert "NOT performance figures" in smoke.stdout
    result = json.loads(out.read_text())
    assert result["mode"] == "cpu-smoke" and result["performance_figure"] is False
    rows = [r for r in result["rows"] if "error" not in r]
    assert {(r["op"], r["impl"], r["direction"]) for r in rows} == {
        (op, impl, d)
        for op in ("gather_visible", "unshuffle_with_mask_tokens", "norm_pix_masked_mse")
        for impl in ("eager", "fused")
        for d in ("fwd", "fwd+bwd")
    }
    assert all(r["max_abs_diff_vs_eager"] < 1e-5 for r in rows)
