"""The two-tower model: temperature init and clamp, LiT's locked image tower, MAE-CLIP's shared masked forward."""

from __future__ import annotations

import math

import torch

from maws_scale.models import build_encoder, build_mae
from maws_scale.models.clip import CLIP, MAX_LOGIT_SCALE
from maws_scale.models.text import TextTransformer


def make(lock: bool = False, mae: bool = False, pool: str = "gap") -> CLIP:
    torch.manual_seed(0)
    visual = build_mae("vit_micro_p4", pool=pool) if mae else build_encoder("vit_micro_p4", pool=pool, drop_path=0.5)
    return CLIP(visual, TextTransformer(40, 8, width=32, depth=1, heads=2), embed_dim=16, lock_image=lock)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 16, 16, generator=g), torch.randint(3, 40, (4, 8), generator=g)


def test_logit_scale_starts_at_one_over_0_07_and_is_clamped_at_100():
    model = make()
    images, tokens = batch()
    out = model(images, tokens)
    assert math.isclose(out.scale.item(), 1 / 0.07, rel_tol=1e-5)
    assert torch.allclose(out.image.norm(dim=-1), torch.ones(4)) and torch.allclose(
        out.text.norm(dim=-1), torch.ones(4)
    )
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model(images, tokens).scale.item() == MAX_LOGIT_SCALE


def test_lit_locks_the_image_tower_and_keeps_it_in_eval_mode():
    model = make(lock=True).train()
    assert not any(p.requires_grad for p in model.visual.parameters())
    assert all(p.requires_grad for p in model.text.parameters()) and model.image_proj.weight.requires_grad
    assert not model.visual.training and model.text.training
    images, tokens = batch()
    out = model(images, tokens)
    (out.image * out.text).sum().backward()
    assert all(p.grad is None for p in model.visual.parameters())
    assert model.text_proj.weight.grad is not None


def test_mae_clip_embeds_from_the_masked_forward_or_from_a_clean_one():
    model = make(mae=True)
    images, tokens = batch()
    noise = torch.rand(4, 16, generator=torch.Generator().manual_seed(2))
    shared = model(images, tokens, mask_ratio=0.75, noise=noise, mask_clip_input=True)
    clean = model(images, tokens, mask_ratio=0.75, noise=noise, mask_clip_input=False)
    assert shared.mae_loss is not None and torch.isfinite(shared.mae_loss)
    torch.testing.assert_close(shared.mae_loss, clean.mae_loss)
    torch.testing.assert_close(clean.image, model.encode_image(images))
    assert not torch.allclose(shared.image, clean.image)
