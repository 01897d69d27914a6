"""The torch references (the ground truth of the kernel tests) against element-by-element loops."""

from __future__ import annotations

import torch
from maws_scale.kernels import reference
from maws_scale.kernels.masking import random_masking_ids


def test_masking_ids_contract():
    gen = torch.Generator().manual_seed(0)
    keep_ids, restore_ids, mask = random_masking_ids(3, 20, 5, generator=gen)
    assert keep_ids.shape == (3, 5) and restore_ids.shape == (3, 20) and mask.shape == (3, 20)
    for b in range(3):
        assert sorted(restore_ids[b].tolist()) == list(range(20))
        assert set(keep_ids[b].tolist()) == {n for n in range(20) if restore_ids[b, n] < 5}
        assert mask[b].sum() == 15 and (mask[b, keep_ids[b]] == 0).all()


def test_patchify_order_and_round_trip():
    imgs = torch.randn(2, 3, 12, 8)
    patches = reference.patchify(imgs, 4)
    assert patches.shape == (2, 6, 48)
    for hi, wi, pi, qi, c in [(0, 0, 0, 0, 0), (2, 1, 3, 1, 2), (1, 0, 2, 3, 1)]:
        assert patches[1, hi * 2 + wi, (pi * 4 + qi) * 3 + c] == imgs[1, c, hi * 4 + pi, wi * 4 + qi]
    square = torch.randn(2, 3, 8, 8)
    assert torch.equal(reference.unpatchify(reference.patchify(square, 4), 4), square)


def test_gather_and_unshuffle_against_loops():
    gen = torch.Generator().manual_seed(1)
    keep_ids, restore_ids, _ = random_masking_ids(2, 10, 3, generator=gen)
    tokens, pos = torch.randn(2, 10, 4, generator=gen), torch.randn(10, 4, generator=gen)
    out = reference.gather_visible_torch(tokens, pos, keep_ids)
    for b in range(2):
        for j in range(3):
            assert torch.equal(out[b, j], tokens[b, keep_ids[b, j]] + pos[keep_ids[b, j]])
    visible, mask_token = torch.randn(2, 3, 4, generator=gen), torch.randn(4, generator=gen)
    full = reference.unshuffle_with_mask_tokens_torch(visible, mask_token, restore_ids, pos)
    for b in range(2):
        for n in range(10):
            src = restore_ids[b, n]
            assert torch.equal(full[b, n], (visible[b, src] if src < 3 else mask_token) + pos[n])
    # gathering the unshuffled sequence at the keep indices gives the visible tokens back (+ pos)
    torch.testing.assert_close(torch.gather(full - pos, 1, keep_ids.unsqueeze(-1).expand(-1, -1, 4)), visible)


def test_norm_pix_loss_against_a_loop():
    gen = torch.Generator().manual_seed(2)
    imgs, pred = torch.randn(2, 3, 8, 8, generator=gen), torch.randn(2, 4, 48, generator=gen)
    mask = torch.tensor([[1.0, 0, 1, 1], [0, 1, 0, 0]])
    for norm_pix in (True, False):
        total = torch.zeros((), dtype=torch.float64)
        for b in range(2):
            for n in range(4):
                hi, wi = divmod(n, 2)
                target = imgs[b, :, hi * 4 : hi * 4 + 4, wi * 4 : wi * 4 + 4].permute(1, 2, 0).reshape(-1).double()
                if norm_pix:
                    target = (target - target.mean()) / (target.var(unbiased=True) + 1e-6).sqrt()
                total += mask[b, n] * ((pred[b, n].double() - target) ** 2).mean()
        want = (total / mask.sum()).float()
        got = reference.norm_pix_masked_mse_torch(imgs, pred, mask, 4, norm_pix=norm_pix)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
