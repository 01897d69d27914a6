"""DeepSpeed's checkpoint files: the engine's save, and its load, exact or through a universal checkpoint.

A step checkpoint folder (laid out and marked by ``train/checkpoint.py``) holds what ``engine.save_checkpoint``
writes there: ``mp_rank_<t>_model_states.pt`` (the module; the optimizer too at ZeRO-0), and at ZeRO 1-3 one
``*zero_pp_rank_<r>_mp_rank_<t>_optim_states.pt`` per data-parallel rank. ZeRO 1-3 partition the optimizer state by
data-parallel rank, so a resume on another data-parallel size loads a DeepSpeed *universal checkpoint*, converted
once by rank 0 into ``<checkpoints>/.universal/<tag>`` (a hidden folder beside the step, pruned with it).

An engine's load mode is fixed when it is made (``checkpoint.load_universal`` in its config, see
:func:`universal_config`): an engine started for a universal resume loads every later checkpoint (a rollback target)
through a conversion too, which is valid at any size; an engine started for exact loads refuses a checkpoint of
another data-parallel size rather than reach into DeepSpeed's private config.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

from maws_scale.errors import RunError
from maws_scale.parallel.step_guard import StepGuard, repair_optimizer_after_load
from maws_scale.parallel.waits import DEFAULT_WAIT_MINUTES, wait_for_rank0

UNIVERSAL_DIR = ".universal"
CONVERTED = "converted"  # marker of a finished conversion (JSON: the source checkpoint's marker)


class SavedCheckpoint(Protocol):
    """A complete step checkpoint as the trainer describes it (``train.checkpoint.CheckpointInfo``)."""

    path: Path
    step: int
    meta: dict[str, Any]


def layout_meta(dp_size: int, zero_stage: int) -> dict[str, Any]:
    """What a checkpoint's marker records about the data-parallel layout it was written on."""
    return {"dp_size": dp_size, "zero_stage": zero_stage}


def needs_conversion(meta: dict[str, Any], dp_size: int) -> bool:
    """Whether a checkpoint (its marker ``meta``) loads on ``dp_size`` data-parallel ranks only through a universal
    checkpoint: ZeRO 1-3 written at another data-parallel size."""
    saved_dp = int(meta.get("dp_size", meta.get("world_size", 1)))
    return saved_dp != dp_size and int(meta.get("zero_stage", 0)) >= 1


def universal_config(universal: bool) -> dict[str, Any]:
    """The DeepSpeed config section that makes ``engine.load_checkpoint`` read universal checkpoints (or not)."""
    return {"checkpoint": {"load_universal": universal}}


def client_state(trainer_state: dict[str, Any]) -> dict[str, Any]:
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


def save_engine(engine: Any, parent: Path, tag: str, trainer_state: dict[str, Any]) -> None:
    """Collective: DeepSpeed writes the engine's files (model, optimizer, ``trainer_state`` inside) into
    ``parent/tag``, with no ``latest`` file (the trainer's marker decides what is complete)."""
    engine.save_checkpoint(str(parent), tag=tag, client_state=client_state(trainer_state), save_latest=False)


def universal_path(path: Path) -> Path:
    """Where the universal conversion of step checkpoint ``path`` is kept."""
    return path.parent / UNIVERSAL_DIR / path.name


def convert_to_universal(src: Path, out: Path) -> None:
    """DeepSpeed's ``ds_to_universal`` of checkpoint folder ``src`` into ``out`` (one process)."""
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


def make_universal(checkpoint: SavedCheckpoint, rank: int, wait_minutes: float = DEFAULT_WAIT_MINUTES) -> Path:
    """Collective: rank 0 converts ``checkpoint`` to a universal checkpoint (once; cached beside it) while the others
    wait in a gloo barrier of ``wait_minutes`` (the conversion of a large model outlasts NCCL's timeout)."""
    out = universal_path(checkpoint.path)
    if rank == 0 and not (out / CONVERTED).is_file():
        shutil.rmtree(out, ignore_errors=True)
        convert_to_universal(checkpoint.path, out)
        (out / CONVERTED).write_text(json.dumps(checkpoint.meta))
    wait_for_rank0(wait_minutes)
    return out


def load_engine(
    engine: Any,
    guard: StepGuard,
    checkpoint: SavedCheckpoint,
    *,
    universal: bool,
    dp_size: int,
    rank: int,
    wait_minutes: float = DEFAULT_WAIT_MINUTES,
) -> str:
    """Collective: load ``checkpoint`` (model and optimizer) into ``engine``, whose load mode is ``universal``;
    → how it was loaded, for the log line."""
    if universal:
        path = make_universal(checkpoint, rank, wait_minutes)
        how = "universal checkpoint" + (", new DP size" if needs_conversion(checkpoint.meta, dp_size) else "")
    elif needs_conversion(checkpoint.meta, dp_size):
        raise RunError(
            f"{checkpoint.path} was written on {checkpoint.meta.get('dp_size')} data-parallel ranks and this run has "
            f"{dp_size}; it was started for an exact resume and cannot load it: resume from it explicitly "
            "(checkpoint.resume)"
        )
    else:
        path, how = checkpoint.path, "exact"
    loaded, _ = engine.load_checkpoint(
        str(path.parent), tag=path.name, load_optimizer_states=True, load_lr_scheduler_states=False
    )
    if loaded is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint {path}")
    repair_optimizer_after_load(engine, guard)
    return how
