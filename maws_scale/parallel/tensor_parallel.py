"""Tensor-parallel ViT / MAE / WSP with megatron-core layers, under DeepSpeed ZeRO over the data-parallel group.

:func:`parallelize_vit` rewrites a plain model in place: in every encoder block (and in the MAE decoder's, see
below) ``attn.qkv`` and ``mlp.fc1`` become megatron ``ColumnParallelLinear`` and ``attn.proj`` and ``mlp.fc2``
``RowParallelLinear`` (wrapped to return a tensor, not megatron's ``(out, bias)``), each rank keeping ``heads / tp``
whole heads (``attn.num_heads`` is set to the local count); the WSP ``head`` becomes a vocab-parallel
ColumnParallelLinear over K padded to a multiple of tp. LayerNorms, embeddings, tokens and pooling stay replicated.
Weights are sharded from the plain model, or initialised directly sharded when it was built on the meta device.
Parameter names stay timm's, so a rank's state dict is the plain one with sharded tensors
(see :mod:`maws_scale.parallel.tp_layout`).

:class:`maws_scale.parallel.plan.TensorParallelPlan` is the trainer's entry point: megatron groups, the model built
on meta and parallelized here, the DeepSpeed ``mpu`` and the vocab-parallel WSP criterion.

The MAE decoder is sharded like the encoder whenever tp divides its heads and MLP width (``shard_decoder="auto"``)
and replicated otherwise, so no TP size is refused because of the decoder. Replicating it would leave the decoder's
full work on every rank: at TP=8 that is 28 % of a 2B rank's MAE compute (11 % at 6.5B) that sharding removes, for
26 % (12 %) more all-reduce volume; on CPU the sharded decoder also measured faster (docs/tensor_parallel.md,
benchmarks/bench_tp_decoder.py). ``shard_decoder=False`` keeps it replicated.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.model_parallel_config import ModelParallelConfig
from megatron.core.tensor_parallel.layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    set_tensor_model_parallel_attributes,
)
from torch import nn

from maws_scale.models.init import full_linear
from maws_scale.parallel import patches
from maws_scale.parallel.tp_layout import (
    PARTITION_DIM,
    SHARDED_LAYERS,
    Kind,
    TPLayout,
    copy_shard_,
    decoder_shardable,
    padded_size,
)

__all__ = ["ColumnLinear", "RowLinear", "check_divisible", "parallelize_vit"]


class ColumnLinear(ColumnParallelLinear):
    """megatron ``ColumnParallelLinear`` returning the output tensor (bias added; output stays split)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)[0]


