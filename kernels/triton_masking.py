"""Triton kernels for the MAE visible-token gather and the decoder unshuffle, forward and backward.

Layout: one program per (row, D-block) in the forwards, loads and stores contiguous along D (coalesced when the
last stride is 1, which Triton specialises on), arithmetic in fp32, one rounding to the output dtype. The backwards
run one program per (patch position l, D-block, batch chunk) and loop over the chunk's samples: each program owns
its (l, D-block) slice of every gradient it writes, so the reductions over the batch (position-embedding and
mask-token gradients) need no atomics and are deterministic; the per-chunk partial sums (fp32, tiny) are added in
torch afterwards.

Importing this module imports triton; the dispatcher imports it only once a fused op is asked for, so
``TRITON_INTERPRET`` is read when these kernels are decorated.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .geometry import batch_splits, block_d, num_warps_for
from .triton_common import INTERPRETED, to_storage

__all__ = ["INTERPRETED", "gather_visible_bwd", "gather_visible_fwd", "keep_slots", "unshuffle_bwd", "unshuffle_fwd"]


@triton.jit
def _gather_fwd_kernel(
    tok_ptr, pos_ptr, ids_ptr, out_ptr,
    K, D,
    s_tb, s_tl, s_td, s_pl, s_pd, s_ib, s_ik,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)  # b * K + j
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    inside = offs < D
    b = row // K
    j = row % K
    src = tl.load(ids_ptr + b * s_ib + j * s_ik).to(tl.int64)
    x = tl.load(tok_ptr + b * s_tb + src * s_tl + offs * s_td, mask=inside, other=0.0)
    p = tl.load(pos_ptr + src * s_pl + offs * s_pd, mask=inside, other=0.0)
    y = x.to(tl.float32) + to_storage(p.to(tl.float32), x.dtype).to(tl.float32)  # pos cast to the token dtype first
    tl.store(out_ptr + row * D + offs, to_storage(y, out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _gather_bwd_kernel(
    gout_ptr, inv_ptr, gtok_ptr, gpos_ptr,
    B, L, D, chunk,
    s_gb, s_gk, s_gd,
    WRITE_TOKENS: tl.constexpr, WRITE_POS: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pos = tl.program_id(0).to(tl.int64)  # patch position l
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    split = tl.program_id(2)
    inside = offs < D
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    start = split.to(tl.int64) * chunk
    count = tl.minimum(start + chunk, B) - start
    for i in range(0, count):
        b64 = start + i
        j = tl.load(inv_ptr + b64 * L + pos)  # slot of patch l among the visible ones, -1 when masked
        kept = j >= 0
        j = tl.where(kept, j, 0).to(tl.int64)
        src = gout_ptr + b64 * s_gb + j * s_gk + offs * s_gd
        g = tl.load(src, mask=tl.where(kept, inside, False), other=0.0).to(tl.float32)
        if WRITE_TOKENS:
            tl.store(gtok_ptr + (b64 * L + pos) * D + offs, to_storage(g, gtok_ptr.dtype.element_ty), mask=inside)
        if WRITE_POS:
            acc += g
    if WRITE_POS:
        tl.store(gpos_ptr + (split * L + pos) * D + offs, acc, mask=inside)


@triton.jit
def _unshuffle_fwd_kernel(
    vis_ptr, mt_ptr, ids_ptr, pos_ptr, out_ptr,
    K, L, D,
    s_vb, s_vk, s_vd, s_m, s_ib, s_il, s_pl, s_pd,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)  # b * L + l
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    inside = offs < D
    b = row // L
    pos = row % L
    src = tl.load(ids_ptr + b * s_ib + pos * s_il).to(tl.int64)
    visible = src < K
    src = tl.where(visible, src, 0)
    v = tl.load(vis_ptr + b * s_vb + src * s_vk + offs * s_vd, mask=tl.where(visible, inside, False), other=0.0)
    m = tl.load(mt_ptr + offs * s_m, mask=tl.where(visible, False, inside), other=0.0)
    x = tl.where(visible, v.to(tl.float32), to_storage(m.to(tl.float32), v.dtype).to(tl.float32))
    p = tl.load(pos_ptr + pos * s_pl + offs * s_pd, mask=inside, other=0.0)
    y = x + to_storage(p.to(tl.float32), v.dtype).to(tl.float32)  # as the reference: in the visible dtype
    tl.store(out_ptr + row * D + offs, to_storage(y, out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _unshuffle_bwd_kernel(
    gout_ptr, ids_ptr, gvis_ptr, gmt_ptr, gpos_ptr,
    B, K, L, D, chunk,
    s_gb, s_gl, s_gd, s_ib, s_il,
    WRITE_VISIBLE: tl.constexpr, WRITE_MASK: tl.constexpr, WRITE_POS: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pos = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    split = tl.program_id(2)
    inside = offs < D
    acc_pos = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc_mask = tl.zeros([BLOCK_D], dtype=tl.float32)
    start = split.to(tl.int64) * chunk
    count = tl.minimum(start + chunk, B) - start
    for i in range(0, count):
        b64 = start + i
        g = tl.load(gout_ptr + b64 * s_gb + pos * s_gl + offs * s_gd, mask=inside, other=0.0).to(tl.float32)
        src = tl.load(ids_ptr + b64 * s_ib + pos * s_il).to(tl.int64)
        visible = src < K
        if WRITE_VISIBLE:
            dst = gvis_ptr + (b64 * K + tl.where(visible, src, 0)) * D + offs
            tl.store(dst, to_storage(g, gvis_ptr.dtype.element_ty), mask=tl.where(visible, inside, False))
        if WRITE_MASK:
            acc_mask += tl.where(visible, 0.0, g)
        if WRITE_POS:
            acc_pos += g
    part = (split * L + pos) * D + offs
    if WRITE_MASK:
        tl.store(gmt_ptr + part, acc_mask, mask=inside)
    if WRITE_POS:
        tl.store(gpos_ptr + part, acc_pos, mask=inside)


def gather_visible_fwd(
    tokens: torch.Tensor, pos_embed: torch.Tensor, keep_ids: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, L, D) + (L, D) gathered at (B, K) → (B, K, D) in ``tokens.dtype``; any strides in, contiguous out."""
    batch, _, width = tokens.shape
    keep = keep_ids.shape[1]
    if out is None:
        out = torch.empty(batch, keep, width, dtype=tokens.dtype, device=tokens.device)
    if out.numel() == 0:
        return out
    block = block_d(width)
    _gather_fwd_kernel[(batch * keep, triton.cdiv(width, block))](
        tokens, pos_embed, keep_ids, out,
        keep, width,
        *tokens.stride(), *pos_embed.stride(), *keep_ids.stride(),
        BLOCK_D=block, num_warps=num_warps_for(block),
    )  # fmt: skip
    return out


