"""Tensor-parallel ViT / MAE / WSP with megatron-core layers, under DeepSpeed ZeRO over the data-parallel group.

:func:`parallelize_vit` rewrites a plain model in place: in every encoder block (and in the MAE decoder's, see
below) ``attn.qkv`` and ``mlp.fc1`` become megatron ``ColumnParallelLinear`` and ``attn.proj`` and ``mlp.fc2``
``RowParallelLinear`` (wrapped to return a tensor, not megatron's ``(out, bias)``), each rank keeping ``heads / tp``
whole heads (``attn.num_heads`` is set to the local count); the WSP ``head`` becomes a vocab-parallel
ColumnParallelLinear over K padded to a multiple of tp. LayerNorms, embeddings, tokens and pooling stay replicated.
Weights are sharded from the plain model, or initialised directly sharded when it was built on the meta device.
Parameter names stay timm's, so a rank's state dict is the plain one with sharded tensors
(see :mod:`maws_scale.parallel.tp_layout`).

:func:`apply_tensor_parallel` is the engine's entry point: megatron ``parallel_state`` from ``RunConfig``, the model
parallelized and moved to the device, the DeepSpeed ``mpu`` and the vocab-parallel WSP criterion in a
:class:`TensorParallelPlan`.

The MAE decoder is sharded like the encoder whenever tp divides its heads and MLP width (``shard_decoder="auto"``)
and replicated otherwise, so no TP size is refused because of the decoder. Replicating it would leave the decoder's
full work on every rank: at TP=8 that is 28 % of a 2B rank's MAE compute (11 % at 6.5B) that sharding removes, for
26 % (12 %) more all-reduce volume; on CPU the sharded decoder also measured faster (docs/tensor_parallel.md,
benchmarks/bench_tp_decoder.py). ``shard_decoder=False`` keeps it replicated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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

from maws_scale.parallel import megatron_compat
from maws_scale.parallel.mpu import ModelParallelUnit, init_model_parallel
from maws_scale.parallel.tp_checkpoint import (
    consolidate_deepspeed_checkpoint,
    gather_tensor_parallel_state_dict,
    load_plain_state_dict,
    local_shards,
)
from maws_scale.parallel.tp_layout import PARTITION_DIM, Kind, TPLayout, padded_size, shard_state_dict, shard_tensor
from maws_scale.parallel.tp_loss import VocabParallelSoftTargetCE
from maws_scale.parallel.tp_params import TPParamCounts, tp_param_counts

__all__ = [
    "ColumnLinear",
    "RowLinear",
    "TPParamCounts",
    "TensorParallelPlan",
    "apply_tensor_parallel",
    "check_divisible",
    "consolidate_deepspeed_checkpoint",
    "decoder_shardable",
    "gather_tensor_parallel_state_dict",
    "load_plain_state_dict",
    "local_shards",
    "parallelize_vit",
    "shard_state_dict",
    "tp_param_counts",
]


class ColumnLinear(ColumnParallelLinear):
    """megatron ``ColumnParallelLinear`` returning the output tensor (bias added; output stays split)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)[0]


