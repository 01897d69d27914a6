"""CLIP-style two-tower model: a ViT image tower (or an MAE around it, for MAE-CLIP), a text tower, linear
projections to a shared embedding and a learnable temperature.

Names: ``visual.*`` (the image tower in timm naming, so ``visual.``-stripped keys are an encoder checkpoint),
``text.*``, ``image_proj``, ``text_proj``, ``logit_scale`` (shape (1,), init log(1/0.07); its exponent is clamped
at 100 in forward). ``lock_image=True`` (LiT) freezes ``visual.*`` and keeps the image tower in eval mode.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from maws_scale.models.mae import MaskedAutoencoder
from maws_scale.models.text import TextTransformer
from maws_scale.models.vit import VisionTransformer

INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = 100.0


class CLIPOutput(NamedTuple):
    """L2-normalised embeddings (B, E), the temperature exp(logit_scale) ≤ 100, and the MAE loss (MAE-CLIP).
    A named tuple: DeepSpeed's ZeRO-3 hooks walk (named) tuples of tensors, not dataclasses."""

    image: torch.Tensor
    text: torch.Tensor
    scale: torch.Tensor
    mae_loss: torch.Tensor | None = None


class CLIP(nn.Module):
    """``forward(images, tokens, mask_ratio=0, noise=None, mask_clip_input=True) -> CLIPOutput``.

    With an MAE image tower and ``mask_ratio > 0`` one masked forward feeds both the reconstruction loss and —
    when ``mask_clip_input`` — the image embedding (pooled over the visible tokens); otherwise the embedding comes
    from a second, unmasked forward.
    """

    def __init__(
        self, visual: VisionTransformer, text: TextTransformer, embed_dim: int, lock_image: bool = False
    ) -> None:
        super().__init__()
        self.visual = visual
        self.text = text
        self.embed_dim = embed_dim
        self.image_proj = nn.Linear(visual.embed_dim, embed_dim, bias=False)
        self.text_proj = nn.Linear(text.width, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.full((1,), INIT_LOGIT_SCALE))  # 1-D: DeepSpeed broadcasts bytes views
        self.lock_image = lock_image
        self.init_weights()
        if lock_image:
            self.visual.requires_grad_(False)

    def init_weights(self) -> None:
        """Projections normal(width^-0.5) as in CLIP; temperature log(1/0.07). The towers init themselves."""
        nn.init.normal_(self.image_proj.weight, std=self.visual.embed_dim**-0.5)
        nn.init.normal_(self.text_proj.weight, std=self.text.width**-0.5)
        with torch.no_grad():
            self.logit_scale.fill_(INIT_LOGIT_SCALE)

    def train(self, mode: bool = True) -> CLIP:
        super().train(mode)
        if self.lock_image:
            self.visual.eval()  # a locked tower keeps its inference behaviour (no drop-path)
        return self

    # ----- towers ------------------------------------------------------------------------------------------------
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled image-tower features (B, D) of the unmasked images."""
        return self.visual.pool(self.visual.forward_features(images))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (B, E)."""
        return F.normalize(self.image_proj(self.image_features(images)), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings (B, E)."""
        return F.normalize(self.text_proj(self.text(tokens)), dim=-1)

    def forward(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor,
        mask_ratio: float = 0.0,
        noise: torch.Tensor | None = None,
        mask_clip_input: bool = True,
    ) -> CLIPOutput:
        mae_loss = None
        if mask_ratio > 0:
            if not isinstance(self.visual, MaskedAutoencoder):
                raise TypeError("mask_ratio > 0 needs an MAE image tower (stage mae_clip)")
            visual = self.visual
            latent, mask, restore = visual.forward_encoder(images, mask_ratio, noise=noise)
            mae_loss = visual.forward_loss(images, visual.forward_decoder(latent, restore), mask)
            pooled = visual.pool(latent) if mask_clip_input else self.image_features(images)
        elif self.lock_image:
            with torch.no_grad():
                pooled = self.image_features(images)
        else:
            pooled = self.image_features(images)
        image = F.normalize(self.image_proj(pooled), dim=-1)
        text = self.encode_text(tokens)
        scale = self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        return CLIPOutput(image, text, scale, mae_loss)

    # ----- training helpers --------------------------------------------------------------------------------------
    @property
    def blocks(self) -> nn.ModuleList:
        """The larger tower's blocks: what ZeRO-3 bucket sizes are measured on (``parallel/ds_config.BlockInfo``)."""

        def size(blocks: nn.ModuleList) -> int:
            return sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in blocks[0].parameters())

        image, text = self.visual.blocks, self.text.blocks
        return text if len(text) and size(text) > size(image) else image

    def set_recompute(self, enable: bool | str = True) -> None:
        self.visual.set_recompute(enable)
        self.text.set_recompute(enable)

    def no_weight_decay(self) -> set[str]:
        names = {f"visual.{n}" for n in self.visual.no_weight_decay()}
        names |= {f"text.{n}" for n in self.text.no_weight_decay()}
        return names | {"logit_scale"}
