"""Fused decoder unshuffle vs the torch reference: values (bit-exact) and gradients to all three inputs.

Needs the fused kernels to run: on a CPU machine under ``TRITON_INTERPRET=1`` (``test_interpreter.py`` runs this
module in such a subprocess), on a GPU machine directly.
"""

from __future__ import annotations

import pytest
import torch
from maws_scale.kernels import reference, triton_available, unshuffle_with_mask_tokens
from maws_scale.kernels.masking import random_masking_ids

if not triton_available("cuda" if torch.cuda.is_available() else "cpu"):
    raise RuntimeError("the fused kernels cannot run here: run via tests/kernels/test_interpreter.py")

from maws_scale.kernels import triton_masking

# (B, L, L_keep, D): L not a power of two, decoder-head-like widths 80/128, full widths 1280/2560 on few rows.
SHAPES = [(1, 49, 12, 80), (1, 196, 49, 128), (1, 257, 64, 80), (2, 16, 4, 1280), (1, 9, 3, 2560)]
SMALL = [(1, 49, 12, 80), (2, 16, 4, 1280)]
FORWARD = [(shape, torch.float32) for shape in SHAPES] + [(shape, torch.bfloat16) for shape in SMALL]


def inputs(shape, dtype, device, gen, param_dtype=None, grad=False):
    batch, length, keep, width = shape
    visible = torch.randn(batch, keep, width, generator=gen).to(device, dtype).requires_grad_(grad)
    mask_token = torch.randn(width, generator=gen).to(device, param_dtype or dtype).requires_grad_(grad)
    pos = torch.randn(length, width, generator=gen).to(device, param_dtype or dtype).requires_grad_(grad)
    _, restore_ids, _ = random_masking_ids(batch, length, keep, device, gen)
    return visible, mask_token, restore_ids, pos


def grads(impl, visible, mask_token, restore_ids, pos, grad_out):
    leaves = (visible, mask_token, pos)
    for leaf in leaves:
        leaf.grad = None
    unshuffle_with_mask_tokens(visible, mask_token, restore_ids, pos, impl=impl).backward(grad_out)
    return tuple(leaf.grad for leaf in leaves)


@pytest.mark.parametrize(("shape", "dtype"), FORWARD, ids=str)
def test_forward_is_exact_and_writes_every_element(shape, dtype, device, gen):
    visible, mask_token, restore_ids, pos = inputs(shape, dtype, device, gen)
    out = torch.full((shape[0], shape[1], shape[3]), float("nan"), dtype=dtype, device=device)
    triton_masking.unshuffle_fwd(visible, mask_token, restore_ids, pos, out=out)
    assert not out.isnan().any()
    want = reference.unshuffle_with_mask_tokens_torch(visible, mask_token, restore_ids, pos)
    torch.testing.assert_close(out, want, rtol=0, atol=0)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gradients_match_reference(shape, device, gen, poisoned_alloc):
    args = inputs(shape, torch.float32, device, gen, grad=True)
    grad_out = torch.randn(shape[0], shape[1], shape[3], generator=gen).to(device)
    got, want = grads("triton", *args, grad_out), grads("torch", *args, grad_out)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)  # visible: a gather of copies, exact
    torch.testing.assert_close(got[1:], want[1:], rtol=1e-5, atol=1e-4)  # sums over the batch (and slots)


@pytest.mark.parametrize("shape", SMALL, ids=str)
def test_bf16_tokens_with_fp32_parameters(shape, device, gen, poisoned_alloc):
    """Under autocast the decoder tokens are bf16 while the mask token and pos-embed stay fp32."""
    visible, mask_token, restore_ids, pos = inputs(shape, torch.bfloat16, device, gen, torch.float32, grad=True)
    out = unshuffle_with_mask_tokens(visible, mask_token, restore_ids, pos, impl="triton")
    assert out.dtype == torch.bfloat16
    want = reference.unshuffle_with_mask_tokens_torch(visible, mask_token, restore_ids, pos)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    grad_out = torch.randn(out.shape, generator=gen).to(device, torch.bfloat16)
    got = grads("triton", visible, mask_token, restore_ids, pos, grad_out)
    assert [g.dtype for g in got] == [torch.bfloat16, torch.float32, torch.float32]
    torch.testing.assert_close(
        got[0], grads("torch", visible, mask_token, restore_ids, pos, grad_out)[0], rtol=0, atol=0
    )
    # fp32 accumulation of bf16 grads: compare with fp64 sums
    g64, masked = grad_out.double(), (restore_ids >= shape[2]).unsqueeze(-1)
    torch.testing.assert_close(got[2], g64.sum(0).float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[1], (g64 * masked).sum((0, 1)).float(), rtol=1e-6, atol=1e-6)


