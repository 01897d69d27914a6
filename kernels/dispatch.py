"""Choose between the fused Triton kernels and the torch references.

``impl="auto"`` runs the fused kernel when :func:`triton_available` says it can run on the input's device and the
reference otherwise; ``"triton"`` insists (and raises ``RuntimeError`` saying why it cannot); ``"torch"`` always runs
the reference. The kernel modules import triton, so they are imported only when a fused op first runs: Triton reads
``TRITON_INTERPRET`` when the kernels are decorated, i.e. then.
"""

from __future__ import annotations

import functools
import importlib
import sys
import warnings
from types import ModuleType
from typing import Literal

import torch

from . import reference

Impl = Literal["auto", "triton", "torch"]
IMPLS = ("auto", "triton", "torch")


@functools.cache
def _triton_import_error() -> str | None:
    try:
        importlib.import_module("triton")
    except Exception as err:  # a broken install raises more than ImportError
        return f"{type(err).__name__}: {err}"
    return None


def _interpreter_on() -> bool:
    import triton

    return bool(triton.knobs.runtime.interpret)


class KernelFallbackWarning(UserWarning):
    """A fused kernel failed to compile or run at set-up; ``impl="auto"`` uses the torch reference from then on."""


_SETUP_FAILURES: dict[str, str] = {}  # device type → why the set-up check failed there


def _unavailable_reason(device: torch.device | str | None) -> str | None:
    """Why the fused kernels cannot run on ``device`` (None when they can)."""
    error = _triton_import_error()
    if error is not None:
        return f"triton cannot be imported ({error})"
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    failure = _SETUP_FAILURES.get(torch.device(device).type)
    if failure is not None:
        return failure
    interpret = _interpreter_on()
    loaded = sys.modules.get(f"{__package__}.triton_common")
    if loaded is not None and interpret != loaded.INTERPRETED:
        was = "on" if loaded.INTERPRETED else "off"
        return f"the kernels were loaded with TRITON_INTERPRET {was} and it has changed since; restart the process"
    if interpret or (torch.device(device).type == "cuda" and torch.cuda.is_available()):
        return None
    return f"the tensors are on {torch.device(device)} and TRITON_INTERPRET=1 (the Triton CPU interpreter) is not set"


def triton_available(device: torch.device | str | None = None) -> bool:
    """True when the fused kernels can run on ``device`` (default: CUDA if present): triton imports, and the device
    is a CUDA GPU or the Triton CPU interpreter is on (``TRITON_INTERPRET=1`` set before the kernels load)."""
    return _unavailable_reason(device) is None


