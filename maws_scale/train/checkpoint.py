"""Checkpoints for exact resume, written atomically; consolidation to one fp32 state dict.

Layout of ``checkpoint.dir`` (one per stage)::

    step_00000200/            a complete checkpoint (renamed into place only once every rank has written)
        complete              marker (JSON: step, world layout, time)
        trainer_state.pt      step, schedule, data-loader position, counters (also in DeepSpeed's client_state)
        mp_rank_00_model_states.pt, *optim_states.pt   DeepSpeed's save_checkpoint (client_state inside)
        rank_00000.pt         per-rank state: RNG (torch, CUDA, numpy, python) and the data loader
    .tmp-step_00000300/       a save in progress (ignored, removed by the next save)
    .universal/step_00000200/ DeepSpeed universal checkpoint, made on demand for a resume on another DP size

A save writes into ``.tmp-<tag>/<tag>``, every rank barriers, rank 0 writes ``complete`` (with the size of every
file) and renames the directory into place; ``resume: auto`` takes the newest directory with a marker whose files
are intact, warning about (and passing over) damaged ones. Checkpoints assume a file system shared by all ranks (as
DeepSpeed's own ``save_checkpoint`` does).

Health: a checkpoint is *healthy* once the optimizer step after it was finite (a ``healthy`` file is added then).
The trainer never saves during a non-finite streak, rolls back only to the newest healthy checkpoint, and pruning
(``keep_last``) always keeps the newest healthy one.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from maws_scale.config import ConfigError
from maws_scale.errors import RunError, write_atomic, write_error
from maws_scale.models.state import non_finite_tensors, save_torch_file
from maws_scale.parallel.waits import DEFAULT_WAIT_MINUTES, wait_for_rank0
from maws_scale.train.bf16_checkpoint import bf16_optimizer_shards, bf16_optimizer_state

log = logging.getLogger("maws_scale.train")

MARKER = "complete"
HEALTHY = "healthy"
TAG_RE = re.compile(r"^step_(\d+)$")
TMP_PREFIX = ".tmp-"
UNIVERSAL_DIR = ".universal"
TRAINER_STATE = "trainer_state.pt"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


# ----- RNG --------------------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, on this rank."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----- checkpoint records -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint on disk and what its marker says."""

    path: Path
    step: int
    meta: dict[str, Any]

    @property
    def world_size(self) -> int:
        return int(self.meta.get("world_size", 1))

    @property
    def dp_size(self) -> int:
        return int(self.meta.get("dp_size", self.world_size))

    @property
    def zero_stage(self) -> int:
        return int(self.meta.get("zero_stage", 0))

    @property
    def healthy(self) -> bool:
        return (self.path / HEALTHY).is_file()

    def damage(self) -> str | None:
        """None when every file the marker lists has its recorded size and the trainer state loads, else what is
        wrong (markers written before sizes were recorded are only checked for the trainer state)."""
        for name, size in dict(self.meta.get("files", {})).items():
            path = self.path / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != int(size):
                return f"{name} has {path.stat().st_size} bytes, {size} when saved"
        if (self.path / TRAINER_STATE).is_file():
            try:
                torch.load(self.path / TRAINER_STATE, map_location="cpu", weights_only=False)
            except Exception as err:  # a damaged pickle/zip raises many types
                return f"{TRAINER_STATE} does not load ({type(err).__name__}: {err})"
        return None


def read_checkpoint(path: str | Path) -> CheckpointInfo:
    """Describe a complete checkpoint directory or raise ConfigError naming ``checkpoint.resume``."""
    path = Path(path)
    marker = path / MARKER
    if not marker.is_file():
        raise ConfigError(f"checkpoint.resume: {path} is not a complete checkpoint (no '{MARKER}' marker)")
    try:
        meta = json.loads(marker.read_text())
        return CheckpointInfo(path=path, step=int(meta["step"]), meta=meta)
    except (ValueError, KeyError, TypeError, OverflowError) as err:  # a damaged marker: a ValueError still
        raise ConfigError(f"checkpoint.resume: {marker}: unreadable marker ({type(err).__name__}: {err})") from None


