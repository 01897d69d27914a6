"""``torch.autograd.Function`` wrappers of the fused kernels, with the shape checks the kernels cannot do.

Preconditions the kernels rely on and do not check (checking would cost a device-host synchronisation): index
values in range, ``keep_ids`` distinct within each row, ``restore_ids`` a permutation of ``0..L-1`` within each row
(what MAE's argsort masking produces). Importing this module imports triton.
"""

from __future__ import annotations

import torch

from . import triton_loss, triton_masking


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_ids(ids: torch.Tensor, name: str, shape: tuple[int, int], device: torch.device) -> None:
    _check(ids.dim() == 2 and tuple(ids.shape) == shape, f"{name} must have shape {shape}, got {tuple(ids.shape)}")
    _check(not ids.is_floating_point() and not ids.is_complex(), f"{name} must be integer, got {ids.dtype}")
    _check(ids.device == device, f"{name} is on {ids.device}, the tokens on {device}")


class GatherVisible(torch.autograd.Function):
    """Visible tokens plus their position embeddings in one pass; backward scatters, no atomics."""

    @staticmethod
    def forward(ctx, tokens: torch.Tensor, pos_embed: torch.Tensor, keep_ids: torch.Tensor) -> torch.Tensor:
        _check(tokens.dim() == 3, f"tokens must be (B, L, D), got {tuple(tokens.shape)}")
        batch, length, width = tokens.shape
        _check(tuple(pos_embed.shape) == (length, width), f"pos_embed must be ({length}, {width})")
        _check(pos_embed.device == tokens.device, "pos_embed and tokens must be on one device")
        _check(keep_ids.dim() == 2 and keep_ids.shape[1] <= length, f"keep_ids must be (B, K) with K <= {length}")
        _check_ids(keep_ids, "keep_ids", (batch, keep_ids.shape[1]), tokens.device)
        ctx.save_for_backward(keep_ids)
        ctx.meta = (length, tokens.dtype, pos_embed.dtype)
        return triton_masking.gather_visible_fwd(tokens, pos_embed, keep_ids)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (keep_ids,) = ctx.saved_tensors
        length, tokens_dtype, pos_dtype = ctx.meta
        need_tokens, need_pos, _ = ctx.needs_input_grad
        grad_tokens, grad_pos = triton_masking.gather_visible_bwd(
            grad_out,
            keep_ids,
            length,
            tokens_dtype if need_tokens else None,
            pos_dtype if need_pos else None,
        )
        return grad_tokens, grad_pos, None


class UnshuffleWithMaskTokens(torch.autograd.Function):
    """Decoder input in one pass: visible tokens or the mask token per restore index, plus position embeddings."""

    @staticmethod
    def forward(
        ctx, visible: torch.Tensor, mask_token: torch.Tensor, restore_ids: torch.Tensor, pos_embed: torch.Tensor
    ) -> torch.Tensor:
        _check(visible.dim() == 3, f"visible must be (B, L_keep, D), got {tuple(visible.shape)}")
        batch, keep, width = visible.shape
        _check(restore_ids.dim() == 2 and restore_ids.shape[1] >= keep, f"restore_ids must be (B, L) with L >= {keep}")
        length = restore_ids.shape[1]
        _check_ids(restore_ids, "restore_ids", (batch, length), visible.device)
        _check(tuple(mask_token.shape) == (width,), f"mask_token must be ({width},), got {tuple(mask_token.shape)}")
        _check(tuple(pos_embed.shape) == (length, width), f"pos_embed must be ({length}, {width})")
        _check(mask_token.device == pos_embed.device == visible.device, "all inputs must be on one device")
        ctx.save_for_backward(restore_ids)
        ctx.meta = (keep, visible.dtype, mask_token.dtype, pos_embed.dtype)
        return triton_masking.unshuffle_fwd(visible, mask_token, restore_ids, pos_embed)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (restore_ids,) = ctx.saved_tensors
        keep, visible_dtype, mask_dtype, pos_dtype = ctx.meta
        need_visible, need_mask, _, need_pos = ctx.needs_input_grad
        grads = triton_masking.unshuffle_bwd(
            grad_out,
            restore_ids,
            keep,
            visible_dtype if need_visible else None,
            mask_dtype if need_mask else None,
            pos_dtype if need_pos else None,
        )
        return grads[0], grads[1], None, grads[2]


def check_loss_shapes(imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch: int, norm_pix: bool) -> None:
    """Raise ``ValueError`` unless images, predictions and mask fit together for patch size ``patch``."""
    _check(imgs.dim() == 4, f"imgs must be (B, C, H, W), got {tuple(imgs.shape)}")
    batch, chans, height, width = imgs.shape
    _check(patch > 0 and height % patch == 0 and width % patch == 0, f"{height}x{width} images, patch {patch}")
    length, row = (height // patch) * (width // patch), patch * patch * chans
    _check(
        tuple(pred.shape) == (batch, length, row), f"pred must be ({batch}, {length}, {row}), got {tuple(pred.shape)}"
    )
    _check(tuple(mask.shape) == (batch, length), f"mask must be ({batch}, {length}), got {tuple(mask.shape)}")
    _check(not norm_pix or row > 1, "norm_pix needs at least 2 values per patch (unbiased variance)")
    _check(imgs.device == pred.device == mask.device, "imgs, pred and mask must be on one device")


class NormPixMaskedMSE(torch.autograd.Function):
    """Masked (norm-pix) MSE with the target patchified on the fly, forward and backward, fp32 accumulation."""

    @staticmethod
    def forward(
        ctx, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch: int, norm_pix: bool, eps: float
    ) -> torch.Tensor:
        check_loss_shapes(imgs, pred, mask, patch, norm_pix)
        weights = mask.to(torch.float32)
        per_patch = triton_loss.norm_pix_loss_fwd(imgs, pred, weights, patch, norm_pix, eps)
        total = weights.sum()
        ctx.save_for_backward(imgs, pred, weights, total)
        ctx.meta = (patch, norm_pix, eps)
        return per_patch.sum() / total

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        imgs, pred, weights, total = ctx.saved_tensors
        patch, norm_pix, eps = ctx.meta
        grad_pred = None
        if ctx.needs_input_grad[1]:
            coef = (grad_loss.to(torch.float32) / total).reshape(1)
            grad_pred = triton_loss.norm_pix_loss_bwd(imgs, pred, weights, coef, patch, norm_pix, eps)
        return None, grad_pred, None, None, None, None