def check_kernels(device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> bool:
    """Set-up check: compile and run every fused op (forward and backward, tiny shapes, ``dtype`` tokens) on
    ``device``. On failure ``impl="auto"`` falls back to the torch references there, with one
    :class:`KernelFallbackWarning`, and ``impl="triton"`` raises saying why. → whether the kernels work (False too
    when they cannot run here at all)."""
    device = torch.device(device)
    if _unavailable_reason(device) is not None:
        return False
    try:
        _run_every_kernel(device, dtype)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        reason = f"a fused kernel failed at set-up on {device} ({type(err).__name__}: {first})"
        _SETUP_FAILURES[device.type] = reason
        warnings.warn(f"kernels impl=auto: {reason}; using the torch references", KernelFallbackWarning, stacklevel=2)
        return False
    return True


def _run_every_kernel(device: torch.device, dtype: torch.dtype) -> None:
    fused = _fused()
    batch, length, keep, width, patch = 2, 4, 2, 8, 2
    ramp = torch.linspace(-1.0, 1.0, batch * length * width, device=device)  # fixed values: no RNG moves
    tokens = ramp.reshape(batch, length, width).to(dtype).requires_grad_(True)
    pos = ramp[: length * width].reshape(length, width).clone().requires_grad_(True)
    restore = torch.arange(length, device=device).repeat(batch, 1)
    keep_ids = restore[:, :keep].contiguous()
    visible = fused.GatherVisible.apply(tokens, pos, keep_ids)
    full = fused.UnshuffleWithMaskTokens.apply(visible, pos[0].detach().clone().requires_grad_(True), restore, pos)
    imgs = torch.linspace(-1.0, 1.0, batch * 3 * 4 * 4, device=device).reshape(batch, 3, 4, 4).to(dtype)
    pred = full.float().sum(-1, keepdim=True).expand(batch, length, patch * patch * 3).to(dtype)
    mask = torch.ones(batch, length, device=device)
    fused.NormPixMaskedMSE.apply(imgs, pred, mask, patch, True, 1e-6).backward()


def _reason_on(device_type: str) -> str | None:
    """:func:`_unavailable_reason` for a device type; a constant to ``torch.compile`` after :func:`prepare_compile`."""
    return _unavailable_reason(device_type)


def _use_triton(impl: Impl, tensor: torch.Tensor) -> bool:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return False
    reason = _reason_on(tensor.device.type)
    if impl == "triton" and reason is not None:
        raise RuntimeError(f"impl='triton' asked for, but the fused kernels cannot run here: {reason}; "
                           "use impl='auto' or 'torch'")  # fmt: skip
    return reason is None


def _fused() -> ModuleType:
    return importlib.import_module(f"{__package__}.functions")


def _apply_fused(op: str, *args):
    """Run fused op ``op`` (an autograd Function of ``functions``); under ``torch.compile`` (after
    :func:`prepare_compile`) it runs eagerly between two graphs: Dynamo does not trace the Triton launches inside."""
    if torch.compiler.is_compiling():
        return _apply_fused_eagerly(op, *args)
    return _apply_fused_plain(op, *args)


def _apply_fused_plain(op: str, *args):
    return getattr(_fused(), op).apply(*args)


_apply_fused_eagerly = _apply_fused_plain  # torch.compiler.disable'd by prepare_compile


def prepare_compile() -> None:
    """Make the dispatch friendly to ``torch.compile`` (``model.compile`` calls this at set-up): the capability
    check becomes a constant Dynamo evaluates once while tracing (it traced the triton import, the ``triton.knobs``
    read and the cache: 7 graphs for a compiled MAE, 1 now), and the fused ops run eagerly between graphs. Not done
    at import: importing ``torch._dynamo`` first breaks the Triton CPU interpreter's backward kernels (measured with
    ``benchmarks/bench_kernels.py --cpu-smoke``, triton 3.x, torch 2.13)."""
    global _apply_fused_eagerly
    torch.compiler.assume_constant_result(_reason_on)  # marks the function itself
    if _apply_fused_eagerly is _apply_fused_plain:
        _apply_fused_eagerly = torch.compiler.disable(_apply_fused_plain)


def gather_visible(
    tokens: torch.Tensor, pos_embed: torch.Tensor, keep_ids: torch.Tensor, impl: Impl = "auto"
) -> torch.Tensor:
    """Visible tokens with position embeddings added: (B, L, D), (L, D), (B, L_keep) → (B, L_keep, D).

    Output dtype is ``tokens.dtype`` (``pos_embed`` is cast to it first, as in the reference). Gradients flow to
    ``tokens`` (zeros at masked patches) and ``pos_embed`` (summed over the batch). ``keep_ids`` must hold distinct
    in-range indices per row."""
    if _use_triton(impl, tokens):
        return _apply_fused("GatherVisible", tokens, pos_embed, keep_ids)
    return reference.gather_visible_torch(tokens, pos_embed, keep_ids)


def unshuffle_with_mask_tokens(
    visible: torch.Tensor,
    mask_token: torch.Tensor,
    restore_ids: torch.Tensor,
    pos_embed: torch.Tensor,
    impl: Impl = "auto",
) -> torch.Tensor:
    """Full decoder sequence from visible tokens, the mask token and restore indices: → (B, L, D).

    Slot ``l`` of sample ``b`` takes ``visible[b, restore_ids[b, l]]`` when that index is below L_keep and the mask
    token otherwise, plus ``pos_embed[l]``; the output has ``visible.dtype``. Gradients flow to ``visible``,
    ``mask_token`` and ``pos_embed``. ``restore_ids`` must be a permutation of ``0..L-1`` per row."""
    if _use_triton(impl, visible):
        return _apply_fused("UnshuffleWithMaskTokens", visible, mask_token, restore_ids, pos_embed)
    return reference.unshuffle_with_mask_tokens_torch(visible, mask_token, restore_ids, pos_embed)


def norm_pix_masked_mse(
    imgs: torch.Tensor,
    pred: torch.Tensor,
    mask: torch.Tensor,
    patch_size: int,
    norm_pix: bool = True,
    eps: float = 1e-6,
    impl: Impl = "auto",
) -> torch.Tensor:
    """MAE loss: (normalised-)pixel MSE over masked patches only (mask: 1 = masked, or per-patch weights), fp32.

    ``imgs`` (B, C, H, W) in any float dtype, ``pred`` (B, L, p²·C) in (p, p, C) order. The gradient flows to
    ``pred`` only. With the fused kernel, patches of weight 0 are not read at all (so non-finite values there do not
    reach the loss, unlike the reference, where 0 · NaN = NaN)."""
    if _use_triton(impl, pred):
        return _apply_fused("NormPixMaskedMSE", imgs, pred, mask, patch_size, norm_pix, eps)
    return reference.norm_pix_masked_mse_torch(imgs, pred, mask, patch_size, norm_pix=norm_pix, eps=eps)
