"""How each plain (timm-named) tensor is split over tensor-parallel ranks, and the pure shard/merge functions.

Kinds (the partition dimension in brackets):

- ``qkv`` [0]: ``attn.qkv`` weight (3D, D) and bias (3D,), laid out (3, heads, head_dim). Each rank takes the same
  contiguous block of heads from q, k and v, so its rows are ``[q_heads, k_heads, v_heads]`` of its own heads and the
  block's ``reshape(B, T, 3, heads/tp, head_dim)`` works unchanged;
- ``column`` [0]: ``mlp.fc1`` weight and bias (output features split);
- ``row`` [1]: ``attn.proj`` and ``mlp.fc2`` weights (input features split; their biases stay replicated);
- ``vocab`` [0]: the WSP ``head`` weight and bias, classes split; K is zero-padded to a multiple of tp first and the
  padding is dropped again on merge.

Everything else (norms, embeddings, tokens, the MAE decoder unless sharded, attention pooling) is replicated. The
layout is a plain ``{name: (kind, full_shape)}`` mapping, JSON-serialisable, so a checkpoint can be consolidated or
re-sharded offline, without a process group or a model.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from maws_scale.models.registry import DecoderShape
from maws_scale.parallel.layout import shards_decoder

Kind = Literal["qkv", "column", "row", "vocab"]
PARTITION_DIM: dict[str, int] = {"qkv": 0, "column": 0, "row": 1, "vocab": 0}
LAYOUT_FILE = "tp_layout.json"
# the Linear layers of a transformer block that TP splits, and how (``parallelize_vit`` replaces exactly these)
SHARDED_LAYERS: dict[str, Kind] = {"attn.qkv": "qkv", "attn.proj": "row", "mlp.fc1": "column", "mlp.fc2": "row"}
_LAYERS = "|".join(map(re.escape, SHARDED_LAYERS))
_BLOCK_PARAM = re.compile(rf"^(?P<stack>blocks|decoder_blocks)\.\d+\.(?P<layer>{_LAYERS})\.")


def decoder_shardable(model, tp_size: int) -> bool:
    """Whether TP shards the MAE decoder: ``tp_size`` > 1 divides the heads and MLP width of every decoder block
    (False without a decoder). ``parallelize_vit(shard_decoder="auto")`` and the planner both decide by this."""
    return shards_decoder(decoder_shape(model), tp_size)


def decoder_shape(model) -> DecoderShape | None:
    """The MAE decoder of ``model`` as built (None without a decoder, or with blocks of different shapes)."""
    blocks = getattr(model, "decoder_blocks", None) or []
    shapes = {
        DecoderShape(b.mlp.fc1.in_features, len(blocks), b.attn.num_heads, b.mlp.fc1.out_features) for b in blocks
    }
    return shapes.pop() if len(shapes) == 1 else None


def shard_kind(name: str, shard_decoder: bool = False, vocab_head: bool = True) -> Kind | None:
    """The kind of plain parameter ``name`` under TP, or None when it is replicated."""
    if name in ("head.weight", "head.bias"):
        return "vocab" if vocab_head else None
    match = _BLOCK_PARAM.match(name)
    if match is None or (match["stack"] == "decoder_blocks" and not shard_decoder):
        return None
    kind = SHARDED_LAYERS[match["layer"]]
    if name.endswith(".bias") and kind == "row":
        return None  # a row-parallel layer adds its whole bias after the all-reduce: replicated
    return kind


@dataclass
class TPLayout:
    """The tensor-parallel layout of one model: ``tp_size`` and ``{plain name: (kind, full unpadded shape)}``."""

    tp_size: int
    shards: dict[str, tuple[Kind, tuple[int, ...]]] = field(default_factory=dict)

    @classmethod
    def for_state_dict(cls, state_dict: dict[str, torch.Tensor], tp_size: int, shard_decoder: bool = False) -> TPLayout:
        """The layout of a plain state dict at ``tp_size`` (the WSP head vocab-parallel if present)."""
        shards = {}
        for name, tensor in state_dict.items():
            kind = shard_kind(name, shard_decoder)
            if kind is not None:
                shards[name] = (kind, tuple(tensor.shape))
        return cls(tp_size, shards)

    def to_json(self) -> str:
        return json.dumps({"tp_size": self.tp_size, "shards": {k: [v[0], list(v[1])] for k, v in self.shards.items()}})

    @classmethod
    def from_json(cls, text: str) -> TPLayout:
        raw = json.loads(text)
        return cls(raw["tp_size"], {k: (v[0], tuple(v[1])) for k, v in raw["shards"].items()})

    def save(self, directory: str | Path) -> Path:
        """Write ``tp_layout.json`` into ``directory`` (next to the TP-sharded checkpoint files)."""
        path = Path(directory) / LAYOUT_FILE
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, directory: str | Path) -> TPLayout:
        path = Path(directory) / LAYOUT_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: no tensor-parallel layout next to this checkpoint")
        return cls.from_json(path.read_text())


def padded_size(size: int, tp_size: int) -> int:
    """``size`` rounded up to a multiple of ``tp_size`` (the vocab padding)."""
    return math.ceil(size / tp_size) * tp_size


def vocab_range(num_classes: int, tp_rank: int, tp_size: int) -> tuple[int, int, int]:
    """(start, valid, local): this rank's first class, how many real classes it holds, and its padded slice width."""
    local = padded_size(num_classes, tp_size) // tp_size
    start = tp_rank * local
    valid = max(0, min(local, num_classes - start))
    return start, valid, local


