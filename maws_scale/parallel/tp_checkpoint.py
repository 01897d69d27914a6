"""Tensor-parallel checkpoints: consolidate to the plain (timm-named) state dict, and load a plain one at any TP size.

Online, from a live TP model (ZeRO-3-partitioned or not): :func:`gather_tensor_parallel_state_dict`. Offline, from
a DeepSpeed checkpoint directory written with our mpu (one ``*mp_rank_XX*`` file set per TP rank, each ZeRO-sharded
over DP): :func:`consolidate_deepspeed_checkpoint` runs DeepSpeed's own ``zero_to_fp32`` once per TP rank and merges
the ranks with the ``tp_layout.json`` saved beside them. ``zero_to_fp32`` alone cannot: it takes every
``*_optim_states.pt`` of the directory for one data-parallel group.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from torch import nn

from maws_scale.parallel.tp_layout import LAYOUT_FILE, TPLayout, merge_shards, merge_state_dicts, shard_state_dict


def _local_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """This rank's full TP-local tensors by plain name, gathering ZeRO-3 partitions over the data-parallel group."""
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    params = dict(model.named_parameters())
    if not any(hasattr(p, "ds_id") for p in params.values()):
        return {k: v.detach() for k, v in state.items()}
    import deepspeed

    out = {}
    for name, value in state.items():
        param = params.get(name)
        if param is not None and hasattr(param, "ds_id"):
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                out[name] = param.detach().clone()
        else:
            out[name] = value.detach()
    return out


def gather_tensor_parallel_state_dict(
    model: nn.Module, tp_group: dist.ProcessGroup | None = None, dst: int | None = 0
) -> dict[str, torch.Tensor]:
    """The plain (timm-named, unpadded) state dict of a TP model, on CPU.

    Collective over ``tp_group`` (and, for a ZeRO-3-partitioned model, its data-parallel group): every rank calls
    it. ``dst``: the TP-group rank that receives the result (the others get ``{}``), or None for every rank.
    """
    group = tp_group if tp_group is not None else ps.get_tensor_model_parallel_group()
    layout: TPLayout = model.tp_layout
    tp_rank, tp_size = dist.get_rank(group), dist.get_world_size(group)
    receives = dst is None or tp_rank == dst
    out = {}
    for name, tensor in _local_tensors(model).items():
        spec = layout.shards.get(name)
        if spec is None:
            if receives:
                out[name] = tensor.cpu().clone()
            continue
        local = tensor.contiguous()
        parts = [torch.empty_like(local) for _ in range(tp_size)] if receives else None
        if dst is None:
            dist.all_gather(parts, local, group=group)
        else:
            dist.gather(local, parts, dst=dist.get_global_rank(group, dst), group=group)
        if receives:
            out[name] = merge_shards([p.cpu() for p in parts], *spec)
    return out


def local_shards(
    model: nn.Module, state_dict: dict[str, torch.Tensor], tp_group: dist.ProcessGroup | None = None
) -> dict[str, torch.Tensor]:
    """This rank's part of a plain (timm-named) state dict for ``model``: shards where ``model`` is tensor-parallel,
    the tensors themselves elsewhere, and ``state_dict`` unchanged for a model that is not tensor-parallel."""
    layout: TPLayout | None = getattr(model, "tp_layout", None)
    if layout is None:
        return dict(state_dict)
    group = tp_group if tp_group is not None else ps.get_tensor_model_parallel_group()
    return shard_state_dict(state_dict, layout, dist.get_rank(group))


def load_plain_state_dict(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    tp_group: dist.ProcessGroup | None = None,
    strict: bool = True,
):
    """Load a plain (timm-named) state dict, saved at any TP size, into this TP model; before ZeRO wraps it."""
    return model.load_state_dict(local_shards(model, state_dict, tp_group), strict=strict)


def _read_tag(checkpoint_dir: Path, tag: str | None) -> str:
    if tag is not None:
        return tag
    latest = checkpoint_dir / "latest"
    if not latest.is_file():
        raise FileNotFoundError(f"{latest}: no 'latest' file; pass the checkpoint tag")
    return latest.read_text().strip()


def consolidate_deepspeed_checkpoint(
    checkpoint_dir: str | os.PathLike, tag: str | None = None, layout: TPLayout | None = None
) -> dict[str, torch.Tensor]:
    """The plain fp32 state dict of a DeepSpeed (ZeRO-1/2/3) checkpoint saved with tensor parallelism; one process.

    ``checkpoint_dir`` is what was passed to ``engine.save_checkpoint`` (``tag`` defaults to its ``latest``).
    ``layout`` defaults to ``tp_layout.json`` in the tag directory or in ``checkpoint_dir``.
    """

    root = Path(checkpoint_dir)
    tag = _read_tag(root, tag)
    tag_dir = root / tag
    if layout is None:
        layout = TPLayout.load(tag_dir if (tag_dir / LAYOUT_FILE).exists() else root)
    files = sorted(p for p in tag_dir.iterdir() if p.suffix == ".pt")
    ranks = []
    for tp_rank in range(layout.tp_size):
        pattern = re.compile(rf"(^|_)mp_rank_{tp_rank:02d}_")
        mine = [p for p in files if pattern.search(p.name)]
        if not mine:
            raise FileNotFoundError(f"{tag_dir}: no files of tensor-parallel rank {tp_rank} (mp_rank_{tp_rank:02d})")
        ranks.append(_rank_state(tag, mine))
    return merge_state_dicts(ranks, layout)


def _rank_state(tag: str, files: list[Path]) -> dict[str, torch.Tensor]:
    """One TP rank's full (data-parallel-merged) fp32 state: DeepSpeed's ``zero_to_fp32`` over that rank's optimizer
    shards (ZeRO 1-3), plus the tensors without a master copy (frozen ones, e.g. MAE's fixed position tables) from its
    module state; ZeRO-0 keeps the weights in the module state itself."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    model_files = [p for p in files if p.name.endswith("model_states.pt")]
    module = torch.load(model_files[0], map_location="cpu", weights_only=False).get("module") or {}
    if not any(p.name.endswith("optim_states.pt") for p in files):  # ZeRO-0: the module holds the weights
        return {k: v for k, v in module.items() if torch.is_tensor(v) and not k.endswith("_extra_state")}
    with tempfile.TemporaryDirectory() as tmp:
        view = Path(tmp) / tag
        view.mkdir()
        for path in files:
            (view / path.name).symlink_to(path.resolve())
        state = get_fp32_state_dict_from_zero_checkpoint(tmp, tag=tag)
    for key, value in module.items():
        if key not in state and torch.is_tensor(value) and value.numel() > 0 and not key.endswith("_extra_state"):
            state[key] = value
    return state
