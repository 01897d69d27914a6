"""Plain ``nn.Module`` models of the MAWS recipe: the ViT encoder, the MAE around it, the WSP classifier.

Builders take a registry name (``maws_scale.models.registry``) plus keyword overrides, and ``device="meta"`` to get
shapes without memory. Nothing here imports deepspeed, megatron or mlflow: parallelism is applied from outside.
The attention op is ``maws_scale.models.attention.attention`` (the package attribute ``attention`` is that
submodule). Attributes load lazily, so ``maws_scale.models.registry`` (used by the config validator) stays
free of torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "build_encoder": "build",
    "build_mae": "build",
    "build_wsp": "build",
    "VisionTransformer": "vit",
    "MaskedAutoencoder": "mae",
    "random_masking": "mae",
    "Attention": "layers",
    "Block": "layers",
    "Mlp": "layers",
    "resolve_backend": "attention",
    "soft_target_cross_entropy": "heads",
    "MODELS": "registry",
    "ViTSpec": "registry",
    "get_spec": "registry",
}
__all__ = [
    "MODELS",
    "Attention",
    "Block",
    "MaskedAutoencoder",
    "Mlp",
    "ViTSpec",
    "VisionTransformer",
    "build_encoder",
    "build_mae",
    "build_wsp",
    "get_spec",
    "random_masking",
    "resolve_backend",
    "soft_target_cross_entropy",
]

if TYPE_CHECKING:
    from maws_scale.models.attention import resolve_backend
    from maws_scale.models.build import build_encoder, build_mae, build_wsp
    from maws_scale.models.heads import soft_target_cross_entropy
    from maws_scale.models.layers import Attention, Block, Mlp
    from maws_scale.models.mae import MaskedAutoencoder, random_masking
    from maws_scale.models.registry import MODELS, ViTSpec, get_spec
    from maws_scale.models.vit import VisionTransformer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'maws_scale.models' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
