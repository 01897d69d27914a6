"""The parameters one tensor-parallel rank holds, read off the real model built on the meta device.

The planner needs more than a count: ZeRO partitions each AdamW parameter group separately, in module order, and its
per-rank sizes depend on where partition boundaries fall; ZeRO-3 keeps small vectors resident; the WSP head is
vocab-parallel under TP. So the inventory lists every parameter (name, per-rank element count, ndim, trainable, its
AdamW group from :func:`maws_scale.parallel.optimizer.param_groups`), split over TP ranks by the layout
:mod:`maws_scale.parallel.tp_layout` defines (qkv / fc1 column-split, proj / fc2 weights row-split, the head's classes
padded to a multiple of tp and split, everything else replicated; the MAE decoder is sharded the same way whenever
tp divides its heads and MLP width: ``layout.shards_decoder``, the rule ``parallelize_vit`` applies). The model
is read once (:class:`ModelInventory`); every TP size's inventory follows from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

from torch import nn

from maws_scale.config import RunConfig
from maws_scale.models.registry import DecoderShape
from maws_scale.parallel.ds_config import BlockInfo
from maws_scale.parallel.layout import shards_decoder
from maws_scale.parallel.optimizer import param_groups
from maws_scale.parallel.plan import split_block_info
from maws_scale.parallel.tp_layout import decoder_shape, padded_size, shard_kind


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


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: the planner caches on it
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

    @cached_property
    def numel(self) -> int:
        """Parameters this TP rank holds (sharded slices + replicated)."""
        return sum(e.numel for e in self.entries)

    @cached_property
    def trainable_numel(self) -> int:
        return sum(e.numel for e in self.entries if e.trainable)

    @property
    def frozen(self) -> list[int]:
        return list(self._frozen)

    @cached_property
    def _frozen(self) -> tuple[int, ...]:
        return tuple(e.numel for e in self.entries if not e.trainable)

    def groups(self) -> list[list[int]]:
        """Element counts of the trainable parameters, one list per AdamW group, in the order DeepSpeed flattens."""
        return [list(g) for g in self._groups]

    @cached_property
    def _groups(self) -> tuple[tuple[int, ...], ...]:
        count = 1 + max((e.group for e in self.entries if e.group is not None), default=-1)
        out: list[list[int]] = [[] for _ in range(count)]
        for entry in self.entries:
            if entry.group is not None:
                out[entry.group].append(entry.numel)
        return tuple(tuple(g) for g in out if g)

    def head_numel(self) -> int:
        """WSP head parameters on this rank (K/tp classes, padded, × (D + 1)); 0 for MAE."""
        return self._head_numel

    @cached_property
    def _head_numel(self) -> int:
        return sum(e.numel for e in self.entries if e.name.startswith("head."))


def _local_numel(shape: tuple[int, ...], kind: str | None, tp: int) -> int:
    numel = math.prod(shape)
    if kind is None or tp == 1:
        return numel
    if kind == "vocab":
        return padded_size(shape[0], tp) // tp * math.prod(shape[1:])
    return numel // tp


@dataclass(frozen=True, eq=False)
class ModelInventory:
    """Every parameter of the whole model, read once off the meta-built model: the inventory at any TP size follows
    from it without building the model again (:meth:`at`)."""

    params: tuple[tuple[str, tuple[int, ...], int | None], ...]  # name, full shape, AdamW group (None: frozen)
    num_classes: int | None
    decoder: DecoderShape | None
    blocks: BlockInfo | None

    @classmethod
    def from_model(cls, model: nn.Module, weight_decay: float) -> ModelInventory:
        groups = param_groups(model, weight_decay)
        group_of = {name: i for i, g in enumerate(groups) for name in g["names"]}
        params = tuple((n, tuple(p.shape), group_of.get(n)) for n, p in model.named_parameters())
        blocks = BlockInfo.from_model(model) if getattr(model, "blocks", None) else None
        return cls(params, getattr(model, "num_classes", 0) or None, decoder_shape(model), blocks)

    def at(self, tp: int) -> Inventory:
        """The inventory of one rank of ``tp`` tensor-parallel ranks."""
        return _inventory_at(self, tp)


@lru_cache(maxsize=64)
def _inventory_at(model: ModelInventory, tp: int) -> Inventory:
    shard_decoder = shards_decoder(model.decoder, tp)
    entries = []
    for name, shape, group in model.params:
        kind = shard_kind(name, shard_decoder) if tp > 1 else None
        entries.append(ParamEntry(name, _local_numel(shape, kind, tp), len(shape), group, kind is not None))
    return Inventory(
        entries=tuple(entries),
        tp=tp,
        full_params=sum(math.prod(shape) for _, shape, _ in model.params),
        num_classes=model.num_classes,
        decoder_sharded=shard_decoder,
        engine_blocks=split_block_info(model.blocks, tp) if model.blocks is not None else None,
    )


def build_inventory(cfg: RunConfig, num_classes: int | None = None, tp: int | None = None) -> Inventory:
    """Inventory of ``cfg``'s model for its stage at tensor-parallel size ``tp`` (default ``parallel.tp``).

    ``num_classes`` overrides ``wsp.num_classes`` for WSP. Builds the model on the meta device (no memory)."""
    from maws_scale.model_config import build_model

    model = build_model(cfg, num_classes=num_classes, device="meta")
    return ModelInventory.from_model(model, cfg.optim.weight_decay).at(tp or cfg.parallel.tp)
