"""Fused visible-token gather vs the torch reference: values (bit-exact) and gradients.

Needs the fused kernels to run: on a CPU machine under ``TRITON_INTERPRET=1`` (``test_interpreter.py`` runs this
module in such a subprocess), on a GPU machine directly.
"""

from __future__ import annotations

import pytest
import torch
from maws_scale.kernels import gather_visible, reference, triton_available
from maws_scale.kernels.masking import random_masking_ids

if not triton_available("cuda" if torch.cuda.is_available() else "cpu"):
    raise RuntimeError("the fused kernels cannot run here: run via tests/kernels/test_interpreter.py")

from maws_scale.kernels import triton_masking

# (B, L, L_keep, D): L not a power of two (7², 14², 16²+1), per-head widths 80 and 128, full widths 1280 and 2560
# with few rows (several D-blocks, the last one partial), batch 1.
SHAPES = [(1, 49, 12, 80), (2, 196, 49, 128), (1, 257, 64, 80), (2, 16, 4, 1280), (1, 9, 3, 2560)]
SMALL = [(1, 49, 12, 80), (2, 16, 4, 1280)]


def inputs(shape, dtype, device, gen, pos_dtype=None, grad=False):
    batch, length, keep, width = shape
    tokens = torch.randn(batch, length, width, generator=gen).to(device, dtype).requires_grad_(grad)
    pos = torch.randn(length, width, generator=gen).to(device, pos_dtype or dtype).requires_grad_(grad)
    keep_ids, _, _ = random_masking_ids(batch, length, keep, device, gen)  # a strided (non-contiguous) slice
    return tokens, pos, keep_ids


def grads(impl, tokens, pos, keep_ids, grad_out):
    tokens.grad = pos.grad = None
    gather_visible(tokens, pos, keep_ids, impl=impl).backward(grad_out)
    return tokens.grad, pos.grad


FORWARD = [(shape, torch.float32) for shape in SHAPES] + [(shape, torch.bfloat16) for shape in [*SMALL, SHAPES[1]]]


@pytest.mark.parametrize(("shape", "dtype"), FORWARD, ids=str)
def test_forward_is_exact_and_writes_every_element(shape, dtype, device, gen):
    tokens, pos, keep_ids = inputs(shape, dtype, device, gen)
    out = torch.full((shape[0], shape[2], shape[3]), float("nan"), dtype=dtype, device=device)
    triton_masking.gather_visible_fwd(tokens, pos, keep_ids, out=out)
    assert not out.isnan().any()
    torch.testing.assert_close(out, reference.gather_visible_torch(tokens, pos, keep_ids), rtol=0, atol=0)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gradients_match_reference(shape, device, gen, poisoned_alloc):
    tokens, pos, keep_ids = inputs(shape, torch.float32, device, gen, grad=True)
    grad_out = torch.randn(shape[0], shape[2], shape[3], generator=gen).to(device)
    got, want = grads("triton", tokens, pos, keep_ids, grad_out), grads("torch", tokens, pos, keep_ids, grad_out)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)  # a scatter of copies: exact
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)  # a sum over the batch, other order


@pytest.mark.parametrize("shape", SMALL, ids=str)
def test_bf16_tokens_with_fp32_pos_embed(shape, device, gen, poisoned_alloc):
    tokens, pos, keep_ids = inputs(shape, torch.bfloat16, device, gen, pos_dtype=torch.float32, grad=True)
    out = gather_visible(tokens, pos, keep_ids, impl="triton")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, reference.gather_visible_torch(tokens, pos, keep_ids), rtol=0, atol=0)
    grad_out = torch.randn(out.shape, generator=gen).to(device, torch.bfloat16)
    got, want = grads("triton", tokens, pos, keep_ids, grad_out), grads("torch", tokens, pos, keep_ids, grad_out)
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    # fp32 accumulation of bf16 grads vs the reference's bf16 batch sum: compare with the fp64 sum
    exact = torch.zeros(shape[1], shape[3], dtype=torch.float64, device=device)
    exact.index_put_((keep_ids.flatten(),), grad_out.double().flatten(0, 1), accumulate=True)
    torch.testing.assert_close(got[1], exact.float(), rtol=1e-6, atol=1e-6)


