"""FLOP accounting matches torch's FlopCounterMode (math attention, so attention matmuls are visible) within 1 %."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from maws_scale.models import build_encoder, build_mae, build_wsp
from maws_scale.models.flops import flops_breakdown, forward_flops, step_flops

BATCH = 2


def _count(model, imgs, backward: bool) -> tuple[float, float]:
    """(forward, forward+backward) FLOPs per sample as FlopCounterMode sees them."""
    with FlopCounterMode(display=False) as fwd_counter:
        out = model(imgs)
    loss = out[0] if isinstance(out, tuple) else out.float().square().mean()
    total = fwd_counter.get_total_flops()
    if backward:
        with FlopCounterMode(display=False) as bwd_counter:
            loss.backward()
        total += bwd_counter.get_total_flops()
    return fwd_counter.get_total_flops() / BATCH, total / BATCH


def _imgs(model):
    torch.manual_seed(0)
    # requires_grad on the input so the patch-embedding backward also computes its input gradient (the ×3 rule)
    return torch.randn(BATCH, model.in_chans, model.img_size, model.img_size, requires_grad=True)


@pytest.mark.parametrize("name", ["vit_micro_p4", "vit_tiny_p4", "vit_tiny_p8"])
@pytest.mark.parametrize("mask_ratio", [0.75, 0.5])
def test_mae_flops_match_flop_counter(name, mask_ratio):
    model = build_mae(name, mask_ratio=mask_ratio, attention="math")
    imgs = _imgs(model)
    fwd, step = _count(model, imgs, backward=True)
    assert forward_flops(model, "mae") == pytest.approx(fwd, rel=0.01)
    assert step_flops(model, "mae") == pytest.approx(step, rel=0.01)
    assert forward_flops(name, "mae", mask_ratio=mask_ratio) == forward_flops(model, "mae")


@pytest.mark.parametrize("pool", ["cls", "gap", "max", "map"])
def test_wsp_flops_match_flop_counter(pool):
    model = build_wsp("vit_tiny_p4", 300, pool=pool, attention="math")
    fwd, step = _count(model, _imgs(model), backward=True)
    assert forward_flops(model, "wsp") == pytest.approx(fwd, rel=0.01)
    assert step_flops(model, "wsp") == pytest.approx(step, rel=0.01)
    assert forward_flops("vit_tiny_p4", "wsp", num_classes=300, pool=pool) == forward_flops(model, "wsp")


def test_encoder_flops_and_breakdown():
    model = build_encoder("vit_micro_p4", attention="math").eval()
    fwd, _ = _count(model, _imgs(model).detach(), backward=False)
    assert forward_flops(model, "encoder") == pytest.approx(fwd, rel=0.01)
    parts = flops_breakdown("vit_b16", "mae")
    assert parts["tokens"] == 1 + 49 and parts["pool"] == parts["head"] == 0
    no_decoder = flops_breakdown("vit_b16", "mae", decoder=False)
    assert no_decoder["decoder"] == 0 and no_decoder["encoder"] == parts["encoder"]
    # patch embedding: 196 patches × (3·16·16) inputs × 768 outputs × 2
    assert parts["patch_embed"] == 2 * 196 * 768 * 768


def test_vit_b16_wsp_forward_is_17_6_gmacs():
    """The published number: ViT-B/16 at 224 px is 17.6 GMACs (timm's table), i.e. 35.1 GFLOPs."""
    assert forward_flops("vit_b16", "wsp", num_classes=1000) / 2e9 == pytest.approx(17.6, rel=0.005)


def test_flops_errors_name_the_problem():
    with pytest.raises(ValueError, match="stage"):
        forward_flops("vit_b16", "clip")
    with pytest.raises(ValueError, match="decoder"):
        forward_flops(build_encoder("vit_micro_p4", device="meta"), "mae")
