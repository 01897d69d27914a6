"""One attention op with interchangeable backends: ``xformers`` | ``sdpa`` | ``math``.

Inputs are laid out (B, H, T, Dh) as for ``F.scaled_dot_product_attention``. ``math`` is the reference (explicit
softmax(q kᵀ · scale) v, visible to ``FlopCounterMode``), ``sdpa`` is PyTorch's fused op, ``xformers`` is
``xformers.ops.memory_efficient_attention``. ``auto`` picks the best backend that works on the tensors' device.

xformers ships compiled kernels for one torch/CUDA pair; with another (or on CPU, where 0.0.35 has no operator)
its calls raise. :func:`resolve_backend` therefore runs a tiny forward+backward probe on the target device once,
and falls back to ``sdpa`` with a single warning when ``xformers`` was asked for and cannot run.
"""

from __future__ import annotations

import functools
import logging
import math as _math
import warnings
from typing import Literal

import torch
import torch.nn.functional as F

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

    ``auto`` → xformers when its probe passes on a CUDA device, else sdpa. ``xformers`` → itself when the probe
    passes, else sdpa with one :class:`XFormersUnavailableWarning` (per device type). Unknown names raise ValueError.
    """
    if backend not in BACKENDS:
        raise ValueError(f"model.attention: unknown attention backend '{backend}' (known: {', '.join(BACKENDS)})")
    if backend in ("sdpa", "math"):
        return backend
    device = torch.device(device if device is not None else "cpu")
    if device.type == "meta":
        return "sdpa"
    if backend == "auto":
        if device.type != "cuda":  # xformers has no CPU operators; skip importing it at all
            return "sdpa"
        return "xformers" if _xformers_probe(device.type, device.index)[0] else "sdpa"
    works, reason = _xformers_probe(device.type, device.index)
    if works:
        return "xformers"
    _warn_fallback(device.type, reason)
    return "sdpa"


def xformers_status(device: torch.device | str = "cpu") -> tuple[bool, str]:
    """(works, reason): whether xformers' memory-efficient attention runs forward and backward on ``device``."""
    device = torch.device(device)
    return _xformers_probe(device.type, device.index)


@functools.cache
def _xformers_probe(device_type: str, index: int | None) -> tuple[bool, str]:
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
        q = torch.randn(1, 8, 2, 32, device=device, dtype=dtype, requires_grad=True)  # (B, T, H, Dh)
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