class CheckpointManager:
    """Atomic save, keep-last-k, and discovery of checkpoints under ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path, keep_last: int = 3) -> None:
        self.root = Path(root)
        self.keep_last = keep_last

    # ----- discovery ----------------------------------------------------------------------------------------------
    def complete(self) -> list[CheckpointInfo]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            if child.is_dir() and TAG_RE.match(child.name) and (child / MARKER).is_file():
                try:
                    found.append(read_checkpoint(child))
                except (ValueError, KeyError, OSError) as err:
                    log.warning("ignoring checkpoint %s: unreadable marker (%s)", child, err)
        return sorted(found, key=lambda info: info.step)

    def latest(self) -> CheckpointInfo | None:
        """The newest complete checkpoint, or None."""
        found = self.complete()
        return found[-1] if found else None

    def latest_healthy(self) -> CheckpointInfo | None:
        """The newest checkpoint the trainer confirmed healthy (see the module docstring), or None."""
        found = [info for info in self.complete() if info.healthy]
        return found[-1] if found else None

    def resolve(self, resume: str | None) -> CheckpointInfo | None:
        """``checkpoint.resume``: None → start fresh; 'auto' → newest intact complete one (or fresh); a path → that
        one (refused when damaged)."""
        if resume is None:
            return None
        if resume == "auto":
            for info in reversed(self.complete()):
                problem = info.damage()
                if problem is None:
                    return info
                log.warning("checkpoint %s is damaged (%s); falling back to the previous one", info.path, problem)
            return None
        info = read_checkpoint(resume)
        if (problem := info.damage()) is not None:
            raise ConfigError(f"checkpoint.resume: {info.path} is damaged ({problem})")
        return info

    def mark_healthy(self, path: Path) -> None:
        """Record that the step after checkpoint ``path`` was finite (rank 0 writes; no collective)."""
        if _rank() == 0 and path.is_dir() and not (path / HEALTHY).is_file():
            _write_atomic(path / HEALTHY, json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S")}))

    # ----- saving -------------------------------------------------------------------------------------------------
    def save(
        self,
        engine: Any,
        step: int,
        trainer_state: dict[str, Any],
        rank_state: dict[str, Any],
        meta: dict[str, Any],
        files: dict[str, str] | None = None,
    ) -> Path:
        """Collective: every rank calls it. ``trainer_state`` (step, schedule, loader, counters; rank 0's) goes into
        DeepSpeed's client_state and ``trainer_state.pt``; ``rank_state`` and the RNG states into ``rank_NNNNN.pt``;
        ``files`` (name → text, e.g. the parallel layout) beside them, listed in the marker like the rest.
        Returns the final checkpoint directory."""
        tag = tag_for(step)
        tmp_parent = self.root / f"{TMP_PREFIX}{tag}"
        final = self.root / tag
        rank = _rank()
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(f"{TMP_PREFIX}*"):
                shutil.rmtree(stale, ignore_errors=True)  # a save killed half-way
            tmp_parent.mkdir()
        _barrier()
        try:
            client = _client_state(trainer_state)
            engine.save_checkpoint(str(tmp_parent), tag=tag, client_state=client, save_latest=False)
            save_torch_file({**rank_state, "rng": rng_state()}, tmp_parent / tag / f"rank_{rank:05d}.pt")
        except (OSError, RuntimeError) as err:  # disk full: torch names neither the cause nor the file
            raise write_error(tmp_parent / tag, err, "checkpoint") from err
        _barrier()
        if rank == 0:
            try:
                save_torch_file(trainer_state, tmp_parent / tag / TRAINER_STATE)
                for name, text in (files or {}).items():
                    (tmp_parent / tag / name).write_text(text)
                files = {p.name: p.stat().st_size for p in sorted((tmp_parent / tag).iterdir()) if p.is_file()}
                marker = {**meta, "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "files": files}
                _write_atomic(tmp_parent / tag / MARKER, json.dumps(marker, indent=2))
            except (OSError, RuntimeError) as err:
                raise write_error(tmp_parent / tag, err, "checkpoint") from err
            if final.exists():  # e.g. the same step reached again after a rollback
                shutil.rmtree(final)
            os.replace(tmp_parent / tag, final)
            shutil.rmtree(tmp_parent)  # DeepSpeed also drops its zero_to_fp32.py script there
            self.prune(step)
        _barrier()
        return final

    def prune(self, current: int | None = None) -> None:
        """Delete all but the newest ``keep_last`` complete checkpoints (and their universal conversions); the newest
        healthy checkpoint is always kept, the rollback target after a divergence. With ``current`` (the step just
        saved), checkpoints past it go first: they belong to an abandoned attempt (a resume from an older
        checkpoint), and keeping them would make keep-last delete the checkpoint just written."""
        found = self.complete()
        if current is not None:
            stale = [info for info in found if info.step > current]
            found = [info for info in found if info.step <= current]
            for info in stale:
                shutil.rmtree(info.path, ignore_errors=True)
                shutil.rmtree(self.root / UNIVERSAL_DIR / info.path.name, ignore_errors=True)
        healthy = self.latest_healthy()
        for info in found[: max(0, len(found) - self.keep_last)]:
            if healthy is not None and info.path == healthy.path:
                continue
            shutil.rmtree(info.path, ignore_errors=True)
            shutil.rmtree(self.root / UNIVERSAL_DIR / info.path.name, ignore_errors=True)

    # ----- loading ------------------------------------------------------------------------------------------------
    def universal_path(self, info: CheckpointInfo) -> Path:
        return info.path.parent / UNIVERSAL_DIR / info.path.name

    def make_universal(self, info: CheckpointInfo, wait_minutes: float = DEFAULT_WAIT_MINUTES) -> Path:
        """Collective: rank 0 converts ``info`` to a DeepSpeed universal checkpoint (once; cached beside it) while the
        others wait in a gloo barrier of ``wait_minutes`` (the conversion of a large model outlasts NCCL's timeout)."""
        out = self.universal_path(info)
        if _rank() == 0 and not (out / MARKER).is_file():
            shutil.rmtree(out, ignore_errors=True)
            _convert_to_universal(info.path, out)
            (out / MARKER).write_text(json.dumps(info.meta))
        wait_for_rank0(wait_minutes)
        return out


def _client_state(trainer_state: dict[str, Any]) -> dict[str, Any]:
    """DeepSpeed client_state: our trainer state, plus the universal-checkpoint info DeepSpeed's converter requires
    (no tensor-parallel slicing patterns: parameters are whole within each model-parallel rank)."""
    from deepspeed.checkpoint.constants import (
        UNIVERSAL_CHECKPOINT_INFO,
        UNIVERSAL_CHECKPOINT_VERSION_KEY,
        UNIVERSAL_CHECKPOINT_VERSION_VALUE,
    )

    return {
        "trainer": trainer_state,
        UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE},
    }


def load_trainer_state(info: CheckpointInfo) -> dict[str, Any]:
    """Step, schedule, loader position and counters saved with the checkpoint."""
    return torch.load(info.path / TRAINER_STATE, map_location="cpu", weights_only=False)


def load_rank_state(info: CheckpointInfo, rank: int) -> dict[str, Any] | None:
    """This rank's saved state (RNG, loader), or None when the checkpoint was written by fewer ranks."""
    path = info.path / f"rank_{rank:05d}.pt"
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def _convert_to_universal(src: Path, out: Path) -> None:
    from argparse import Namespace

    from deepspeed.checkpoint import ds_to_universal

    args = Namespace(
        input_folder=str(src),
        output_folder=str(out),
        num_extract_workers=max(1, min(4, (os.cpu_count() or 2) // 2)),
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=False,
    )
    ds_to_universal.main(args)


def _write_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


# ----- consolidation ----------------------------------------------------------------------------------------------
CONSOLIDATED = "consolidated.pt"


def consolidate(info: CheckpointInfo, out: str | Path, extra_meta: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint's model as one fp32 state dict (``torch.save`` of name → tensor) plus a JSON sidecar.

    ZeRO 1-3: ``deepspeed.utils.zero_to_fp32`` merges the fp32 master partitions (DeepSpeed's BF16_Optimizer, used
    for bf16 ZeRO-1 with fp32 accumulation: :mod:`maws_scale.train.bf16_checkpoint`). ZeRO 0: the module state saved
    by DeepSpeed (fp32 runs keep fp32 weights there). Runs on one process; the file appears atomically.
    """
    if any(info.path.glob("*mp_rank_01_*")):
        raise ConfigError(
            f"{info.path}: the checkpoint holds the shards of several model-parallel ranks; consolidate it with "
            "`maws-scale export` (maws_scale.parallel.plan.consolidate_checkpoint), which merges them by its layout"
        )
    if info.zero_stage in (1, 2) and bf16_optimizer_shards(info.path):  # ZeRO-1, bf16, fp32 accumulation
        module = torch.load(info.path / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
        state = {**module, **bf16_optimizer_state(info.path, module)}
    elif info.zero_stage >= 1:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(info.path.parent), tag=info.path.name)
        _add_frozen_tensors(info, state)
    else:
        saved = torch.load(info.path / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        state = dict(saved["module"])
        _use_fp32_masters(info, saved, state)
    meta = {**(extra_meta or {}), "source": str(info.path), "step": info.step}
    return write_state_dict(state, out, meta)


def _add_frozen_tensors(info: CheckpointInfo, state: dict[str, torch.Tensor]) -> None:
    """Frozen parameters (e.g. MAE's fixed sin-cos position tables) have no fp32 master copy, and ZeRO-1 does not
    record them for zero_to_fp32: take them from the module state DeepSpeed saved beside the optimizer shards."""
    files = sorted(info.path.glob("*mp_rank_00_model_states.pt"))
    if not files:
        return
    module = torch.load(files[0], map_location="cpu", weights_only=False).get("module") or {}
    for key, value in module.items():
        if key not in state and torch.is_tensor(value) and value.numel() > 0:
            state[key] = value


def write_state_dict(state: dict[str, torch.Tensor], out: str | Path, meta: dict[str, Any]) -> Path:
    """Save ``state`` as fp32 CPU tensors to ``out`` (atomically) with a JSON sidecar ``out.json``; → ``out``.

    Refuses (RuntimeError, nothing written) weights with non-finite values: they are never a usable result."""
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
        save_torch_file(state, tmp)
        _write_atomic(out.with_suffix(".json"), json.dumps(meta, indent=2))

    return write_atomic(out, write, "consolidated weights")


def _use_fp32_masters(info: CheckpointInfo, saved: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """ZeRO-0 with bf16/fp16: the module holds 16-bit weights; DeepSpeed's mixed-precision optimizer keeps the fp32
    masters in ``fp32_groups`` (one list per parameter group, in the order the trainer recorded)."""
    optimizer = saved.get("optimizer")
    groups = optimizer.get("fp32_groups") if isinstance(optimizer, dict) else None
    path = info.path / TRAINER_STATE
    if not groups or not path.is_file():
        return
    names = torch.load(path, map_location="cpu", weights_only=False).get("param_group_names")
    if not names or [len(g) for g in names] != [len(g) for g in groups]:
        return
    for group_names, tensors in zip(names, groups):
        for name, tensor in zip(group_names, tensors):
            if name in state and tuple(state[name].shape) == tuple(tensor.shape):
                state[name] = tensor
