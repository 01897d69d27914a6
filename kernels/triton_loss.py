"""Triton kernels for the MAE norm-pix masked MSE: the target patch is read straight from the images.

One program per patch (b, l). It loads the patch's p·p·C pixels from the (B, C, H, W) images in their storage dtype,
in the (p, p, C) order of :func:`~.reference.patchify`, and the matching prediction row, both into fp32 registers;
normalises the target by its own mean and unbiased variance when asked, and writes the patch's squared error times
its mask weight (forward) or the gradient row for the prediction (backward, which recomputes the target instead of
saving it). Patches with mask weight 0 load nothing. The patchified target never exists in memory.

Importing this module imports triton; the dispatcher imports it only once a fused op is asked for.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .geometry import next_power_of_2, num_warps_for
from .triton_common import to_storage


@triton.jit
def _patch_error(
    img_ptr, pred_ptr, row, weight,
    L, n_w, P, eps,
    s_ib, s_ic, s_ih, s_iw, s_pb, s_pl, s_pk,
    NORM: tl.constexpr, PATCH: tl.constexpr, CHANS: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """Prediction minus (normalised) target for patch ``row`` = b * L + l, fp32, zero outside the patch."""
    b = row // L
    patch = row % L
    top = (patch // n_w) * PATCH
    left = (patch % n_w) * PATCH
    k = tl.arange(0, BLOCK_P)
    valid = tl.where(weight != 0, k < P, False)  # masked-out patches load nothing
    pi = k // (PATCH * CHANS)
    qi = (k // CHANS) % PATCH
    c = k % CHANS
    img_off = b * s_ib + c * s_ic + (top + pi) * s_ih + (left + qi) * s_iw
    t = tl.load(img_ptr + img_off, mask=valid, other=0.0).to(tl.float32)
    x = tl.load(pred_ptr + b * s_pb + patch * s_pl + k * s_pk, mask=valid, other=0.0).to(tl.float32)
    if NORM:
        mean = tl.sum(t, axis=0) / P
        centred = tl.where(valid, t - mean, 0.0)
        var = tl.sum(centred * centred, axis=0) / (P - 1)  # unbiased, as torch.var
        t = centred / tl.sqrt(var + eps)
    return tl.where(valid, x - t, 0.0)


@triton.jit
def _loss_fwd_kernel(
    img_ptr, pred_ptr, w_ptr, out_ptr,
    L, n_w, P, eps,
    s_ib, s_ic, s_ih, s_iw, s_pb, s_pl, s_pk, s_wb, s_wl,
    NORM: tl.constexpr, PATCH: tl.constexpr, CHANS: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    weight = tl.load(w_ptr + (row // L) * s_wb + (row % L) * s_wl)
    err = _patch_error(
        img_ptr, pred_ptr, row, weight, L, n_w, P, eps,
        s_ib, s_ic, s_ih, s_iw, s_pb, s_pl, s_pk,
        NORM, PATCH, CHANS, BLOCK_P,
    )  # fmt: skip
    tl.store(out_ptr + row, tl.sum(err * err, axis=0) / P * weight)


@triton.jit
def _loss_bwd_kernel(
    img_ptr, pred_ptr, w_ptr, coef_ptr, grad_ptr,
    L, n_w, P, eps,
    s_ib, s_ic, s_ih, s_iw, s_pb, s_pl, s_pk, s_wb, s_wl,
    NORM: tl.constexpr, PATCH: tl.constexpr, CHANS: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    weight = tl.load(w_ptr + (row // L) * s_wb + (row % L) * s_wl)
    err = _patch_error(
        img_ptr, pred_ptr, row, weight, L, n_w, P, eps,
        s_ib, s_ic, s_ih, s_iw, s_pb, s_pl, s_pk,
        NORM, PATCH, CHANS, BLOCK_P,
    )  # fmt: skip
    scale = 2.0 * tl.load(coef_ptr) * weight / P  # d(loss)/d(pred) = 2 (pred - target) w / (P · Σw) · grad_loss
    k = tl.arange(0, BLOCK_P)
    tl.store(grad_ptr + row * P + k, to_storage(err * scale, grad_ptr.dtype.element_ty), mask=k < P)


def _launch_args(imgs: torch.Tensor, pred: torch.Tensor, weights: torch.Tensor, patch: int, norm_pix: bool, eps: float):
    chans, width = imgs.shape[1], imgs.shape[3]
    length, row = pred.shape[1], pred.shape[2]
    block = max(16, next_power_of_2(row))
    args = (length, width // patch, row, eps, *imgs.stride(), *pred.stride(), *weights.stride())
    meta = {"NORM": norm_pix, "PATCH": patch, "CHANS": chans, "BLOCK_P": block, "num_warps": num_warps_for(block)}
    return args, meta


def norm_pix_loss_fwd(
    imgs: torch.Tensor,
    pred: torch.Tensor,
    weights: torch.Tensor,
    patch: int,
    norm_pix: bool,
    eps: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-patch (B, L) fp32: mean squared error of each patch times its mask weight (0 for unmasked patches)."""
    batch, length = pred.shape[:2]
    if out is None:
        out = torch.empty(batch, length, dtype=torch.float32, device=pred.device)
    if out.numel():
        args, meta = _launch_args(imgs, pred, weights, patch, norm_pix, eps)
        _loss_fwd_kernel[(batch * length,)](imgs, pred, weights, out, *args, **meta)
    return out


def norm_pix_loss_bwd(
    imgs: torch.Tensor,
    pred: torch.Tensor,
    weights: torch.Tensor,
    coef: torch.Tensor,
    patch: int,
    norm_pix: bool,
    eps: float,
    grad_pred: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradient wrt ``pred`` (contiguous, ``pred.dtype``) of Σ per-patch loss × ``coef``; ``coef`` is a one-element
    fp32 tensor (grad of the loss / Σ weights), read by the kernel so the host never synchronises."""
    if grad_pred is None:
        grad_pred = torch.empty(pred.shape, dtype=pred.dtype, device=pred.device)
    if grad_pred.numel():
        args, meta = _launch_args(imgs, pred, weights, patch, norm_pix, eps)
        _loss_bwd_kernel[(pred.shape[0] * pred.shape[1],)](imgs, pred, weights, coef, grad_pred, *args, **meta)
    return grad_pred
