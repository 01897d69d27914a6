"""Activation memory per sample: the tensors autograd saves for backward, counted by storage, analytically.

Per transformer block of T tokens, width w, MLP width m, H heads, tensor-parallel size t and activation bytes a (2 in
bf16 / fp16, 4 in fp32), the pre-norm block saves per token

- replicated across TP ranks: the inputs of norm1, qkv, norm2 and fc1 (4·w·a), and each norm's mean and rstd (fp32,
  16 bytes);
- split over TP ranks: q, k, v (views of the qkv output, 3·w/t·a), the attention output, which also feeds proj
  (w/t·a: fused kernels lay it out (B, T, H, Dh), so merging heads is a view), the fc1 output (GELU input) and GELU
  output (2·m/t·a); fused attention (sdpa / xformers / flash) adds its log-sum-exp (fp32, 4·H/t bytes); ``math``
  attention instead keeps the fp32 softmax and the probabilities in the model dtype (H/t·T·(4 + a) bytes; 4 in
  fp32), and copies where fused attention keeps views (same count).

That is 16·w·a per token at m = 4w, t = 1 (Korthikanti et al. count 34·w bytes for a GPT block *with* dropout; a ViT
block has none). Around the blocks: the patch-embedding input image, the final norm, decoder embedding, decoder norm
and prediction; MAE's masking and loss depend on the kernels: the fused Triton ops keep only int64 indices and the
prediction, the torch reference ops also keep the gather sources (L·w·a, L·w_dec·a) and an fp32 squared error
(4·L·p²C); for WSP the normed tokens the pooled feature is a view of, and the fp32 soft-target cross-entropy
(log-softmax output and the fp32 targets, 8·K/t). With activation checkpointing (per block, non-reentrant) each
checkpointed block keeps only its input (T·w·a) and one block's activations are alive again while it is recomputed
in backward; which blocks are checkpointed comes from :func:`maws_scale.models.recompute.recomputed_blocks`
(the rule the model runs). ``selective_op`` keeps, besides the input, the outputs of the matmuls and the attention
op: qkv (3w/t), attention (w/t, + the fused log-sum-exp, or math attention's scores H/t·T in the model dtype), fc1
(m/t), and proj and fc2 (w each: a row-parallel output is whole before its all-reduce): (3w + (4w + m)/t)·a per
token at TP t, 11·w·a at m = 4w, t = 1 (vs 16·w·a without checkpointing); it recomputes the norms, GELU and the
residual adds, no matmul.
The MAE decoder is tensor-parallel when tp divides its heads and MLP width. Validated on CPU against
``saved_tensors_hooks`` accounting of the real model (tests/perf/test_activations.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from maws_scale.config import RunConfig
from maws_scale.models.recompute import parse_mode, recomputed_blocks
from maws_scale.parallel.layout import shards_decoder

LN_STATS = 8  # mean + rstd per token, fp32


@dataclass(frozen=True)
class BlockShape:
    tokens: int
    width: int
    mlp: int
    heads: int
    tp: int = 1


def block_bytes_per_token(s: BlockShape, act_bytes: int, attention: str, parallel: bool, qk_norm: bool) -> float:
    """Bytes one pre-norm block saves for backward, per token (see the module docstring)."""
    w, t, a = s.width, s.tp, act_bytes
    replicated = (2 if parallel else 4) * w * a + (1 if parallel else 2) * LN_STATS
    split = (3 * w + w + 2 * s.mlp) * a / t
    heads = s.heads / t
    if attention == "math":  # its q, k, v are copies, and proj reads a head-merged copy: same count as fused
        split += heads * s.tokens * (4 + (a if a != 4 else 0))
    else:  # fused kernels lay the output out (B, T, H, Dh): merging heads is a view
        split += 4 * heads
    if qk_norm:
        split += 2 * w * a / t + 2 * heads * LN_STATS
    return replicated + split


def selective_bytes_per_token(s: BlockShape, act_bytes: int, attention: str) -> float:
    """Bytes one block checkpointed with ``selective_op`` keeps per token: its input and the matmul / attention
    outputs (see the module docstring)."""
    w, t, a = s.width, s.tp, act_bytes
    heads = s.heads / t
    kept = 3 * w * a + (3 * w + w + s.mlp) * a / t  # input, proj and fc2 outputs; qkv, attention and fc1 outputs
    return kept + (heads * s.tokens * a if attention == "math" else 4 * heads)


def recompute_bytes_per_token(s: BlockShape, act_bytes: int) -> float:
    """Memory traffic of what ``selective_op`` recomputes per token (two norms, GELU, two residual adds: read and
    write); the speed model charges it at HBM bandwidth."""
    w, a = s.width, act_bytes
    return a * (2 * w + 2 * w + 2 * s.mlp / s.tp + 2 * 3 * w)


def block_bytes(s: BlockShape, act_bytes: int, attention: str, parallel: bool = False, qk_norm: bool = False) -> float:
    return s.tokens * block_bytes_per_token(s, act_bytes, attention, parallel, qk_norm)


@dataclass(frozen=True)
class ActivationEstimate:
    """Bytes per sample: ``blocks`` (all transformer blocks), ``other`` (embedding, norms, head, loss), and
    ``recompute`` (one block's activations alive again under checkpointing; counted once per micro-batch).
    ``recomputed``: per stack (encoder, decoder), the share of its blocks' forward matmuls run again in backward;
    ``recompute_traffic``: bytes per sample of elementwise work run again (``selective_op``)."""

    blocks: float
    other: float
    recompute: float
    tokens_encoder: int
    tokens_decoder: int
    recomputed: tuple[float, float] = (0.0, 0.0)
    recompute_traffic: float = 0.0

    @property
    def per_sample(self) -> float:
        return self.blocks + self.other + self.recompute


def _attention_kind(cfg: RunConfig) -> str:
    return "math" if cfg.model.attention == "math" else "fused"


def estimate(
    cfg: RunConfig,
    num_classes: int | None = None,
    tp: int | None = None,
    checkpointing: bool | str | None = None,
    fused_kernels: bool = True,
) -> ActivationEstimate:
    """Activation bytes per sample for ``cfg`` (its stage, precision, attention, pooling) at TP ``tp``.

    ``fused_kernels``: whether MAE masking and loss run the Triton kernels (a GPU with triton and
    ``model.kernels`` auto | triton) or the torch reference ops (CPU, or ``model.kernels=torch``)."""
    spec = cfg.spec
    tp = tp or cfg.parallel.tp
    mode = parse_mode(cfg.parallel.activation_checkpointing if checkpointing is None else checkpointing)
    a = 4 if cfg.parallel.precision == "fp32" else 2
    attn = _attention_kind(cfg)
    par, qkn = cfg.model.parallel_block, cfg.model.qk_norm
    img = cfg.img_size
    length = spec.num_patches(img)
    patch_dim = spec.patch**2 * cfg.model.in_chans
    width = spec.width
    other = float(cfg.model.in_chans * img * img * a)  # the conv keeps its input image

    stacks: list[tuple[int, BlockShape]] = []
    if cfg.stage == "mae":
        keep = int(length * (1 - cfg.mae.mask_ratio))
        enc_tokens, dec_tokens = 1 + keep, 1 + length
        decoder = cfg.decoder
        dw = decoder.width
        stacks.append((spec.depth, BlockShape(enc_tokens, width, spec.mlp_hidden, spec.heads, tp)))
        dec_tp = tp if shards_decoder(decoder, tp) else 1
        stacks.append((decoder.depth, BlockShape(dec_tokens, dw, decoder.mlp_hidden, decoder.heads, dec_tp)))
        other += 2 * 8 * length  # gather / unshuffle indices (slices of (B, L) int64 permutations)
        other += enc_tokens * (2 * width * a + LN_STATS)  # final norm input, decoder_embed input
        other += dec_tokens * (2 * dw * a + LN_STATS)  # decoder norm input, decoder_pred input
        if fused_kernels:  # the loss keeps the prediction and fp32 per-patch weights
            other += dec_tokens * patch_dim * a + 4 * length
        else:  # gather sources, fp32 squared error, mask and per-patch loss
            other += length * (width + dw) * a + length * (4 * patch_dim + 8)
    else:
        enc_tokens, dec_tokens = 1 + length, 0
        stacks.append((spec.depth, BlockShape(enc_tokens, width, spec.mlp_hidden, spec.heads, tp)))
        other += enc_tokens * (width * a + LN_STATS)  # final norm input
        other += _pool_bytes(cfg.model.pool, enc_tokens, width, spec.mlp_hidden, a)
        classes = num_classes if num_classes is not None else (cfg.wsp.num_classes or 0)
        other += 8 * -(-classes // tp)  # fp32 log-softmax output + fp32 targets, vocab-parallel

    blocks = recompute = traffic = 0.0
    shares = [0.0, 0.0]
    for i, (depth, shape) in enumerate(stacks):
        full = block_bytes(shape, a, attn, par, qkn)
        n = sum(recomputed_blocks(mode, depth))
        if mode == "selective_op":
            kept = shape.tokens * selective_bytes_per_token(shape, a, attn)
            traffic += n * shape.tokens * recompute_bytes_per_token(shape, a)
        else:
            kept = shape.tokens * shape.width * a
            shares[i] = n / depth if depth else 0.0
        blocks += n * kept + (depth - n) * full
        if n:
            recompute = max(recompute, full)
    return ActivationEstimate(blocks, other, recompute, enc_tokens, dec_tokens, (shares[0], shares[1]), traffic)


def _pool_bytes(pool: str, tokens: int, width: int, mlp: int, a: int) -> float:
    """What pooling keeps: cls slices the normed tokens (their storage stays alive as the head's input)."""
    if pool == "cls":
        return tokens * width * a
    if pool == "gap":
        return width * a
    if pool == "max":
        return tokens * width * a + width * a
    # map: kv projection input and output over all tokens, then a one-token block
    return tokens * 3 * width * a + (4 * width + 2 * mlp) * a
