"""Per-rank parameter counts of a tensor-parallel layout, from the registry shape alone (no torch, no model).

For the planner and benchmarks: how many parameters each TP rank holds (sharded + replicated) for a ViTSpec, a TP
size and a WSP class count, with the same layout :func:`maws_scale.parallel.tensor_parallel.parallelize_vit` builds
(qkv/proj/fc1/fc2 weights, qkv and fc1 biases and the vocab-parallel head sharded; everything else replicated).
Assumes the default block options (qkv bias, norm bias, no QK-norm, serial blocks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from maws_scale.models.registry import ViTSpec


@dataclass(frozen=True)
class TPParamCounts:
    """Parameter counts of one TP rank: ``sharded`` (its slices) + ``replicated``; ``full`` = the plain model's."""

    tp: int
    sharded: int
    replicated: int
    full: int

    @property
    def per_rank(self) -> int:
        return self.sharded + self.replicated


def _blocks(width: int, hidden: int, depth: int, tp: int, shard: bool) -> tuple[int, int]:
    """(sharded per rank, replicated) parameters of ``depth`` blocks."""
    split = 3 * width * width + 3 * width + width * width + width * hidden + hidden + hidden * width
    kept = 2 * width + 4 * width  # proj and fc2 biases; norm1 and norm2
    if not shard:
        return 0, depth * (split + kept)
    return depth * split // tp, depth * kept


def tp_param_counts(
    spec: ViTSpec,
    tp: int,
    num_classes: int = 0,
    *,
    stage: str = "wsp",
    shard_decoder: bool | str = "auto",
    pool: str = "cls",
    img_size: int | None = None,
) -> TPParamCounts:
    """Per-rank parameters of ``spec`` at tensor-parallel size ``tp``: the WSP classifier (``num_classes`` > 0 adds
    the vocab-parallel head, K padded to a multiple of tp) or, for ``stage="mae"``, the MAE with its decoder
    (``shard_decoder``: "auto" shards it when tp divides its heads and MLP width, as ``parallelize_vit`` does)."""
    if tp < 1 or spec.heads % tp or spec.mlp_hidden % tp:
        raise ValueError(f"parallel.tp={tp} does not divide the {spec.heads} heads and MLP width {spec.mlp_hidden}")
    if stage not in ("wsp", "mae"):
        raise ValueError(f"stage must be wsp or mae, got '{stage}'")
    width, hidden = spec.width, spec.mlp_hidden
    tokens = 1 + spec.num_patches(img_size)
    patch_dim = spec.patch * spec.patch * spec.in_chans
    sharded, replicated = _blocks(width, hidden, spec.depth, tp, True)
    replicated += patch_dim * width + width + width + tokens * width + 2 * width  # patch embed, cls, pos, norm
    full = _blocks(width, hidden, spec.depth, 1, False)[1] + patch_dim * width + 4 * width + tokens * width
    if pool == "map":
        pool_params = width + 4 * width * width + 4 * width + 2 * width + 2 * width * hidden + hidden + width
        replicated += pool_params
        full += pool_params
    if stage == "wsp" and num_classes > 0:
        padded = math.ceil(num_classes / tp) * tp
        sharded += padded // tp * (width + 1)
        full += num_classes * (width + 1)
    if stage == "mae":
        dec, dec_hidden = spec.decoder_width, int(spec.decoder_width * spec.mlp_ratio)
        if shard_decoder == "auto":
            shard_decoder = spec.decoder_heads % tp == 0 and dec_hidden % tp == 0
        if shard_decoder and (spec.decoder_heads % tp or dec_hidden % tp):
            raise ValueError(f"mae.decoder_heads: tp={tp} does not divide the decoder's {spec.decoder_heads} heads")
        dec_sharded, dec_replicated = _blocks(dec, dec_hidden, spec.decoder_depth, tp, shard_decoder)
        around = width * dec + dec + dec + tokens * dec + 2 * dec + dec * patch_dim + patch_dim
        sharded += dec_sharded
        replicated += dec_replicated + around
        full += _blocks(dec, dec_hidden, spec.decoder_depth, 1, False)[1] + around
    return TPParamCounts(tp=tp, sharded=sharded, replicated=replicated, full=full)
