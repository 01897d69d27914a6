"""Observers of a training step's phases: the seam the profiler and benchmarks use instead of patching objects.

:meth:`Trainer.train_step <maws_scale.train.loop.Trainer.train_step>` runs each phase through ``trainer.hooks``:
``forward`` (the stage's loss on one micro-batch), ``backward`` and ``optimizer`` (``engine.step``, every micro-batch;
DeepSpeed applies the update at the accumulation boundary). The default runs them as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

PHASES = ("forward", "backward", "optimizer")


class StepHooks:
    """Run a phase of the step. Subclasses time or observe it; they must call ``fn(*args)`` once and return its
    result."""

    def run(self, phase: str, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)