class RowLinear(RowParallelLinear):
    """megatron ``RowParallelLinear`` (input already split) returning the all-reduced output tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)[0]


# ----- building ------------------------------------------------------------------------------------------------------
def _megatron_config(tp_size: int, dtype: torch.dtype) -> ModelParallelConfig:
    return ModelParallelConfig(
        tensor_model_parallel_size=tp_size,
        use_cpu_initialization=True,
        perform_initialization=False,  # weights are copied from the plain model (or initialised sharded) below
        gradient_accumulation_fusion=False,
        params_dtype=dtype,
    )


def _sharded_linear(
    linear: nn.Linear, kind: Kind, group: dist.ProcessGroup, full: tuple[torch.Tensor, torch.Tensor | None]
) -> nn.Module:
    tp_rank, tp_size = dist.get_rank(group), dist.get_world_size(group)
    weight, bias = full
    config = _megatron_config(tp_size, weight.dtype)
    has_bias = linear.bias is not None
    if kind == "row":
        layer: nn.Module = RowLinear(
            linear.in_features,
            linear.out_features,
            config=config,
            init_method=nn.init.zeros_,
            bias=has_bias,
            input_is_parallel=True,
            skip_bias_add=False,
            tp_group=group,
        )
    else:
        out_features = padded_size(linear.out_features, tp_size) if kind == "vocab" else linear.out_features
        layer = ColumnLinear(
            linear.in_features,
            out_features,
            config=config,
            init_method=nn.init.zeros_,
            bias=has_bias,
            gather_output=False,
            tp_group=group,
        )
    # megatron marks weights as tensor-parallel only in its own init paths (skipped here): DeepSpeed's grad norm and
    # megatron's param_is_not_tensor_parallel_duplicate read these attributes.
    set_tensor_model_parallel_attributes(layer.weight, True, PARTITION_DIM[kind], 1)
    with torch.no_grad():
        copy_shard_(layer.weight, weight, kind, tp_rank, tp_size)
        if has_bias:
            if kind == "row":
                layer.bias.copy_(bias)
            else:
                copy_shard_(layer.bias, bias, kind, tp_rank, tp_size)
    layer.weight.requires_grad_(linear.weight.requires_grad)
    return layer


def trim_host_heap() -> bool:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``; False where there is none). Building layer after
    layer leaves freed temporaries between the kept shards, which glibc keeps resident: +0.4-0.9 GiB per rank for
    vit_2b14 at TP=2 without this (benchmarks/bench_model_build.py)."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if not _MALLOC_TRIM:
        return False
    _MALLOC_TRIM(0)
    return True


_MALLOC_TRIM = None


def _scratch(model: nn.Module, layout: TPLayout) -> torch.Tensor | None:
    """A CPU buffer as large as the largest sharded weight of a meta model (None when the model has values)."""
    if not any(p.device.type == "meta" for p in model.parameters()):
        return None
    largest = max((math.prod(shape) for _, shape in layout.shards.values()), default=0)
    return torch.empty(largest, dtype=next(model.parameters()).dtype)


def _materialize_replicated(model: nn.Module) -> None:
    """Give a meta model's remaining (replicated) tensors CPU storage and the model's own init: the values of the
    unsharded model, identical on every rank (each tensor from its name-keyed generator, ``models/init.py``)."""
    if not any(t.device.type == "meta" for t in (*model.parameters(), *model.buffers())):
        return
    for module in model.modules():
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if any(t.device.type == "meta" for t in own):
            module.to_empty(device="cpu", recurse=False)
    model.init_weights()  # every replicated tensor; the megatron layers are not nn.Linear and are left alone


def check_divisible(model: nn.Module, tp_size: int, shard_decoder: bool = False) -> None:
    """Raise ValueError naming the config key when ``tp_size`` does not divide the heads or MLP width of a block that
    :func:`parallelize_vit` would shard (the encoder's, and the MAE decoder's with ``shard_decoder``)."""
    stacks = [("blocks", "parallel.tp", "the encoder")]
    if shard_decoder:
        stacks.append(("decoder_blocks", "mae.decoder_heads", "the MAE decoder"))
    for attr, key, what in stacks:
        for block in getattr(model, attr, None) or []:
            heads, hidden = block.attn.num_heads, block.mlp.fc1.out_features
            if heads % tp_size:
                raise ValueError(f"{key}: tensor-parallel size {tp_size} does not divide the {heads} heads of {what}")
            if hidden % tp_size:
                raise ValueError(
                    f"{key}: tensor-parallel size {tp_size} does not divide the MLP width {hidden} of {what}"
                )


def parallelize_vit(
    model: nn.Module,
    tp_group: dist.ProcessGroup | None = None,
    *,
    shard_decoder: bool | str = "auto",
    device: torch.device | str | None = None,
) -> nn.Module:
    """Make ``model`` (ViT encoder, MAE or WSP classifier) tensor-parallel over ``tp_group``, in place; return it.

    ``tp_group`` defaults to megatron's tensor-parallel group. A model on the meta device is initialised directly
    sharded, exactly as the unsharded model would be: each sharded Linear's full weight is drawn (on the CPU, one
    layer at a time) from the generator the plain model uses for it (``models/init.py``) and only this rank's shard
    is kept; replicated tensors get the model's own init. ``device``: where the result goes (default: stays on the
    CPU). ``shard_decoder``: "auto" (shard the MAE decoder when tp divides its heads and MLP width), True (refuse
    when it does not) or False (replicate it). ``model.tp_layout`` records the layout for checkpoints. Raises
    ValueError naming the config key when the TP size does not divide the heads or MLP width of a sharded stack.
    """
    group = tp_group if tp_group is not None else ps.get_tensor_model_parallel_group()
    tp_size = dist.get_world_size(group)
    if shard_decoder == "auto":
        shard_decoder = decoder_shardable(model, tp_size)
    check_divisible(model, tp_size, shard_decoder)
    patches.install_megatron_cpu()
    layout = TPLayout.for_state_dict(model.state_dict(), tp_size, shard_decoder)
    stacks = ["blocks", "decoder_blocks"] if shard_decoder else ["blocks"]
    # one scratch buffer for the full weight of each meta layer in turn: drawing them into fresh tensors leaves the
    # allocator's heap fragmented (measured: +1.5 GiB per rank building vit_2b14 at TP=2)
    scratch = _scratch(model, layout)
    for attr in stacks:
        for index, block in enumerate(getattr(model, attr, None) or []):
            for path, kind in SHARDED_LAYERS.items():
                owner_name, name = path.split(".")
                owner = getattr(block, owner_name)
                linear = getattr(owner, name)
                full = full_linear(model, f"{attr}.{index}.{path}", linear, out=scratch)
                setattr(owner, name, _sharded_linear(linear, kind, group, full))
            block.attn.num_heads //= tp_size
            if scratch is not None:
                trim_host_heap()
    if "head.weight" in layout.shards:
        full = full_linear(model, "head", model.head, out=scratch)
        model.head = _sharded_linear(model.head, "vocab", group, full)
    _materialize_replicated(model)
    if device is not None:
        model.to(device)
    model.tp_layout = layout
    return model