def test_strided_inputs(device, gen, poisoned_alloc):
    """As MAE calls it: visible = decoder tokens without the class token, pos-embed a slice of (1, 1 + L, D)."""
    batch, length, keep, width = 2, 49, 12, 80
    tokens = torch.randn(batch, 1 + keep, width, generator=gen).to(device).requires_grad_(True)
    pos_full = torch.randn(1, 1 + length, width, generator=gen).to(device).requires_grad_(True)
    mask_token = torch.randn(1, 1, width, generator=gen).to(device).requires_grad_(True)
    _, restore_ids, _ = random_masking_ids(batch, length, keep, device, gen)
    restore_ids = restore_ids.t().contiguous().t()  # column-major ids
    grad_out = torch.randn(batch, length, width, generator=gen).to(device)
    results = []
    for impl in ("triton", "torch"):
        for leaf in (tokens, pos_full, mask_token):
            leaf.grad = None
        out = unshuffle_with_mask_tokens(tokens[:, 1:], mask_token.reshape(-1), restore_ids, pos_full[0, 1:], impl=impl)
        out.backward(grad_out)
        results.append((out.detach(), tokens.grad, pos_full.grad, mask_token.grad))
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("splits", [1, 2, 3, 5])
def test_batch_chunks_give_the_same_gradients(splits, device, gen, poisoned_alloc):
    batch, length, keep, width = 5, 25, 7, 48
    _, restore_ids, _ = random_masking_ids(batch, length, keep, device, gen)
    grad_out = torch.randn(batch, length, width, generator=gen).to(device)
    grad_visible = torch.full((batch, keep, width), float("nan"), device=device)
    fp32 = torch.float32
    got = triton_masking.unshuffle_bwd(grad_out, restore_ids, keep, fp32, fp32, fp32, grad_visible, splits)
    assert got[0] is grad_visible
    args = inputs((batch, length, keep, width), fp32, device, gen, grad=True)
    want = grads("torch", *args[:2], restore_ids, args[3], grad_out)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1:], want[1:], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True)], ids=str)
def test_only_the_requested_gradients(needs, device, gen, poisoned_alloc):
    shape = (2, 16, 5, 40)
    visible, mask_token, restore_ids, pos = inputs(shape, torch.float32, device, gen)
    for leaf, need in zip((visible, mask_token, pos), needs):
        leaf.requires_grad_(need)
    grad_out = torch.randn(2, 16, 40, generator=gen).to(device)
    got = grads("triton", visible, mask_token, restore_ids, pos, grad_out)
    want = grads("torch", visible, mask_token, restore_ids, pos, grad_out)
    for mine, theirs, need in zip(got, want, needs):
        assert (mine is None) == (not need)
        if need:
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("keep", [0, 16], ids=["all-masked", "none-masked"])
def test_edge_keep_counts(keep, device, gen, poisoned_alloc):
    args = inputs((2, 16, keep, 24), torch.float32, device, gen, grad=True)
    grad_out = torch.randn(2, 16, 24, generator=gen).to(device)
    torch.testing.assert_close(grads("triton", *args, grad_out), grads("torch", *args, grad_out), rtol=1e-5, atol=1e-5)


def test_bad_shapes_raise(device):
    visible, mask_token = torch.zeros(2, 4, 8, device=device), torch.zeros(8, device=device)
    restore_ids, pos = torch.zeros(2, 16, dtype=torch.long, device=device), torch.zeros(16, 8, device=device)
    with pytest.raises(ValueError, match="mask_token"):
        unshuffle_with_mask_tokens(visible, mask_token[:7], restore_ids, pos, impl="triton")
    with pytest.raises(ValueError, match="pos_embed"):
        unshuffle_with_mask_tokens(visible, mask_token, restore_ids, pos[:8], impl="triton")
    with pytest.raises(ValueError, match="restore_ids"):
        unshuffle_with_mask_tokens(visible, mask_token, restore_ids[:, :3], pos, impl="triton")
