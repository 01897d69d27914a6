"""Fused norm-pix masked MSE vs the torch reference: loss value and gradient wrt the predictions.

Needs the fused kernels to run: on a CPU machine under ``TRITON_INTERPRET=1`` (``test_interpreter.py`` runs this
module in such a subprocess), on a GPU machine directly.
"""

from __future__ import annotations

import pytest
import torch
from maws_scale.kernels import norm_pix_masked_mse, triton_available
from maws_scale.kernels.masking import random_masking_ids

if not triton_available("cuda" if torch.cuda.is_available() else "cpu"):
    raise RuntimeError("the fused kernels cannot run here: run via tests/kernels/test_interpreter.py")

from maws_scale.kernels import triton_loss

# (B, C, H, W, p): the ViT-L/16 (p²C = 768) and ViT-2B/14 (588) patch rows on few patches, L = 49 and 196 (not powers
# of two), non-square images, one channel (the Fashion-MNIST demo), batch 1.
SHAPES = [(1, 3, 28, 28, 4), (1, 3, 32, 32, 16), (2, 3, 42, 42, 14), (2, 3, 28, 56, 7), (2, 1, 28, 28, 4)]
BIG = (1, 3, 56, 56, 4)
F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


def inputs(shape, img_dtype, pred_dtype, device, gen, mask_ratio=0.75):
    batch, chans, height, width, patch = shape
    length = (height // patch) * (width // patch)
    imgs = (torch.randn(batch, chans, height, width, generator=gen) * 2 + 0.5).to(device, img_dtype)
    pred = torch.randn(batch, length, patch * patch * chans, generator=gen).to(device, pred_dtype)
    _, _, mask = random_masking_ids(batch, length, int(length * (1 - mask_ratio)), device, gen)
    return imgs, pred.requires_grad_(True), mask


def loss_and_grad(impl, imgs, pred, mask, patch, norm_pix):
    pred.grad = None
    loss = norm_pix_masked_mse(imgs, pred, mask, patch, norm_pix=norm_pix, impl=impl)
    loss.backward()
    return loss.detach(), pred.grad


def check(imgs, pred, mask, patch, norm_pix, grad_rtol=1e-4):
    (loss, grad), (want_loss, want_grad) = (
        loss_and_grad(i, imgs, pred, mask, patch, norm_pix) for i in ("triton", "torch")
    )
    assert loss.dtype == torch.float32 and grad.dtype == pred.dtype and grad.shape == pred.shape
    torch.testing.assert_close(loss, want_loss, rtol=2e-5, atol=1e-6)
    scale = want_grad.float().abs().max().item()
    torch.testing.assert_close(grad.float(), want_grad.float(), rtol=grad_rtol, atol=grad_rtol * scale)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("norm_pix", [True, False], ids=["norm-pix", "raw-pix"])
def test_fp32_matches_reference(shape, norm_pix, device, gen, poisoned_alloc):
    imgs, pred, mask = inputs(shape, F32, F32, device, gen)
    check(imgs, pred, mask, shape[-1], norm_pix)


def test_196_patches(device, gen, poisoned_alloc):
    imgs, pred, mask = inputs(BIG, F32, F32, device, gen)
    check(imgs, pred, mask, BIG[-1], norm_pix=True)


@pytest.mark.parametrize("shape", SHAPES[:3], ids=str)
@pytest.mark.parametrize(("img_dtype", "pred_dtype"), [(BF16, BF16), (F16, BF16), (BF16, F32)], ids=str)
def test_low_precision_inputs(shape, img_dtype, pred_dtype, device, gen, poisoned_alloc):
    """Images read in their storage dtype, fp32 math; the bf16 gradient may differ from the reference's by one
    rounding of nearly equal fp32 values (relative 2⁻⁸)."""
    imgs, pred, mask = inputs(shape, img_dtype, pred_dtype, device, gen)
    check(imgs, pred, mask, shape[-1], norm_pix=True, grad_rtol=8e-3 if pred_dtype == BF16 else 1e-4)


def test_per_patch_and_gradient_buffers_are_fully_written(device, gen):
    shape = SHAPES[2]
    imgs, pred, mask = inputs(shape, BF16, BF16, device, gen)
    weights = mask.float()
    per_patch = torch.full(mask.shape, float("nan"), device=device)
    triton_loss.norm_pix_loss_fwd(imgs, pred.detach(), weights, shape[-1], True, 1e-6, out=per_patch)
    grad = torch.full(pred.shape, float("nan"), dtype=BF16, device=device)
    coef = torch.ones(1, device=device)
    triton_loss.norm_pix_loss_bwd(imgs, pred.detach(), weights, coef, shape[-1], True, 1e-6, grad_pred=grad)
    assert not per_patch.isnan().any() and not grad.isnan().any()
    assert (per_patch[mask == 0] == 0).all() and (per_patch[mask == 1] > 0).all()
    assert (grad[mask == 0] == 0).all()


@pytest.mark.parametrize("kind", ["weights", "bool", "int", "all-ones"])
def test_mask_forms(kind, device, gen, poisoned_alloc):
    """The mask is a per-patch weight, as in the reference: bool/int masks, fractional weights with zeros."""
    imgs, pred, mask = inputs(SHAPES[0], F32, F32, device, gen)
    if kind == "weights":
        mask = torch.rand(mask.shape, generator=gen).to(device) * (mask > 0)
    elif kind == "bool":
        mask = mask > 0
    elif kind == "int":
        mask = mask.long()
    else:
        mask = torch.ones_like(mask)
    check(imgs, pred, mask, SHAPES[0][-1], norm_pix=True)


def test_empty_mask_gives_nan_like_the_reference(device, gen, poisoned_alloc):
    imgs, pred, mask = inputs(SHAPES[0], F32, F32, device, gen)
    loss, grad = loss_and_grad("triton", imgs, pred, torch.zeros_like(mask), 4, True)
    want_loss, want_grad = loss_and_grad("torch", imgs, pred, torch.zeros_like(mask), 4, True)
    assert loss.isnan() and want_loss.isnan()
    assert grad.isnan().all() and want_grad.isnan().all()


def test_unmasked_patches_are_not_read(device, gen):
    """Documented difference: a non-finite prediction on a visible patch does not reach the fused loss."""
    imgs, pred, mask = inputs(SHAPES[0], F32, F32, device, gen)
    with torch.no_grad():
        clean = norm_pix_masked_mse(imgs, pred, mask, 4, impl="triton")
        pred[mask == 0] = float("nan")
        assert torch.equal(norm_pix_masked_mse(imgs, pred, mask, 4, impl="triton"), clean)
        assert norm_pix_masked_mse(imgs, pred, mask, 4, impl="torch").isnan()


def test_gradient_scales_with_the_upstream_gradient(device, gen, poisoned_alloc):
    imgs, pred, mask = inputs(SHAPES[0], F32, F32, device, gen)
    grads = []
    for impl in ("triton", "torch"):
        pred.grad = None
        (norm_pix_masked_mse(imgs, pred, mask, 4, impl=impl) * -3.5).backward()
        grads.append(pred.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-9)


def test_bad_shapes_raise(device):
    imgs, pred, mask = (
        torch.zeros(2, 3, 28, 28, device=device),
        torch.zeros(2, 49, 48, device=device),
        torch.ones(2, 49),
    )
    mask = mask.to(device)
    with pytest.raises(ValueError, match="pred"):
        norm_pix_masked_mse(imgs, pred[:, :48], mask, 4, impl="triton")
    with pytest.raises(ValueError, match="mask"):
        norm_pix_masked_mse(imgs, pred, mask[:, :10], 4, impl="triton")
    with pytest.raises(ValueError, match="patch"):
        norm_pix_masked_mse(imgs, pred, mask, 5, impl="triton")
    with pytest.raises(ValueError, match="norm_pix"):
        norm_pix_masked_mse(imgs[:, :1, :7, :7], torch.zeros(2, 49, 1, device=device), mask, 1, impl="triton")
