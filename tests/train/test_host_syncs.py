"""The hot loop does not wait for the device: outside log steps, one host sync per optimizer step (the skip decision).

Counted, when called from our code (maws_scale, kernels): reads of device values (``item``, ``tolist``, ``__bool__``,
``__float__``, ``__int__``) and copies that block the host on CUDA: a loader batch's tensor sent to a device
(``to``/``copy_``/``cuda``) without ``non_blocking=True``, and ``torch.tensor``/``as_tensor`` given a device. On
this CPU nothing really waits, but the same calls on a GPU would. DeepSpeed's and torch.optim's own reads are
listed, not counted.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import maws_scale
from maws_scale import kernels
from maws_scale.config import load_config
from maws_scale.train.loop import Trainer, _default_loader

from .conftest import TINY

READS = {"item", "tolist", "__bool__", "__float__", "__int__"}  # (numpy() of a CUDA tensor raises, never waits)
COPIES = {"to", "copy_", "cuda"}
FACTORIES = {"tensor", "as_tensor"}
TORCH_DIR = str(Path(torch.__file__).parent)
TORCH_OPTIM = str(Path(torch.__file__).parent / "optim")
OURS = (str(Path(maws_scale.__file__).parent), str(Path(kernels.__file__).parent))


def _name(func) -> str:
    return getattr(func, "__name__", "") or ""


def _caller() -> str:
    """Where a call comes from: the innermost frame outside torch and this module, or torch.optim's own code (its
    non-fused optimizers keep step counts on the host, so their ``item()`` never waits for the device)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith((TORCH_DIR, __file__)):
        if frame.f_code.co_filename.startswith(TORCH_OPTIM):
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"


class SyncCounter(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.on = False
        self.ours: Counter = Counter()
        self.theirs: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.on:
            self._check(_name(func), args, kwargs)
        return func(*args, **kwargs)

    def _check(self, name: str, args, kwargs) -> None:
        if name in READS:
            sync = True
        elif name in COPIES:  # a batch tensor from the loader (host memory) sent to the device
            device = kwargs.get("device") or next((a for a in args[1:] if isinstance(a, (str, torch.device))), None)
            host = getattr(args[0], "_host_batch", False) if args else False
            sync = host and (device is not None or name == "cuda") and not kwargs.get("non_blocking", False)
            if name == "to" and len(args) > 2 and args[2] is True:  # to(device, dtype, non_blocking)
                sync = False
        elif name in FACTORIES:
            sync = kwargs.get("device") is not None
        else:
            return
        if sync:
            caller = _caller()
            where = self.ours if caller.startswith(OURS) else self.theirs
            where[f"{name} @ {caller}"] += 1


class MarkedLoader:
    """The real loader; every tensor of a batch is marked as host memory (what a CUDA run copies to the device)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __iter__(self):
        for batch in self.inner:
            for value in batch.values():
                if isinstance(value, torch.Tensor):
                    value._host_batch = True
            yield batch


@pytest.mark.parametrize(("zero_stage", "accum"), [(0, 2), (1, 2)])
def test_non_log_steps_sync_once_per_optimizer_step(world, mosaics, tmp_path, zero_stage, accum):
    steps = 5
    cfg = load_config(
        None,
        [
            *TINY,
            f"data.path={mosaics / 'train'}",
            f"output_dir={tmp_path}",
            "train.micro_batch=4",
            f"train.global_batch={4 * accum}",
            f"train.steps={steps}",
            "train.log_every=1000",  # only the final step logs
            f"parallel.zero_stage={zero_stage}",
            "checkpoint.every=0",
        ],
    )
    trainer = Trainer(cfg, world, loader_factory=lambda *args: MarkedLoader(_default_loader(*args)))
    counter = SyncCounter()
    train_step = trainer.train_step
    calls = [0]

    def counted_step(batches):
        calls[0] += 1
        counter.on = calls[0] >= 2  # step 1 warms up (caches device constants); the window ends with the last step
        out = train_step(batches)
        counter.on = counter.on and calls[0] < steps
        return out

    trainer.train_step = counted_step
    with counter:
        result = trainer.run()
    assert result.steps == steps and calls[0] == steps
    window = steps - 1  # optimizer steps 2..5, and the loop's bookkeeping of steps 2..4 (none of them logs)
    assert sum(counter.ours.values()) == window, f"ours: {dict(counter.ours)}; not ours: {dict(counter.theirs)}"
    resolve = f"tolist @ {Path(maws_scale.__file__).parent / 'parallel' / 'step_guard.py'}:"
    assert all(k.startswith(resolve) for k in counter.ours)  # StepGuard.resolve: loss sum, bad count (, grad norm)
    print(f"not ours, per {window} steps: {dict(counter.theirs)}")
