"""The parameters one tensor-parallel rank holds, read off the real model built on the meta device.

The planner needs more than a count: ZeRO partitions each AdamW parameter group separately, in module order, and its
per-rank sizes depend on where partition boundaries fall; ZeRO-3 keeps small vectors resident; the WSP head is
vocab-parallel under TP. So the inventory lists every parameter (name, per-rank element count, ndim, trainable, its
AdamW group from :func:`maws_scale.parallel.optimizer.param_groups`), split over TP ranks by the layout
:mod:`maws_scale.parallel.tp_layout` defines (qkv / fc1 column-split, proj / fc2 weights row-split, the head's classes
padded to a multiple of tp and split, everything else replicated; the MAE decoder is sharded the same way whenever
tp divides its heads and MLP width: ``tp_layout.decoder_shardable``, the rule ``parallelize_vit`` applies).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from maws_scale.config import RunConfig
from maws_scale.parallel.ds_config import BlockInfo
from maws_scale.parallel.optimizer import param_groups
from maws_scale.parallel.plan import engine_block_info
from maws_scale.parallel.tp_layout import decoder_shardable, padded_size, shard_kind


@dataclass(frozen=True)
class ParamEntry:
    """One parameter as a TP rank holds it. ``group``: index of its AdamW group, None when frozen."""

    name: str
    numel: int
    ndim: int
    group: int | None
    sharded: bool

    @property
    def trainable(self) -> bool:
        return self.group is not None


@dataclass(frozen=True)
class Inventory:
    """Every parameter of one TP rank, in module order, plus the sizes the engine derives from the model."""

    entries: tuple[ParamEntry, ...]
    tp: int
    full_params: int
    num_classes: int | None
    decoder_sharded: bool = False
    engine_blocks: BlockInfo | None = (
        None  # the ZeRO bucket sizing the trainer derives (parallel.plan.engine_block_info)
    )

    @property
    def numel(self) -> int:
        """Parameters this TP rank holds (sharded slices + replicated)."""
        return sum(e.numel for e in self.entries)

    @property
    def trainable_numel(self) -> int:
        return sum(e.numel for e in self.entries if e.trainable)

    @property
    def frozen(self) -> list[int]:
        return [e.numel for e in self.entries if not e.trainable]

    def groups(self) -> list[list[int]]:
        """Element counts of the trainable parameters, one list per AdamW group, in the order DeepSpeed flattens."""
        count = 1 + max((e.group for e in self.entries if e.group is not None), default=-1)
        out: list[list[int]] = [[] for _ in range(count)]
        for entry in self.entries:
            if entry.group is not None:
                out[entry.group].append(entry.numel)
        return [g for g in out if g]

    def head_numel(self) -> int:
        """WSP head parameters on this rank (K/tp classes, padded, × (D + 1)); 0 for MAE."""
        return sum(e.numel for e in self.entries if e.name.startswith("head."))


def _local_numel(shape: tuple[int, ...], kind: str | None, tp: int) -> int:
    numel = math.prod(shape)
    if kind is None or tp == 1:
        return numel
    if kind == "vocab":
        return padded_size(shape[0], tp) // tp * math.prod(shape[1:])
    return numel // tp


def build_inventory(cfg: RunConfig, num_classes: int | None = None, tp: int | None = None) -> Inventory:
    """Inventory of ``cfg``'s model for its stage at tensor-parallel size ``tp`` (default ``parallel.tp``).

    ``num_classes`` overrides ``wsp.num_classes`` for WSP. Builds the model on the meta device (no memory)."""
    from maws_scale.model_config import build_model

    tp = tp or cfg.parallel.tp
    model = build_model(cfg, num_classes=num_classes, device="meta")
    groups = param_groups(model, cfg.optim.weight_decay)
    group_of = {name: i for i, g in enumerate(groups) for name in g["names"]}
    shard_decoder = decoder_shardable(model, tp)
    entries = []
    full = 0
    for name, param in model.named_parameters():
        kind = shard_kind(name, shard_decoder) if tp > 1 else None
        shape = tuple(param.shape)
        full += math.prod(shape)
        entries.append(
            ParamEntry(
                name=name,
                numel=_local_numel(shape, kind, tp),
                ndim=len(shape),
                group=group_of.get(name),
                sharded=kind is not None,
            )
        )
    classes = getattr(model, "num_classes", 0) or None
    return Inventory(
        entries=tuple(entries),
        tp=tp,
        full_params=full,
        num_classes=classes,
        decoder_sharded=shard_decoder,
        engine_blocks=engine_block_info(model, tp),
    )
