"""Mixup / cutmix / label smoothing / random erasing against independent computations (timm's semantics)."""

from __future__ import annotations

import pytest
import torch

from maws_scale.train.augment import Mixup, cutmix_box, random_erasing, smoothed_one_hot


def test_label_smoothing_puts_eps_over_k_everywhere_and_the_rest_on_the_label():
    targets = smoothed_one_hot(torch.tensor([2, 0]), 4, smoothing=0.1)
    expected = torch.tensor([[0.025, 0.025, 0.925, 0.025], [0.925, 0.025, 0.025, 0.025]])
    torch.testing.assert_close(targets, expected)


def _images(batch: int = 6, side: int = 10) -> torch.Tensor:
    # every image a distinct constant, so each output pixel tells which source it came from
    return torch.arange(batch, dtype=torch.float32).view(batch, 1, 1, 1).expand(batch, 3, side, side).clone()


@pytest.mark.parametrize("seed", range(8))
def test_cutmix_box_area_matches_the_target_lambda(seed):
    torch.manual_seed(seed)
    mix = Mixup(5, mixup=0.0, cutmix=1.0, smoothing=0.1)
    images, labels = _images(), torch.tensor([0, 1, 2, 3, 4, 0])
    mixed, targets = mix(images, labels)
    from_partner = (mixed != images).float()[:, 0]  # pixels pasted from the reversed batch (all images differ)
    kept = 1.0 - from_partner.mean(dim=(1, 2))  # per image: fraction of its own pixels
    assert torch.allclose(kept, kept[0].expand_as(kept))  # one box for the whole batch
    lam = float(kept[0])
    own = smoothed_one_hot(labels, 5, 0.1)
    torch.testing.assert_close(targets, lam * own + (1 - lam) * own.flip(0))
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(6))


def test_cutmix_box_follows_sqrt_one_minus_lambda():
    torch.manual_seed(0)
    top, bottom, left, right = cutmix_box(100, 100, 0.64, generator=torch.Generator().manual_seed(3))
    # sides 0.6 * 100 when the centre leaves room; clipped otherwise, never larger
    assert 0 < bottom - top <= 60 and 0 < right - left <= 60


def test_mixup_blends_images_and_targets_with_one_lambda():
    torch.manual_seed(1)
    mix = Mixup(3, mixup=0.8, cutmix=0.0, smoothing=0.0)
    images = torch.randn(4, 3, 8, 8)
    labels = torch.tensor([0, 1, 2, 1])
    mixed, targets = mix(images, labels)
    # recover λ from one pixel and check every pixel and target with it
    lam = ((mixed - images.flip(0)) / (images - images.flip(0)))[0, 0, 0, 0].item()
    assert 0.0 < lam < 1.0
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0))
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    torch.testing.assert_close(targets, lam * one_hot + (1 - lam) * one_hot.flip(0))
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(4))


def test_switching_picks_cutmix_or_mixup_per_batch_at_switch_prob():
    torch.manual_seed(0)
    mix = Mixup(3, mixup=0.8, cutmix=1.0, switch_prob=0.5)
    picks = [mix.draw()[1] for _ in range(2000)]
    assert sum(picks) / len(picks) == pytest.approx(0.5, abs=0.04)


def test_mix_prob_zero_or_both_alphas_zero_leave_the_batch_alone():
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 1])
    for mix in (Mixup(3, mixup=0.8, cutmix=1.0, mix_prob=0.0), Mixup(3)):
        out, targets = mix(images, labels)
        assert torch.equal(out, images)
        torch.testing.assert_close(targets, torch.nn.functional.one_hot(labels, 3).float())


def test_lambda_follows_the_beta_law():
    torch.manual_seed(0)
    mix = Mixup(3, mixup=0.8)
    lams = torch.tensor([mix.draw()[0] for _ in range(4000)])
    assert lams.mean().item() == pytest.approx(0.5, abs=0.02)  # Beta(a, a) has mean 1/2
    var = 0.8 * 0.8 / ((1.6**2) * (1.6 + 1))  # ab / ((a+b)^2 (a+b+1))
    assert lams.var().item() == pytest.approx(var, rel=0.1)


def test_random_erasing_erases_one_box_within_the_area_bounds():
    gen = torch.Generator().manual_seed(0)
    images = torch.full((200, 3, 32, 32), 7.0)
    out = random_erasing(images.clone(), prob=0.5, generator=gen)
    erased = (out != 7.0).any(dim=1)  # (B, H, W) pixels replaced by noise
    counts = erased.flatten(1).sum(dim=1)
    hit = counts > 0
    assert hit.float().mean().item() == pytest.approx(0.5, abs=0.12)
    fractions = counts[hit].float() / (32 * 32)
    assert fractions.min() >= 0.015 and fractions.max() <= 0.36  # 2 %-33 % of the area, after rounding the sides
    for mask in erased[hit]:  # one axis-aligned box: its bounding box is fully erased
        rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
        assert mask.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert torch.equal(random_erasing(images.clone(), prob=0.0), images)