def keep_slots(keep_ids: torch.Tensor, length: int) -> torch.Tensor:
    """(B, K) keep indices → (B, L) int32 map: slot j of each kept patch, -1 for masked patches."""
    batch, keep = keep_ids.shape
    slots = torch.full((batch, length), -1, dtype=torch.int32, device=keep_ids.device)
    order = torch.arange(keep, dtype=torch.int32, device=keep_ids.device).expand(batch, keep)
    return slots.scatter_(1, keep_ids.long(), order)


def gather_visible_bwd(
    grad_out: torch.Tensor,
    keep_ids: torch.Tensor,
    length: int,
    tokens_dtype: torch.dtype | None,
    pos_dtype: torch.dtype | None,
    grad_tokens: torch.Tensor | None = None,
    splits: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of :func:`gather_visible_fwd`: (B, L, D) for the tokens (zeros at masked patches) when
    ``tokens_dtype`` is given, (L, D) for the position embeddings (summed over the batch) when ``pos_dtype`` is."""
    batch, _, width = grad_out.shape
    device = grad_out.device
    want_tokens, want_pos = tokens_dtype is not None, pos_dtype is not None
    if want_tokens and grad_tokens is None:
        grad_tokens = torch.empty(batch, length, width, dtype=tokens_dtype, device=device)
    block = block_d(width)
    n_splits, chunk = batch_splits(batch, length * triton.cdiv(width, block), splits)
    partial = torch.empty(n_splits, length, width, dtype=torch.float32, device=device) if want_pos else None
    if batch * length * width and (want_tokens or want_pos):
        _gather_bwd_kernel[(length, triton.cdiv(width, block), n_splits)](
            grad_out, keep_slots(keep_ids, length), grad_tokens if want_tokens else grad_out,
            partial if want_pos else grad_out,
            batch, length, width, chunk,
            *grad_out.stride(),
            WRITE_TOKENS=want_tokens, WRITE_POS=want_pos, BLOCK_D=block, num_warps=num_warps_for(block),
        )  # fmt: skip
    grad_pos = None
    if want_pos:
        grad_pos = partial.sum(0).to(pos_dtype) if batch else torch.zeros(length, width, dtype=pos_dtype, device=device)
    return (grad_tokens if want_tokens else None), grad_pos


def unshuffle_fwd(
    visible: torch.Tensor,
    mask_token: torch.Tensor,
    restore_ids: torch.Tensor,
    pos_embed: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, K, D) visible + (D,) mask token at the masked slots, unshuffled by (B, L) restore ids, + (L, D) pos."""
    batch, keep, width = visible.shape
    length = restore_ids.shape[1]
    if out is None:
        out = torch.empty(batch, length, width, dtype=visible.dtype, device=visible.device)
    if out.numel() == 0:
        return out
    block = block_d(width)
    _unshuffle_fwd_kernel[(batch * length, triton.cdiv(width, block))](
        visible, mask_token, restore_ids, pos_embed, out,
        keep, length, width,
        *visible.stride(), mask_token.stride(0), *restore_ids.stride(), *pos_embed.stride(),
        BLOCK_D=block, num_warps=num_warps_for(block),
    )  # fmt: skip
    return out


def unshuffle_bwd(
    grad_out: torch.Tensor,
    restore_ids: torch.Tensor,
    keep: int,
    visible_dtype: torch.dtype | None,
    mask_dtype: torch.dtype | None,
    pos_dtype: torch.dtype | None,
    grad_visible: torch.Tensor | None = None,
    splits: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of :func:`unshuffle_fwd` for the visible tokens (B, K, D), the mask token (D,) and the position
    embeddings (L, D); each is computed only when its dtype is given."""
    batch, length, width = grad_out.shape
    device = grad_out.device
    want = (visible_dtype is not None, mask_dtype is not None, pos_dtype is not None)
    if want[0] and grad_visible is None:
        grad_visible = torch.empty(batch, keep, width, dtype=visible_dtype, device=device)
    block = block_d(width)
    n_splits, chunk = batch_splits(batch, length * triton.cdiv(width, block), splits)

    def partial(needed: bool) -> torch.Tensor | None:
        return torch.empty(n_splits, length, width, dtype=torch.float32, device=device) if needed else None

    part_mask, part_pos = partial(want[1]), partial(want[2])
    if batch * length * width and any(want):
        _unshuffle_bwd_kernel[(length, triton.cdiv(width, block), n_splits)](
            grad_out, restore_ids, grad_visible if want[0] else grad_out,
            part_mask if want[1] else grad_out, part_pos if want[2] else grad_out,
            batch, keep, length, width, chunk,
            *grad_out.stride(), *restore_ids.stride(),
            WRITE_VISIBLE=want[0], WRITE_MASK=want[1], WRITE_POS=want[2],
            BLOCK_D=block, num_warps=num_warps_for(block),
        )  # fmt: skip
    grad_mask = grad_pos = None
    if want[1]:
        grad_mask = part_mask.sum((0, 1)) if batch * length else torch.zeros(width, device=device)
        grad_mask = grad_mask.to(mask_dtype)
    if want[2]:
        grad_pos = part_pos.sum(0) if batch else torch.zeros(length, width, device=device)
        grad_pos = grad_pos.to(pos_dtype)
    return (grad_visible if want[0] else None), grad_mask, grad_pos
