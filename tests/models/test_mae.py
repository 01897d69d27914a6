"""MAE: masking semantics, facebookresearch/mae naming, loss over masked patches only, encoder sees visible only."""

from __future__ import annotations

import pytest
import torch

from maws_scale.models import MODELS, build_mae, get_spec
from maws_scale.models.layers import Block, sincos_pos_embed_2d
from maws_scale.models.mae import random_masking


def test_random_masking_semantics():
    gen = torch.Generator().manual_seed(0)
    keep_ids, restore_ids, mask = random_masking(4, 16, 0.75, generator=gen)
    assert keep_ids.shape == (4, 4) and restore_ids.shape == (4, 16) and mask.shape == (4, 16)
    assert torch.equal(mask.sum(1), torch.full((4,), 12.0))
    # kept patches are exactly the unmasked ones, and restore_ids inverts the shuffle
    for b in range(4):
        assert set(keep_ids[b].tolist()) == set(torch.nonzero(mask[b] == 0).flatten().tolist())
    shuffle = torch.argsort(restore_ids, dim=1)
    assert torch.equal(torch.gather(shuffle, 1, restore_ids), torch.arange(16).expand(4, 16))
    assert torch.equal(shuffle[:, :4], keep_ids)
    # same generator seed → same mask; the masks differ per sample
    again = random_masking(4, 16, 0.75, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[2], mask)
    assert len({tuple(row.tolist()) for row in mask}) > 1
    # the noise ordering is argsort semantics: the smallest noise values are kept
    noise = torch.rand(4, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(keep_ids, torch.argsort(noise, dim=1)[:, :4])


@pytest.mark.parametrize("name", list(MODELS))
def test_mae_keys_match_models_mae(name, timm_naming):
    _, _, mae_keys = timm_naming
    spec = get_spec(name)
    model = build_mae(name, device="meta")
    expected = mae_keys(
        spec.width, spec.depth, spec.patch, spec.img_size, spec.mlp_hidden, spec.decoder_width, spec.decoder_depth
    )
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == expected
    assert isinstance(model.decoder_blocks, torch.nn.ModuleList) and isinstance(model.decoder_blocks[0], Block)
    assert model.decoder_blocks[0].attn.num_heads == spec.decoder_heads


def test_maws_sizes_default_to_8x512x16_decoder():
    model = build_mae("vit_h14", device="meta")
    assert (model.decoder_depth, model.decoder_embed_dim, model.decoder_num_heads) == (8, 512, 16)
    custom = build_mae("vit_micro_p4", decoder_width=48, decoder_depth=3, decoder_heads=3, device="meta")
    assert len(custom.decoder_blocks) == 3 and custom.decoder_blocks[0].attn.num_heads == 3


def test_position_embeddings_are_fixed_sincos():
    model = build_mae("vit_micro_p4")
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    torch.testing.assert_close(model.decoder_pos_embed[0], sincos_pos_embed_2d(32, 4))
    table = sincos_pos_embed_2d(8, 2)  # rows: cls, (0,0), (0,1), (1,0), (1,1); first half encodes the column
    assert torch.equal(table[0], torch.zeros(8))
    torch.testing.assert_close(table[2, :2], torch.tensor([1.0, 0.01]).sin())  # column 1, frequencies 1, 1/100
    torch.testing.assert_close(table[2, 4:6], torch.zeros(2))  # row 0 → sin(0)
    assert model.no_weight_decay() >= {"pos_embed", "cls_token", "mask_token", "decoder_pos_embed"}


def _direct_loss(imgs, pred, mask, p, norm_pix=True, eps=1e-6):
    b, c, h, w = imgs.shape
    target = imgs.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), -1)
    if norm_pix:
        mu, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mu) / torch.sqrt(var + eps)
    total, count = 0.0, 0
    for i in range(b):
        for j in range(target.shape[1]):
            if mask[i, j] == 1:
                total = total + ((pred[i, j] - target[i, j]) ** 2).mean()
                count += 1
    return total / count


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_counts_masked_patches_only_and_equals_direct_computation(norm_pix):
    torch.manual_seed(0)
    model = build_mae("vit_micro_p4", norm_pix_loss=norm_pix, attention="math")
    imgs = torch.randn(3, 3, 16, 16)
    loss, pred, mask = model(imgs, generator=torch.Generator().manual_seed(1))
    assert pred.shape == (3, 16, 48) and mask.shape == (3, 16)
    torch.testing.assert_close(loss, _direct_loss(imgs, pred.detach(), mask, 4, norm_pix), atol=1e-5, rtol=1e-5)
    # changing predictions of visible patches does not move the loss; changing a masked one does
    edited = pred.detach().clone()
    edited[mask == 0] += 5.0
    torch.testing.assert_close(model.forward_loss(imgs, edited, mask), loss.detach())
    edited[mask == 1] += 5.0
    assert model.forward_loss(imgs, edited, mask) > loss + 1.0


