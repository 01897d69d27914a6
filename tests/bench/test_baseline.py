"""The plain-PyTorch baseline runs the same model as our stack (same shapes), its math attention is attention, and a
timed run reports finite, positive numbers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from maws_scale.bench.baseline import MathAttention, build_baseline, run_baseline
from maws_scale.config import load_config
from maws_scale.model_config import build_model


def numel(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("stage", ["mae", "wsp"])
@pytest.mark.parametrize("name", ["vit_tiny_p4", "vit_b16"])
def test_baseline_has_our_shapes(stage: str, name: str) -> None:
    cfg = load_config(None, [f"model.name={name}", f"stage={stage}", "wsp.num_classes=1000"])
    ours = build_model(cfg, device="meta")
    with torch.device("meta"):
        base = build_baseline(cfg, use_timm=False)
    assert numel(base) == numel(ours)
    frozen = sum(p.numel() for p in base.parameters() if not p.requires_grad)
    assert frozen == (0 if stage == "wsp" else (1 + cfg.spec.num_patches()) * cfg.spec.decoder_width)


def test_math_attention_is_attention() -> None:
    torch.manual_seed(0)
    attn = MathAttention(32, 4)
    x = torch.randn(2, 7, 32)
    q, k, v = attn.qkv(x).reshape(2, 7, 3, 4, 8).permute(2, 0, 3, 1, 4)
    ref = attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 7, 32))
    torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stage", ["mae", "wsp"])
def test_run_baseline_reports_finite_numbers(stage: str) -> None:
    cfg = load_config(None, ["model.name=vit_micro_p4", f"stage={stage}", "wsp.num_classes=10"])
    batches = [{"images": torch.randn(4, 3, 16, 16), "targets": torch.softmax(torch.randn(4, 10), -1)}]
    res = run_baseline(cfg, batches, steps=2, warmup=1, accum=2, device=torch.device("cpu"), num_classes=10)
    assert res.steps == 2 and len(res.losses) == 3
    assert all(math.isfinite(x) and x > 0 for x in res.losses)
    assert res.step_s > 0 and res.images_per_s == pytest.approx(8 / res.step_s)
    assert res.cpu_s > 0 and res.images_per_step == 8
    assert res.peak_mem_bytes is None  # CPU
