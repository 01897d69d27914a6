"""Torch reference implementations of the MAE masking and loss ops (semantics of facebookresearch/mae models_mae.py).

These are the ground truth the fused Triton kernels are tested against, and the path used wherever Triton or CUDA is
absent. Shapes: B batch, L patches, L_keep visible patches, D width.
"""

from __future__ import annotations

import math

import torch


def gather_visible_torch(tokens: torch.Tensor, pos_embed: torch.Tensor, keep_ids: torch.Tensor) -> torch.Tensor:
    """(B, L, D) patch tokens + (L, D) position embeddings, gathered at (B, L_keep) keep_ids → (B, L_keep, D)."""
    x = tokens + pos_embed.unsqueeze(0).to(tokens.dtype)
    return torch.gather(x, 1, keep_ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def unshuffle_with_mask_tokens_torch(
    visible: torch.Tensor, mask_token: torch.Tensor, restore_ids: torch.Tensor, pos_embed: torch.Tensor
) -> torch.Tensor:
    """Visible (B, L_keep, D) + mask token (D,) placed at the masked slots, unshuffled by (B, L) restore_ids, plus
    (L, D) position embeddings → (B, L, D)."""
    batch, keep, width = visible.shape
    length = restore_ids.shape[1]
    masks = mask_token.reshape(1, 1, width).to(visible.dtype).expand(batch, length - keep, width)
    x = torch.cat([visible, masks], dim=1)
    x = torch.gather(x, 1, restore_ids.unsqueeze(-1).expand(-1, -1, width))
    return x + pos_embed.unsqueeze(0).to(x.dtype)


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) → (B, L, p*p*C), patch pixels ordered (p, p, C) as in MAE."""
    batch, chans, height, width = imgs.shape
    h, w = height // patch_size, width // patch_size
    x = imgs.reshape(batch, chans, h, patch_size, w, patch_size)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(batch, h * w, patch_size * patch_size * chans)


def unpatchify(patches: torch.Tensor, patch_size: int, chans: int = 3) -> torch.Tensor:
    """(B, L, p*p*C) → (B, C, H, W), the inverse of :func:`patchify` for square images."""
    batch, length, _ = patches.shape
    side = math.isqrt(length)
    x = patches.reshape(batch, side, side, patch_size, patch_size, chans)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(batch, chans, side * patch_size, side * patch_size)


def norm_pix_masked_mse_torch(
    imgs: torch.Tensor,
    pred: torch.Tensor,
    mask: torch.Tensor,
    patch_size: int,
    norm_pix: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """MSE between predictions (B, L, p*p*C) and the patchified images, each target patch normalised by its own
    mean/var when ``norm_pix``; averaged over masked patches only (mask: 1 = masked). Computed in fp32."""
    target = patchify(imgs.float(), patch_size)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps) ** 0.5
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)
    mask = mask.float()
    return (per_patch * mask).sum() / mask.sum()