def test_encoder_sees_only_visible_patches():
    torch.manual_seed(0)
    model = build_mae("vit_micro_p4", attention="math").eval()
    imgs = torch.randn(2, 3, 16, 16)
    tokens, mask, _ = model.forward_encoder(imgs, 0.75, torch.Generator().manual_seed(3))
    assert tokens.shape == (2, 1 + 4, 32)
    pixel_mask = mask.reshape(2, 1, 4, 1, 4, 1).expand(2, 3, 4, 4, 4, 4).reshape(2, 3, 16, 16)
    noisy = imgs + 10 * torch.randn_like(imgs) * pixel_mask  # perturb masked patches only
    again, _, _ = model.forward_encoder(noisy, 0.75, torch.Generator().manual_seed(3))
    torch.testing.assert_close(again, tokens)
    visible = imgs + torch.randn_like(imgs) * (1 - pixel_mask)
    moved, _, _ = model.forward_encoder(visible, 0.75, torch.Generator().manual_seed(3))
    assert not torch.allclose(moved, tokens)


def test_mask_ratio_argument_and_backward():
    torch.manual_seed(0)
    model = build_mae("vit_micro_p4", mask_ratio=0.5, attention="math")
    imgs = torch.randn(2, 3, 16, 16)
    _, _, mask = model(imgs)
    assert mask.sum() == 16
    loss, _, mask = model(imgs, mask_ratio=0.25)
    assert mask.sum() == 8
    loss.backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.decoder_blocks[0].mlp.fc2.weight.grad.abs().sum() > 0
    assert model.pos_embed.grad is None and model.decoder_pos_embed.grad is None


def test_kernels_impl_is_forwarded(monkeypatch):
    from maws_scale import kernels

    seen = []
    for op in ("gather_visible", "unshuffle_with_mask_tokens", "norm_pix_masked_mse"):
        original = getattr(kernels, op)
        monkeypatch.setattr(
            kernels, op, lambda *a, _o=original, _n=op, **kw: seen.append((_n, kw["impl"])) or _o(*a, **kw)
        )
    model = build_mae("vit_micro_p4", kernels="torch")
    model(torch.randn(1, 3, 16, 16))
    assert seen == [
        ("gather_visible", "torch"),
        ("unshuffle_with_mask_tokens", "torch"),
        ("norm_pix_masked_mse", "torch"),
    ]


def test_explicit_noise_sets_each_samples_mask_independently_of_the_batch():
    noise = torch.rand(3, 16, generator=torch.Generator().manual_seed(5))
    keep_ids, _, mask = random_masking(3, 16, 0.75, noise=noise)
    assert torch.equal(keep_ids, torch.argsort(noise, dim=1)[:, :4])
    torch.manual_seed(0)
    model = build_mae("vit_micro_p4", attention="math").eval()
    imgs = torch.randn(3, 3, 16, 16)
    _, pred, batch_mask = model(imgs, noise=noise)
    assert torch.equal(batch_mask, mask)
    _, pred_one, mask_one = model(imgs[1:2], noise=noise[1:2])  # same sample alone: same mask, same prediction
    assert torch.equal(mask_one[0], mask[1])
    torch.testing.assert_close(pred_one[0], pred[1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="noise"):
        model(imgs, noise=noise[:, :8])