class RowLinear(RowParallelLinear):
    """megatron ``RowParallelLinear`` (input already split) returning the all-reduced output tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)[0]


@dataclass
class TensorParallelPlan:
    """What :func:`apply_tensor_parallel` hands the engine. Pass ``mpu`` to ``deepspeed.initialize``; train WSP with
    ``wsp_criterion(local_logits, full_targets)``; seed data order and replicated-region randomness (drop-path) by
    ``dp_rank`` so the ranks of one TP group see the same batch and draw the same masks."""

    model: nn.Module
    mpu: ModelParallelUnit
    dp_rank: int
    dp_size: int
    tp_rank: int
    tp_size: int
    wsp_criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    layout: TPLayout
    num_classes: int | None = None


# ----- building ------------------------------------------------------------------------------------------------------
def _megatron_config(tp_size: int, dtype: torch.dtype) -> ModelParallelConfig:
    return ModelParallelConfig(
        tensor_model_parallel_size=tp_size,
        use_cpu_initialization=True,
        perform_initialization=False,  # weights are copied from the plain model (or initialised sharded) below
        gradient_accumulation_fusion=False,
        params_dtype=dtype,
    )


def _full_tensors(linear: nn.Linear, init: Callable[[torch.Tensor, torch.Generator], None], seed: int):
    """(weight, bias) of a plain Linear on CPU: its own values, or for a meta Linear a fresh init from ``seed``."""
    if linear.weight.device.type != "meta":
        bias = linear.bias.detach() if linear.bias is not None else None
        return linear.weight.detach(), bias
    generator = torch.Generator().manual_seed(seed)
    weight = torch.empty(linear.weight.shape, dtype=linear.weight.dtype)
    init(weight, generator)
    bias = torch.zeros(linear.bias.shape, dtype=linear.bias.dtype) if linear.bias is not None else None
    return weight, bias


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
        layer.weight.copy_(shard_tensor(weight, kind, tp_rank, tp_size))
        if has_bias:
            layer.bias.copy_(bias if kind == "row" else shard_tensor(bias, kind, tp_rank, tp_size))
    layer.weight.requires_grad_(linear.weight.requires_grad)
    return layer


def _linear_init(model: nn.Module) -> Callable[[torch.Tensor, torch.Generator], None]:
    """The plain model's Linear init, for initialising a meta model's sharded layers: MAE xavier, ViT trunc-normal."""
    from maws_scale.models.mae import MaskedAutoencoder

    if isinstance(model, MaskedAutoencoder):
        return lambda w, g: nn.init.xavier_uniform_(w, generator=g)
    return lambda w, g: nn.init.trunc_normal_(w, std=0.02, generator=g)


def _materialize_replicated(model: nn.Module, seed: int) -> None:
    """Give a meta model's remaining (replicated) tensors CPU storage and the model's own init, identically on all
    ranks (the same seed everywhere: DeepSpeed broadcasts over the data-parallel group only)."""
    if not any(t.device.type == "meta" for t in (*model.parameters(), *model.buffers())):
        return
    for module in model.modules():
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if any(t.device.type == "meta" for t in own):
            module.to_empty(device="cpu", recurse=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.init_weights()  # every replicated tensor; the megatron layers are not nn.Linear and are left alone


def decoder_shardable(model: nn.Module, tp_size: int) -> bool:
    """Whether ``tp_size`` divides the heads and MLP width of every MAE decoder block (False without a decoder)."""
    blocks = getattr(model, "decoder_blocks", None) or []
    return bool(blocks) and all(
        b.attn.num_heads % tp_size == 0 and b.mlp.fc1.out_features % tp_size == 0 for b in blocks
    )


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
    seed: int = 0,
) -> nn.Module:
    """Make ``model`` (ViT encoder, MAE or WSP classifier) tensor-parallel over ``tp_group``, in place; return it.

    ``tp_group`` defaults to megatron's tensor-parallel group. A model on the meta device is initialised directly
    sharded: each sharded Linear's full weight is drawn from a per-layer generator (seed ``seed`` + layer index, so
    all TP ranks agree) and only this rank's shard is kept; replicated tensors get the model's own init under
    ``seed``. ``shard_decoder``: "auto" (shard the MAE decoder when tp divides its heads and MLP width), True (refuse
    when it does not) or False (replicate it). ``model.tp_layout`` records the layout for checkpoints. Raises
    ValueError naming the config key when the TP size does not divide the heads or MLP width of a sharded stack.
    """
    group = tp_group if tp_group is not None else ps.get_tensor_model_parallel_group()
    tp_size = dist.get_world_size(group)
    if shard_decoder == "auto":
        shard_decoder = decoder_shardable(model, tp_size)
    check_divisible(model, tp_size, shard_decoder)
    megatron_compat.install()
    layout = TPLayout.for_state_dict(model.state_dict(), tp_size, shard_decoder)
    init = _linear_init(model)
    layer_seed = seed
    stacks = ["blocks", "decoder_blocks"] if shard_decoder else ["blocks"]
    for attr in stacks:
        for block in getattr(model, attr, None) or []:
            attn, mlp = block.attn, block.mlp
            for owner, name, kind in (
                (attn, "qkv", "qkv"),
                (attn, "proj", "row"),
                (mlp, "fc1", "column"),
                (mlp, "fc2", "row"),
            ):
                linear = getattr(owner, name)
                layer_seed += 1
                setattr(owner, name, _sharded_linear(linear, kind, group, _full_tensors(linear, init, layer_seed)))
            attn.num_heads //= tp_size
    if "head.weight" in layout.shards:
        layer_seed += 1
        model.head = _sharded_linear(model.head, "vocab", group, _full_tensors(model.head, init, layer_seed))
    _materialize_replicated(model, seed)
    model.tp_layout = layout
    return model


def apply_tensor_parallel(model: nn.Module, cfg, info) -> TensorParallelPlan:
    """The engine's TP step: megatron groups from ``cfg.parallel.tp``, ``model`` parallelized on ``info.device``.

    ``cfg`` is a RunConfig, ``info`` the DistInfo of :func:`maws_scale.parallel.distributed.init_distributed`.
    """
    tp = cfg.parallel.tp
    cfg.batch_layout(info.world_size)  # refuses a world size tp does not divide, naming parallel.tp
    mpu = init_model_parallel(tp)
    parallelize_vit(model, ps.get_tensor_model_parallel_group(), seed=cfg.seed)
    model.to(info.device)
    num_classes = None
    criterion = None
    if "head.weight" in model.tp_layout.shards:
        num_classes = model.tp_layout.shards["head.weight"][1][0]
        criterion = VocabParallelSoftTargetCE(num_classes, ps.get_tensor_model_parallel_group())
    return TensorParallelPlan(
        model=model,
        mpu=mpu,
        dp_rank=mpu.get_data_parallel_rank(),
        dp_size=mpu.get_data_parallel_world_size(),
        tp_rank=mpu.get_tensor_model_parallel_rank(),
        tp_size=tp,
        wsp_criterion=criterion,
        layout=model.tp_layout,
        num_classes=num_classes,
    )
