"""Consolidating checkpoints of DeepSpeed's ``BF16_Optimizer``.

DeepSpeed 0.19.8 drives ZeRO-1 with a bf16 model and fp32 gradient accumulation (our default) through its
``BF16_Optimizer``, whose shards (``bf16_zero_pp_rank_<r>_mp_rank_00_optim_states.pt``) ``zero_to_fp32`` does not
read. Each shard holds this rank's slice of the fp32 masters per parameter group
(``single_partition_of_fp32_groups``) and where each parameter's fragment lies in it (``param_slice_mappings``);
a parameter's fragments, taken in rank order, are its flat fp32 values.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

SHARD_RE = re.compile(r"^bf16_zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$")


def bf16_optimizer_shards(path: Path) -> list[Path]:
    """The BF16_Optimizer shards of checkpoint ``path`` in rank order (empty for any other optimizer)."""
    found = {int(m.group(1)): p for p in path.iterdir() if (m := SHARD_RE.match(p.name))}
    if found and sorted(found) != list(range(len(found))):
        raise ValueError(f"{path}: BF16_Optimizer shards of ranks {sorted(found)} (a rank's shard is missing)")
    return [found[r] for r in sorted(found)]


def is_bf16_optimizer_checkpoint(path: Path) -> bool:
    """Whether checkpoint folder ``path`` holds BF16_Optimizer shards. Every bf16 ZeRO run names its optimizer files
    ``bf16_zero_pp_rank_*``; ZeRO 1-3's own optimizers record their ``zero_stage`` inside, BF16_Optimizer does not."""
    shards = bf16_optimizer_shards(path)
    if not shards:
        return False
    from deepspeed.checkpoint.constants import OPTIMIZER_STATE_DICT, ZERO_STAGE

    state = torch.load(shards[0], map_location="cpu", weights_only=False, mmap=True)[OPTIMIZER_STATE_DICT]
    return ZERO_STAGE not in state


def bf16_optimizer_state(path: Path, module: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp32 masters of every trained parameter, shaped like ``module`` (the module state DeepSpeed saved)."""
    fragments: dict[str, list[torch.Tensor]] = {}
    for shard in bf16_optimizer_shards(path):
        state = torch.load(shard, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        for flat, mapping in zip(state["single_partition_of_fp32_groups"], state["param_slice_mappings"]):
            for name, address in mapping.items():
                fragments.setdefault(name, []).append(flat.narrow(0, address.start, address.numel))
    out: dict[str, torch.Tensor] = {}
    for name, parts in fragments.items():
        if name not in module:
            raise ValueError(f"{path}: the optimizer holds '{name}', which the saved module does not have")
        values = torch.cat(parts)
        if values.numel() != module[name].numel():
            raise ValueError(f"{path}: '{name}' has {values.numel()} fp32 values for shape {tuple(module[name].shape)}")
        out[name] = values.reshape(module[name].shape).clone()
    return out
