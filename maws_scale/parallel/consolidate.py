"""Consolidation: any step checkpoint → one plain fp32 state dict (``torch.save`` of name → tensor) + JSON sidecar.

One dispatch on what the checkpoint folder holds, whatever the run's config said:

- ``tp_layout.json``: tensor-parallel shards, merged by that layout (``parallel/tp_checkpoint.py``);
- ``bf16_zero_pp_rank_*_optim_states.pt`` written by DeepSpeed's BF16_Optimizer (bf16 ZeRO-1 accumulating in fp32;
  told from ZeRO's own bf16 files by what they hold): its fp32 masters, read by ``parallel/bf16_checkpoint.py``;
- ``[bf16_]zero_pp_rank_*_optim_states.pt``: ZeRO 1-3 partitions, merged by DeepSpeed's ``zero_to_fp32`` (frozen
  tensors, which have no master, from the saved module);
- otherwise (ZeRO-0) the module DeepSpeed saved, with the fp32 masters of a mixed-precision optimizer where present.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from maws_scale.config import ConfigError
from maws_scale.errors import RunError, write_atomic
from maws_scale.files import torch_save, write_text_atomic
from maws_scale.models.state import non_finite_tensors
from maws_scale.parallel.bf16_checkpoint import bf16_optimizer_state, is_bf16_optimizer_checkpoint
from maws_scale.parallel.ds_checkpoint import SavedCheckpoint

MODEL_STATES = "mp_rank_00_model_states.pt"
ZERO_SHARD_RE = re.compile(r"^(bf16_)?zero_pp_rank_\d+_mp_rank_\d+_optim_states\.pt$")


def consolidate_checkpoint(checkpoint: SavedCheckpoint, out: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Offline, in one process: ``checkpoint`` → one plain fp32 state dict ``out`` (+ ``out.json`` with ``meta``, the
    source and the step), written atomically; see the module docstring for what is read."""
    from maws_scale.parallel.tp_layout import LAYOUT_FILE

    path = checkpoint.path
    meta = {**(meta or {}), "source": str(path), "step": checkpoint.step}
    if (path / LAYOUT_FILE).is_file():
        from maws_scale.parallel.tp_checkpoint import consolidate_deepspeed_checkpoint

        state = consolidate_deepspeed_checkpoint(path.parent, tag=path.name)
        return write_state_dict(state, out, {**meta, "from": "offline TP merge"})
    if any(path.glob("*mp_rank_01_*")):
        raise ConfigError(
            f"{path}: the checkpoint holds the shards of several model-parallel ranks but no {LAYOUT_FILE} to merge "
            "them by"
        )
    if is_bf16_optimizer_checkpoint(path):
        module = _saved_module(path)
        state = {**module, **bf16_optimizer_state(path, module)}
    elif any(ZERO_SHARD_RE.match(p.name) for p in path.iterdir()):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name)
        _add_frozen_tensors(path, state)
    else:
        saved = torch.load(path / MODEL_STATES, map_location="cpu", weights_only=False)
        state = dict(saved["module"])
        _use_fp32_masters(saved, state)
    return write_state_dict(state, out, meta)


def _saved_module(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / MODEL_STATES, map_location="cpu", weights_only=False)["module"]


def _add_frozen_tensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Frozen parameters (e.g. MAE's fixed sin-cos position tables) have no fp32 master copy, and ZeRO-1 does not
    record them for zero_to_fp32: take them from the module state DeepSpeed saved beside the optimizer shards."""
    files = sorted(path.glob(f"*{MODEL_STATES}"))
    if not files:
        return
    module = torch.load(files[0], map_location="cpu", weights_only=False).get("module") or {}
    for key, value in module.items():
        if key not in state and torch.is_tensor(value) and value.numel() > 0:
            state[key] = value


def _use_fp32_masters(saved: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """ZeRO-0 with bf16/fp16: the module holds 16-bit weights; DeepSpeed's mixed-precision optimizer keeps the fp32
    masters in ``fp32_groups`` (one list per parameter group, in the order of the names the trainer saved in the
    client state as ``param_group_names``)."""
    optimizer = saved.get("optimizer")
    groups = optimizer.get("fp32_groups") if isinstance(optimizer, dict) else None
    names = (saved.get("trainer") or {}).get("param_group_names")
    if not groups or not names or [len(g) for g in names] != [len(g) for g in groups]:
        return
    for group_names, tensors in zip(names, groups):
        for name, tensor in zip(group_names, tensors):
            if name in state and tuple(state[name].shape) == tuple(tensor.shape):
                state[name] = tensor


def write_state_dict(state: dict[str, torch.Tensor], out: str | Path, meta: dict[str, Any]) -> Path:
    """Save ``state`` as fp32 CPU tensors to ``out`` (atomically) with a JSON sidecar ``out.json``; → ``out``.

    Refuses (RunError, nothing written) weights with non-finite values: they are never a usable result."""
    state = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in state.items()}
    if bad := non_finite_tensors(state):
        raise RunError(
            f"{out}: not written: {len(bad)} of {len(state)} tensors hold non-finite values ({', '.join(bad[:5])}"
            f"{', ...' if len(bad) > 5 else ''}); the run diverged, lower the LR or clip the gradients"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "tensors": len(state), "parameters": int(sum(v.numel() for v in state.values()))}

    def write(tmp: Path) -> None:
        torch_save(state, tmp)
        write_text_atomic(out.with_suffix(".json"), json.dumps(meta, indent=2))

    return write_atomic(out, write, "consolidated weights")
