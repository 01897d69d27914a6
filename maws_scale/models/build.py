"""Builders: registry name + model options → ViT encoder, MAE, or WSP classifier (``maws_scale.model_config`` maps a
RunConfig to these options; nothing here reads the RunConfig)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from maws_scale.models.mae import MaskedAutoencoder
from maws_scale.models.registry import ViTSpec, get_spec
from maws_scale.models.vit import VisionTransformer

_ENCODER_OPTIONS = (
    "img_size",
    "in_chans",
    "pool",
    "qkv_bias",
    "qk_norm",
    "norm_bias",
    "parallel_block",
    "drop_path",
    "attention",
    "fc_norm",
)
_MAE_OPTIONS = ("decoder_width", "decoder_depth", "decoder_heads", "norm_pix_loss", "norm_pix_eps", "kernels")


def _spec_kwargs(spec: ViTSpec) -> dict[str, Any]:
    return dict(
        img_size=spec.img_size,
        patch_size=spec.patch,
        in_chans=spec.in_chans,
        embed_dim=spec.width,
        depth=spec.depth,
        num_heads=spec.heads,
        mlp_ratio=spec.mlp_ratio,
    )


def _check_overrides(overrides: dict[str, Any], allowed: tuple[str, ...], builder: str) -> None:
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise TypeError(f"{builder}: unknown option(s) {', '.join(unknown)} (known: {', '.join(allowed)})")


def _finish(model: torch.nn.Module, dtype: torch.dtype | None) -> torch.nn.Module:
    return model.to(dtype=dtype) if dtype is not None else model


def build_encoder(
    name: str | ViTSpec, device: torch.device | str | None = None, dtype: torch.dtype | None = None, **overrides: Any
) -> VisionTransformer:
    """The ViT encoder ``name`` (a registry name or a ViTSpec) without a head (forward → pooled features).
    Overrides: img_size, in_chans, pool, qkv_bias, qk_norm, norm_bias, parallel_block, drop_path, attention,
    fc_norm, num_classes."""
    _check_overrides(overrides, (*_ENCODER_OPTIONS, "num_classes"), "build_encoder")
    kwargs = {**_spec_kwargs(get_spec(name)), "num_classes": 0}
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    with torch.device(device) if device is not None else nullcontext():
        model = VisionTransformer(**kwargs)
    return _finish(model, dtype)


def build_wsp(
    name: str | ViTSpec,
    num_classes: int,
    pool: str = "cls",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> VisionTransformer:
    """The WSP classifier: encoder ``name`` + ``pool`` + ``head`` Linear(D, num_classes); forward → logits."""
    if num_classes is None or num_classes < 1:
        raise ValueError(f"wsp.num_classes must be a positive class count, got {num_classes}")
    return build_encoder(name, device=device, dtype=dtype, pool=pool, num_classes=num_classes, **overrides)


def build_mae(
    name: str | ViTSpec,
    mask_ratio: float = 0.75,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> MaskedAutoencoder:
    """The MAE for encoder ``name``; decoder width/depth/heads default to the registry's (8×512×16 for MAWS).
    Overrides: the encoder's, plus decoder_width, decoder_depth, decoder_heads, norm_pix_loss, norm_pix_eps,
    kernels (auto | triton | torch)."""
    _check_overrides(overrides, (*_ENCODER_OPTIONS, *_MAE_OPTIONS), "build_mae")
    spec = get_spec(name)
    options = {k: v for k, v in overrides.items() if v is not None}
    decoder = spec.decoder_shape(*(options.pop(f"decoder_{k}", None) for k in ("width", "depth", "heads")))
    kwargs = {
        **_spec_kwargs(spec),
        "decoder_embed_dim": decoder.width,
        "decoder_depth": decoder.depth,
        "decoder_num_heads": decoder.heads,
        "kernels_impl": options.pop("kernels", "auto"),
        "mask_ratio": mask_ratio,
        **options,
    }
    with torch.device(device) if device is not None else nullcontext():
        model = MaskedAutoencoder(**kwargs)
    return _finish(model, dtype)