def test_strided_inputs(device, gen, poisoned_alloc):
    """Tokens as the patch embedding leaves them (a transposed view), pos-embed a slice of (1, 1 + L, D)."""
    batch, length, keep, width = 2, 49, 12, 80
    tokens = torch.randn(batch, width, length, generator=gen).to(device).transpose(1, 2).requires_grad_(True)
    pos = torch.randn(1, 1 + length, width, generator=gen).to(device)[0, 1:].requires_grad_(True)
    keep_ids, _, _ = random_masking_ids(batch, length, keep, device, gen)
    assert not tokens.is_contiguous()
    out = gather_visible(tokens, pos, keep_ids, impl="triton")
    torch.testing.assert_close(out, reference.gather_visible_torch(tokens, pos, keep_ids), rtol=0, atol=0)
    grad_out = torch.randn(out.shape, generator=gen).to(device).transpose(0, 1).contiguous().transpose(0, 1)
    got, want = grads("triton", tokens, pos, keep_ids, grad_out), grads("torch", tokens, pos, keep_ids, grad_out)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("splits", [1, 2, 3, 5])
def test_batch_chunks_give_the_same_gradients(splits, device, gen, poisoned_alloc):
    batch, length, keep, width = 5, 25, 7, 48
    keep_ids, _, _ = random_masking_ids(batch, length, keep, device, gen)
    grad_out = torch.randn(batch, keep, width, generator=gen).to(device)
    grad_tokens = torch.full((batch, length, width), float("nan"), device=device)
    got = triton_masking.gather_visible_bwd(
        grad_out, keep_ids, length, torch.float32, torch.float32, grad_tokens, splits
    )
    tokens = torch.zeros(batch, length, width, device=device, requires_grad=True)
    pos = torch.zeros(length, width, device=device, requires_grad=True)
    want = grads("torch", tokens, pos, keep_ids, grad_out)
    assert got[0] is grad_tokens
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("needs", [(True, False), (False, True)], ids=["tokens-only", "pos-only"])
def test_only_the_requested_gradients(needs, device, gen, poisoned_alloc):
    shape = (2, 16, 5, 40)
    tokens, pos, keep_ids = inputs(shape, torch.float32, device, gen)
    tokens.requires_grad_(needs[0])
    pos.requires_grad_(needs[1])
    grad_out = torch.randn(2, 5, 40, generator=gen).to(device)
    gather_visible(tokens, pos, keep_ids, impl="triton").backward(grad_out)
    got = (tokens.grad, pos.grad)
    tokens.grad = pos.grad = None
    gather_visible(tokens, pos, keep_ids, impl="torch").backward(grad_out)
    for mine, theirs, needed in zip(got, (tokens.grad, pos.grad), needs):
        assert (mine is None) == (not needed)
        if needed:
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("keep", [0, 16], ids=["all-masked", "none-masked"])
def test_edge_keep_counts(keep, device, gen, poisoned_alloc):
    shape = (2, 16, keep, 24)
    tokens, pos, keep_ids = inputs(shape, torch.float32, device, gen, grad=True)
    grad_out = torch.randn(2, keep, 24, generator=gen).to(device)
    got, want = grads("triton", tokens, pos, keep_ids, grad_out), grads("torch", tokens, pos, keep_ids, grad_out)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bad_shapes_raise(device):
    tokens, pos = torch.zeros(2, 16, 8, device=device), torch.zeros(16, 8, device=device)
    keep_ids = torch.zeros(2, 4, dtype=torch.long, device=device)
    with pytest.raises(ValueError, match="pos_embed"):
        gather_visible(tokens, pos[:15], keep_ids, impl="triton")
    with pytest.raises(ValueError, match="keep_ids"):
        gather_visible(tokens, pos, keep_ids[:1], impl="triton")
    with pytest.raises(ValueError, match="integer"):
        gather_visible(tokens, pos, keep_ids.float(), impl="triton")
