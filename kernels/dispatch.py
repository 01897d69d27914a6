"""Choose between the fused Triton kernels and the torch references."""

from __future__ import annotations

from typing import Literal

import torch

from . import reference

Impl = Literal["auto", "triton", "torch"]


def triton_available(device: torch.device | None = None) -> bool:
    """True when the fused kernels can run on ``device`` (CUDA + Triton, or the Triton CPU interpreter)."""
    return False


def _use_triton(impl: Impl, tensor: torch.Tensor) -> bool:
    if impl == "torch":
        return False
    available = triton_available(tensor.device)
    if impl == "triton" and not available:
        raise RuntimeError(
            "impl='triton' asked for, but the fused kernels cannot run here (need triton and a CUDA device, "
            "or TRITON_INTERPRET=1 for the CPU interpreter); use impl='auto' or 'torch'"
        )
    return available


def gather_visible(tokens: torch.Tensor, pos_embed: torch.Tensor, keep_ids: torch.Tensor, impl: Impl = "auto"):
    """Visible tokens with position embeddings added: (B, L, D), (L, D), (B, L_keep) → (B, L_keep, D)."""
    _use_triton(impl, tokens)
    return reference.gather_visible_torch(tokens, pos_embed, keep_ids)


def unshuffle_with_mask_tokens(
    visible: torch.Tensor,
    mask_token: torch.Tensor,
    restore_ids: torch.Tensor,
    pos_embed: torch.Tensor,
    impl: Impl = "auto",
):
    """Full decoder sequence from visible tokens, the mask token and restore indices: → (B, L, D)."""
    _use_triton(impl, visible)
    return reference.unshuffle_with_mask_tokens_torch(visible, mask_token, restore_ids, pos_embed)


def norm_pix_masked_mse(
    imgs: torch.Tensor,
    pred: torch.Tensor,
    mask: torch.Tensor,
    patch_size: int,
    norm_pix: bool = True,
    eps: float = 1e-6,
    impl: Impl = "auto",
):
    """MAE loss: (normalised-)pixel MSE over masked patches only (mask: 1 = masked), fp32 accumulation."""
    _use_triton(impl, pred)
    return reference.norm_pix_masked_mse_torch(imgs, pred, mask, patch_size, norm_pix=norm_pix, eps=eps)