def shard_tensor(full: torch.Tensor, kind: Kind, tp_rank: int, tp_size: int) -> torch.Tensor:
    """This rank's shard of the plain tensor ``full`` (a contiguous copy)."""
    if not 0 <= tp_rank < tp_size:
        raise ValueError(f"tensor-parallel rank {tp_rank} is outside [0, {tp_size})")
    if kind == "qkv":
        if full.shape[0] % 3 or (full.shape[0] // 3) % tp_size:
            raise ValueError(f"qkv of {full.shape[0]} rows cannot be split into 3 × {tp_size} head groups")
        parts = full.reshape(3, full.shape[0] // 3, *full.shape[1:]).chunk(tp_size, dim=1)[tp_rank]
        return parts.reshape(-1, *full.shape[1:]).contiguous()
    if kind == "vocab":
        pad = padded_size(full.shape[0], tp_size) - full.shape[0]
        if pad:
            full = torch.cat([full, full.new_zeros(pad, *full.shape[1:])], dim=0)
        return full.chunk(tp_size, dim=0)[tp_rank].contiguous()
    dim = PARTITION_DIM[kind]
    if full.shape[dim] % tp_size:
        raise ValueError(
            f"dimension {dim} of size {full.shape[dim]} is not divisible by tensor-parallel size {tp_size}"
        )
    return full.chunk(tp_size, dim=dim)[tp_rank].contiguous()


def copy_shard_(dst: torch.Tensor, full: torch.Tensor, kind: Kind, tp_rank: int, tp_size: int) -> torch.Tensor:
    """Write this rank's shard of ``full`` into ``dst`` straight from a view (no temporary copy of the shard, except
    for a padded vocab); the same values as :func:`shard_tensor`."""
    if kind == "vocab":
        return dst.copy_(shard_tensor(full, kind, tp_rank, tp_size))
    if kind == "qkv":
        rest = full.shape[1:]
        return dst.view(3, -1, *rest).copy_(full.view(3, -1, *rest).chunk(tp_size, dim=1)[tp_rank])
    return dst.copy_(full.chunk(tp_size, dim=PARTITION_DIM[kind])[tp_rank])


def merge_shards(shards: list[torch.Tensor], kind: Kind, full_shape: tuple[int, ...]) -> torch.Tensor:
    """The plain tensor from every rank's shard, in rank order (inverse of :func:`shard_tensor`)."""
    if kind == "qkv":
        rest = shards[0].shape[1:]
        grouped = [s.reshape(3, -1, *rest) for s in shards]
        merged = torch.cat(grouped, dim=1).reshape(-1, *rest)
    elif kind == "vocab":
        merged = torch.cat(shards, dim=0)[: full_shape[0]]
    else:
        merged = torch.cat(shards, dim=PARTITION_DIM[kind])
    if tuple(merged.shape) != tuple(full_shape):
        raise ValueError(f"merged {kind} shards have shape {tuple(merged.shape)}, expected {tuple(full_shape)}")
    return merged


def shard_state_dict(state_dict: dict[str, torch.Tensor], layout: TPLayout, tp_rank: int) -> dict[str, torch.Tensor]:
    """Rank ``tp_rank``'s TP state dict from a plain one (replicated tensors are passed through, not copied)."""
    out = {}
    for name, tensor in state_dict.items():
        spec = layout.shards.get(name)
        out[name] = tensor if spec is None else shard_tensor(tensor, spec[0], tp_rank, layout.tp_size)
    return out


def merge_state_dicts(rank_state_dicts: list[dict[str, torch.Tensor]], layout: TPLayout) -> dict[str, torch.Tensor]:
    """The plain state dict from every TP rank's state dict (rank order); replicated tensors come from rank 0."""
    if len(rank_state_dicts) != layout.tp_size:
        raise ValueError(f"got {len(rank_state_dicts)} shards for a tensor-parallel size of {layout.tp_size}")
    out = {}
    for name, tensor in rank_state_dicts[0].items():
        spec = layout.shards.get(name)
        out[name] = tensor if spec is None else merge_shards([sd[name] for sd in rank_state_dicts], *spec)
    return out
