"""The trainer's checkpoints: the step folders, their markers and health, the trainer's own state, written atomically.

Layout of ``checkpoint.dir`` (one per stage)::

    step_00000200/            a complete checkpoint (renamed into place only once every rank has written)
        complete              marker (JSON: step, world layout, time)
        trainer_state.pt      step, schedule, data-loader position, counters (also in DeepSpeed's client_state)
        rank_00000.pt         per-rank state: RNG (torch, CUDA, numpy, python) and the data loader
        ...                   the engine's own files, written by the ``write_engine`` the trainer passes to
                              :meth:`CheckpointManager.save` (only ``parallel/`` knows their format)
    .tmp-step_00000300/       a save in progress (ignored, removed by the next save)
    .<kind>/step_00000200/    a copy derived from ``step_00000200`` by parallel/ (e.g. a conversion for another
                              layout); deleted with the checkpoint it was made from

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from maws_scale.config import ConfigError
from maws_scale.errors import write_error
from maws_scale.files import torch_save, write_text_atomic

log = logging.getLogger("maws_scale.train")

MARKER = "complete"
HEALTHY = "healthy"
TAG_RE = re.compile(r"^step_(\d+)$")
TMP_PREFIX = ".tmp-"
TRAINER_STATE = "trainer_state.pt"
CONSOLIDATED = "consolidated.pt"  # a stage's final weights, one plain fp32 state dict


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
            write_text_atomic(path / HEALTHY, json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S")}))

    # ----- saving -------------------------------------------------------------------------------------------------
    def save(
        self,
        write_engine: Callable[[Path, str], None],
        step: int,
        trainer_state: dict[str, Any],
        rank_state: dict[str, Any],
        meta: dict[str, Any],
        files: dict[str, str] | None = None,
    ) -> Path:
        """Collective: every rank calls it. ``write_engine(parent, tag)`` writes the engine's files into ``parent/tag``
        (every rank); ``trainer_state`` (step, schedule, loader, counters; rank 0's) goes into ``trainer_state.pt``;
        ``rank_state`` and the RNG states into ``rank_NNNNN.pt``;
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
            write_engine(tmp_parent, tag)
            torch_save({**rank_state, "rng": rng_state()}, tmp_parent / tag / f"rank_{rank:05d}.pt")
        except (OSError, RuntimeError) as err:  # disk full: torch names neither the cause nor the file
            raise write_error(tmp_parent / tag, err, "checkpoint") from err
        _barrier()
        if rank == 0:
            try:
                torch_save(trainer_state, tmp_parent / tag / TRAINER_STATE)
                for name, text in (files or {}).items():
                    (tmp_parent / tag / name).write_text(text)
                files = {p.name: p.stat().st_size for p in sorted((tmp_parent / tag).iterdir()) if p.is_file()}
                marker = {**meta, "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "files": files}
                write_text_atomic(tmp_parent / tag / MARKER, json.dumps(marker, indent=2))
            except (OSError, RuntimeError) as err:
                raise write_error(tmp_parent / tag, err, "checkpoint") from err
            if final.exists():  # e.g. the same step reached again after a rollback
                shutil.rmtree(final)
            os.replace(tmp_parent / tag, final)
            shutil.rmtree(tmp_parent)  # the engine may drop more there (DeepSpeed: its zero_to_fp32.py script)
            self.prune(step)
        _barrier()
        return final

    def prune(self, current: int | None = None) -> None:
        """Delete all but the newest ``keep_last`` complete checkpoints (and the copies derived from them); the newest
        healthy checkpoint is always kept, the rollback target after a divergence. With ``current`` (the step just
        saved), checkpoints past it go first: they belong to an abandoned attempt (a resume from an older
        checkpoint), and keeping them would make keep-last delete the checkpoint just written."""
        found = self.complete()
        if current is not None:
            stale = [info for info in found if info.step > current]
            found = [info for info in found if info.step <= current]
            for info in stale:
                self._delete(info)
        healthy = self.latest_healthy()
        for info in found[: max(0, len(found) - self.keep_last)]:
            if healthy is not None and info.path == healthy.path:
                continue
            self._delete(info)

    def _delete(self, info: CheckpointInfo) -> None:
        """Delete checkpoint ``info`` and the copies derived from it (``.<kind>/<tag>``, module docstring)."""
        shutil.rmtree(info.path, ignore_errors=True)
        for derived in self.root.glob(f".*/{info.path.name}"):
            if not derived.parent.name.startswith(TMP_PREFIX):
                shutil.rmtree(derived, ignore_errors=True)


def load_trainer_state(info: CheckpointInfo) -> dict[str, Any]:
    """Step, schedule, loader position and counters saved with the checkpoint."""
    return torch.load(info.path / TRAINER_STATE, map_location="cpu", weights_only=False)


def load_rank_state(info: CheckpointInfo, rank: int) -> dict[str, Any] | None:
    """This rank's saved state (RNG, loader), or None when the checkpoint was written by fewer ranks."""
    path = info.path / f"rank_{rank:05d}.pt"
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
