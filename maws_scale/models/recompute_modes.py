"""The activation recompute modes and which blocks each recomputes: the one rule, free of torch.

``parallel.activation_checkpointing`` is validated with :func:`parse_mode` when a config is loaded (the data commands
load configs without importing torch); :mod:`maws_scale.models.recompute` applies the modes to a model, and the
planner's activation model (:mod:`maws_scale.perf.activations`) counts with :func:`recomputed_blocks` too.
"""

from __future__ import annotations

import re

MODES = ("none", "full", "every_k:<k>", "selective_op")


def parse_mode(value: bool | str | None) -> str:
    """Normalise a ``parallel.activation_checkpointing`` value (bool or mode string) to a mode string."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "full"
    text = str(value).strip().lower()
    if text in ("none", "false", "off", "no"):
        return "none"
    if text in ("full", "true", "on", "yes"):
        return "full"
    if text == "selective_op":
        return text
    match = re.fullmatch(r"every_k:(\d+)", text)
    if match and int(match.group(1)) >= 1:
        k = int(match.group(1))
        return "full" if k == 1 else f"every_k:{k}"
    raise ValueError(f"unknown activation checkpointing mode {value!r} (known: {', '.join(MODES)}, true, false)")


def selective_compile_problem(mode: str, compile_mode: str) -> str | None:
    """Why ``selective_op`` cannot run with ``model.compile`` (None when it can). Recompute wraps the compiled
    block, so to the selective policy the block is one opaque compiled op: inductor's kernels do not pass through
    the dispatcher the policy watches, and which activations are kept (and so the memory the planner counts) would be
    whatever the compiled graph happens to expose. Refused instead of run undefined; ``full`` / ``every_k`` recompute
    the whole compiled block and are defined."""
    if parse_mode(mode) != "selective_op" or compile_mode == "none":
        return None
    return (
        f"parallel.activation_checkpointing=selective_op with model.compile={compile_mode}: the selective policy "
        "cannot see inside a compiled block, so what it keeps is undefined; use full or every_k:<k> with compile, "
        "or model.compile=none with selective_op"
    )


def recomputed_blocks(mode: str, depth: int) -> list[bool]:
    """For each of ``depth`` blocks, whether ``mode`` recomputes it (selective_op: all, op-level)."""
    mode = parse_mode(mode)
    if mode == "none":
        return [False] * depth
    if mode in ("full", "selective_op"):
        return [True] * depth
    k = int(mode.split(":")[1])
    return [(i + 1) % k == 0 for i in range(depth)]
