"""One attention op with interchangeable backends: ``xformers`` | ``sdpa`` | ``math``.

Inputs are laid out (B, H, T, Dh) as for ``F.scaled_dot_product_attention``. ``math`` is the reference (explicit
softmax(q kᵀ · scale) v, visible to ``FlopCounterMode``), ``sdpa`` is PyTorch's fused op, ``xformers`` is
``xformers.ops.memory_efficient_attention``. ``auto`` means ``sdpa``: xformers 0.0.35's flash and cutlass paths call
the same aten kernels SDPA dispatches to (``_flash_attention_forward`` / ``_efficient_attention_forward``), so it is
no faster; choose ``xformers`` explicitly to use it.

xformers ships compiled kernels for one torch/CUDA pair; with another (or on CPU, where 0.0.35 has no operator)
its calls raise. Whether it works is decided once, at set-up: :func:`pin_attention_backends` resolves every
module's backend on the target device (a tiny forward+backward probe, run on its own thread so that no caller's
autograd state — ``no_grad``, activation-checkpoint hooks — sees it, on fixed inputs so that no RNG moves) and
writes the concrete name back, so the forward pass never probes. A ``xformers`` that cannot run falls back to
``sdpa`` with a single warning.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math as _math
import threading
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Backend = Literal["auto", "xformers", "sdpa", "math"]
BACKENDS = ("auto", "xformers", "sdpa", "math")
log = logging.getLogger(__name__)


class XFormersUnavailableWarning(UserWarning):
    """xformers was requested but cannot run here; sdpa is used instead."""


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: Backend = "auto") -> torch.Tensor:
    """Scaled dot-product attention (scale 1/sqrt(Dh), no mask) of (B, H, T, Dh) tensors → (B, H, T, Dh)."""
    resolved = resolve_backend(backend, q.device)
    if resolved == "math":
        return math_attention(q, k, v)
    if resolved == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    import xformers.ops as xops

    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The reference: softmax computed in fp32 (or wider), result in the input dtype."""
    scale = 1.0 / _math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    probs = scores.softmax(dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(q.dtype)
    return torch.matmul(probs, v)


def resolve_backend(backend: Backend | str, device: torch.device | str | None = None) -> str:
    """The concrete backend (``xformers``, ``sdpa`` or ``math``) that ``backend`` means on ``device``.

    ``auto`` → sdpa (never probes). ``xformers`` → itself when the probe passes on ``device``, else sdpa with one
    :class:`XFormersUnavailableWarning` (per device type). Unknown names raise ValueError. Call it at set-up (or
    through :func:`pin_attention_backends`), not inside a forward pass.
    """
    if backend not in BACKENDS:
        raise ValueError(f"model.attention: unknown attention backend '{backend}' (known: {', '.join(BACKENDS)})")
    if backend != "xformers":
        return "sdpa" if backend == "auto" else backend
    device = torch.device(device if device is not None else "cpu")
    if device.type == "meta":
        return "sdpa"
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # the probe thread's default would be cuda:0
    works, reason = _xformers_probe(device.type, device.index)
    if works:
        return "xformers"
    _warn_fallback(device.type, reason)
    return "sdpa"


def pin_attention_backends(model: nn.Module, device: torch.device | str) -> dict[str, int]:
    """Resolve every attention module's ``backend`` in ``model`` for ``device`` once and store the concrete name.

    Run at set-up, before the first forward: afterwards ``attention`` never probes, so nothing runs inside autograd
    or an activation-checkpointed block. → how many modules use each concrete backend.
    """
    counts: dict[str, int] = {}
    for module in model.modules():
        backend = getattr(module, "backend", None)
        if isinstance(backend, str) and backend in BACKENDS:
            module.backend = resolve_backend(backend, device)
            counts[module.backend] = counts.get(module.backend, 0) + 1
    if counts:
        log.info("attention backends on %s: %s", device, counts)
    return counts


def xformers_status(device: torch.device | str = "cpu") -> tuple[bool, str]:
    """(works, reason): whether xformers' memory-efficient attention runs forward and backward on ``device``."""
    device = torch.device(device)
    return _xformers_probe(device.type, device.index)


@functools.cache
def _xformers_probe(device_type: str, index: int | None) -> tuple[bool, str]:
    """Cached (works, reason); the probe runs on a fresh thread, isolated from the caller's autograd state."""
    result: list[tuple[bool, str]] = []
    thread = threading.Thread(target=lambda: result.append(_run_xformers_probe(device_type, index)), daemon=True)
    thread.start()
    thread.join()
    return result[0] if result else (False, "the xformers probe thread died")


def _run_xformers_probe(device_type: str, index: int | None) -> tuple[bool, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import xformers
            import xformers.ops as xops
    except Exception as err:  # ImportError, or a broken build failing at import time
        return False, f"cannot import xformers ({type(err).__name__}: {err})"
    device = torch.device(device_type, index) if index is not None else torch.device(device_type)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    try:
        with torch.enable_grad(), torch.cuda.device(index) if device.type == "cuda" else contextlib.nullcontext():
            # fixed values, not torch.randn: the probe must not move any RNG (checkpoint recompute replays it)
            values = torch.linspace(-1.0, 1.0, 2 * 8 * 32).reshape(1, 2, 8, 32)  # (B, T, H, Dh)
            q = values.to(device=device, dtype=dtype).requires_grad_(True)
            out = xops.memory_efficient_attention(q, q, q)
            out.sum().backward()
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        version = getattr(xformers, "__version__", "?")
        return False, (
            f"xformers {version} cannot run on {device} with torch {torch.__version__} ({type(err).__name__}: {first})"
        )
    return True, "ok"


@functools.cache
def _warn_fallback(device_type: str, reason: str) -> None:
    warnings.warn(
        f"model.attention=xformers: {reason}; falling back to torch scaled_dot_product_attention (sdpa)",
        XFormersUnavailableWarning,
        stacklevel=3,
    )
