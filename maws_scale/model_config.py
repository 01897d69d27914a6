"""A RunConfig → the model builders' options (``maws_scale.models.build``), so that model code never reads a config."""

from __future__ import annotations

from typing import Any

import torch

from maws_scale.config import RunConfig
from maws_scale.models.build import build_mae, build_wsp
from maws_scale.models.mae import MaskedAutoencoder
from maws_scale.models.vit import VisionTransformer


def vit_options(cfg: RunConfig) -> dict[str, Any]:
    """The ViT builder options a config sets (``model.*`` beyond the shape, which is ``cfg.spec``)."""
    m = cfg.model
    return dict(
        img_size=cfg.img_size,
        in_chans=m.in_chans,
        pool=m.pool,
        qkv_bias=m.qkv_bias,
        qk_norm=m.qk_norm,
        norm_bias=m.norm_bias,
        parallel_block=m.parallel_block,
        drop_path=m.drop_path,
        attention=m.attention,
        fc_norm=m.fc_norm,
    )


def mae_options(cfg: RunConfig) -> dict[str, Any]:
    """The MAE builder options a config sets: the encoder's (:func:`vit_options`, pooling included for the mae_clip
    image tower) plus ``mae.*`` and ``model.kernels``."""
    mae = cfg.mae
    return dict(
        vit_options(cfg),
        fc_norm=False,  # the MAE trains the final norm of its tokens
        mask_ratio=mae.mask_ratio,
        decoder_width=mae.decoder_width,
        decoder_depth=mae.decoder_depth,
        decoder_heads=mae.decoder_heads,
        norm_pix_loss=mae.norm_pix_loss,
        kernels=cfg.model.kernels,
    )


def build_model(
    cfg: RunConfig,
    num_classes: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.nn.Module:
    """The model for ``cfg.stage`` from every relevant config field (``model.*``, ``mae.*``, ``wsp.num_classes``,
    ``finetune.num_classes``). ``num_classes`` overrides those (e.g. the vocab size), as does
    ``parallel.activation_checkpointing``."""
    common = vit_options(cfg)
    if cfg.stage == "mae":
        # the MAE stage does not pool: no attn_pool parameters that would never train
        options = {**mae_options(cfg), "pool": None}
        model: VisionTransformer | MaskedAutoencoder = build_mae(cfg.spec, device=device, dtype=dtype, **options)
    elif cfg.stage in ("wsp", "finetune"):
        key = f"{cfg.stage}.num_classes"
        classes = num_classes if num_classes is not None else getattr(cfg, cfg.stage).num_classes
        if classes is None:
            raise ValueError(f"{key}: not set and no class count given by the data; set {key}")
        pool = common.pop("pool")
        model = build_wsp(cfg.spec, classes, pool=pool, device=device, dtype=dtype, **common)
    else:
        raise ValueError(f"stage: no model for stage '{cfg.stage}'")
    model.set_recompute(cfg.parallel.activation_checkpointing)
    return model
