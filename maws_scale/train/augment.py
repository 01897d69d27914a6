"""Batch augmentations of fine-tuning, on the device: random erasing, mixup / cutmix with label smoothing.

Semantics of the DeiT / MAE recipe (timm's ``RandomErasing(mode="pixel")`` and ``Mixup(mode="batch")``):

- random erasing: with probability ``p`` per image, one box of 2 %–33 % of the area and aspect ratio in [0.3, 3.3]
  (log-uniform) is replaced by per-pixel N(0, 1) noise in normalized pixel space (up to 10 tries to fit the box);
- mixup / cutmix: with probability ``mix_prob`` the micro-batch is mixed with itself reversed; cutmix is chosen with
  probability ``switch_prob`` when both are on. λ ~ Beta(α, α); cutmix pastes a box of area ``(1 - λ) H W``
  (centre uniform, clipped to the image) and then uses the λ of the area actually kept;
- targets: label-smoothed one-hots (``1 - ε + ε/K`` on the class, ``ε/K`` elsewhere), mixed with the same λ, so every
  row sums to 1.

Random numbers come from ``generator`` where one is given, else torch's global CPU stream (the loop seeds it per
data-parallel rank and saves it in checkpoints); λ always comes from the global stream (``Beta.sample``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def smoothed_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """(B,) int labels → (B, K) float targets: ``1 - ε + ε/K`` on the label, ``ε/K`` elsewhere."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return targets.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)


def cutmix_box(height: int, width: int, lam: float, generator: torch.Generator | None = None) -> tuple[int, ...]:
    """The cutmix box (top, bottom, left, right) for mixing weight ``lam``: sides ``sqrt(1 - lam)`` of the image's,
    centre uniform over the image, clipped at its borders (timm ``rand_bbox``)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(0, height, (1,), generator=generator))
    cx = int(torch.randint(0, width, (1,), generator=generator))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right


@dataclass(frozen=True)
class Mixup:
    """Mixup / cutmix of a micro-batch with its reverse, and the matching soft targets."""

    num_classes: int
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    smoothing: float = 0.0

    @property
    def active(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.mix_prob > 0

    def draw(self, generator: torch.Generator | None = None) -> tuple[float, bool]:
        """(λ, use_cutmix) for one batch; λ = 1 when the batch is left unmixed."""
        if not self.active or float(torch.rand((), generator=generator)) >= self.mix_prob:
            return 1.0, False
        use_cutmix = self.cutmix > 0 and (
            self.mixup == 0 or float(torch.rand((), generator=generator)) < self.switch_prob
        )
        alpha = torch.tensor(self.cutmix if use_cutmix else self.mixup, dtype=torch.float64)
        return float(torch.distributions.Beta(alpha, alpha).sample()), use_cutmix

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) images and (B,) labels → mixed images and (B, K) soft targets (rows sum to 1)."""
        lam, use_cutmix = self.draw(generator)
        if lam < 1.0:
            flipped = images.flip(0)
            if use_cutmix:
                height, width = images.shape[-2:]
                top, bottom, left, right = cutmix_box(height, width, lam, generator)
                images = images.clone()
                images[..., top:bottom, left:right] = flipped[..., top:bottom, left:right]
                lam = 1.0 - (bottom - top) * (right - left) / (height * width)
            else:
                images = images * lam + flipped * (1.0 - lam)
        targets = smoothed_one_hot(labels, self.num_classes, self.smoothing)
        if lam < 1.0:
            targets = targets * lam + targets.flip(0) * (1.0 - lam)
        return images, targets


def random_erasing(
    images: torch.Tensor,
    prob: float,
    generator: torch.Generator | None = None,
    area: tuple[float, float] = (0.02, 1 / 3),
    log_ratio: tuple[float, float] = (math.log(0.3), math.log(1 / 0.3)),
    attempts: int = 10,
) -> torch.Tensor:
    """Erase one box per image with probability ``prob``: per-pixel N(0, 1) noise (normalized images), in place."""
    if prob <= 0:
        return images
    batch, channels, height, width = images.shape
    for i in range(batch):
        if float(torch.rand((), generator=generator)) >= prob:
            continue
        for _ in range(attempts):
            u = torch.rand(2, generator=generator, dtype=torch.float64)
            target = (area[0] + (area[1] - area[0]) * float(u[0])) * height * width
            ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * float(u[1]))
            h, w = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < h < height and 0 < w < width:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                noise = torch.randn((channels, h, w), generator=generator, dtype=torch.float32)
                images[i, :, top : top + h, left : left + w] = noise.to(images)
                break
    return images
