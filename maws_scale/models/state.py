"""State-dict utilities: unwrap saved checkpoints, resample position embeddings, convert to timm/MAWS naming.

Our parameter names *are* timm's (and facebookresearch/mae's for the decoder), so converting a checkpoint means
unwrapping the containers trainers save (``{"model": ...}``, DeepSpeed's ``{"module": ...}``), stripping wrapper
prefixes (``module.``, ``_orig_mod.``), dropping the MAE decoder, and optionally the head.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from maws_scale.files import check_regular
from maws_scale.models.mae import is_decoder_key

_CONTAINER_KEYS = ("model", "module", "state_dict", "model_state_dict")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.pt``/``.pth`` (torch.load, weights only) or ``.safetensors`` file and :func:`clean_state_dict` it."""
    path = os.fspath(path)
    check_regular(path)  # a FIFO would block the read forever
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj = load_file(path)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except Exception as err:  # empty, truncated or random bytes raise many types (EOFError, UnpicklingError, ...)
        raise ValueError(f"not a readable checkpoint ({type(err).__name__}: {str(err).strip()[:200]})") from None
    return clean_state_dict(obj)


def non_finite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state`` holding NaN or Inf: such weights are never a result."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def clean_state_dict(obj: Mapping) -> dict[str, torch.Tensor]:
    """A flat ``name → tensor`` dict from a saved object: unwrap a single container key (model, module, state_dict,
    model_state_dict) and strip ``module.`` / ``_orig_mod.`` prefixes. Raises ValueError if no tensors are found."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"a checkpoint must hold a dict of tensors, got {type(obj).__name__}")
    for key in _CONTAINER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"no tensors in the checkpoint (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
    cleaned = {}
    for key, value in tensors.items():
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
    return cleaned


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: int, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Resize a (1, P + g², D) position embedding to (1, P + new_grid², D): bicubic on the g×g grid (antialiased when
    shrinking, computed in fp32), the P prefix (class) tokens kept as they are."""
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = math.isqrt(grid.shape[1])
    if old * old != grid.shape[1]:
        raise ValueError(f"pos_embed has {grid.shape[1]} patch positions, not a square grid")
    if old == new_grid:
        return pos_embed
    dim = grid.shape[-1]
    image = grid.float().reshape(1, old, old, dim).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=(new_grid, new_grid), mode="bicubic", align_corners=False, antialias=True)
    grid = image.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def adapt_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Fit a checkpoint to ``model``'s resolution: ``pos_embed`` resampled to the model's grid; a fixed sin-cos
    ``decoder_pos_embed`` of another size replaced by the model's own table. Other keys pass through unchanged."""
    adapted = dict(state_dict)
    own = model.state_dict()
    if "pos_embed" in adapted and "pos_embed" in own and adapted["pos_embed"].shape != own["pos_embed"].shape:
        grid = math.isqrt(own["pos_embed"].shape[1] - 1)
        adapted["pos_embed"] = resample_pos_embed(adapted["pos_embed"], grid)
    key = "decoder_pos_embed"
    if key in adapted and key in own and adapted[key].shape != own[key].shape:
        adapted[key] = own[key].detach().clone()
    return adapted


def to_timm(state_dict: Mapping[str, torch.Tensor], head: bool = True) -> dict[str, torch.Tensor]:
    """timm/MAWS encoder naming: MAE decoder keys (``decoder_*``, ``mask_token``) dropped, ``head.*`` too unless
    ``head``; tensors made contiguous (safetensors needs that)."""
    out = {}
    for key, value in clean_state_dict(state_dict).items():
        if is_decoder_key(key) or (not head and key.startswith("head.")):
            continue
        out[key] = value.detach().contiguous()
    return out
