"""Load the encoder of an MAE or WSP checkpoint (plain state dict in timm naming) for frozen-feature evaluation."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from maws_scale.model_config import vit_options
from maws_scale.models import build_encoder
from maws_scale.models.state import adapt_state_dict, load_state_dict_file, to_timm

if TYPE_CHECKING:
    from maws_scale.config import RunConfig
    from maws_scale.models.vit import VisionTransformer


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be evaluated; the message names the file and the problem."""


def encoder_state(state: dict[str, torch.Tensor], pool: str) -> dict[str, torch.Tensor]:
    """The encoder's tensors: MAE decoder and WSP head dropped, ``attn_pool.*`` kept only for map pooling."""
    keep = to_timm(state, head=False)
    if pool != "map":
        keep = {k: v for k, v in keep.items() if not k.startswith("attn_pool.")}
    return keep


def build_eval_encoder(cfg: RunConfig) -> VisionTransformer:
    """The encoder of ``cfg.model`` (its pooling included), freshly initialised."""
    return build_encoder(cfg.spec, **vit_options(cfg))


def random_encoder(cfg: RunConfig) -> VisionTransformer:
    """An untrained encoder (initialised with seed ``cfg.seed``): the reference point of frozen-feature probes."""
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        return build_eval_encoder(cfg).eval()


def load_encoder(cfg: RunConfig, checkpoint_path: str | os.PathLike) -> VisionTransformer:
    """Build the encoder of ``cfg.model`` (its pooling included) and load the checkpoint's encoder weights strictly."""
    try:
        state = load_state_dict_file(checkpoint_path)
    except (OSError, ValueError, RuntimeError) as err:  # missing file, not a state dict, not a torch file
        raise CheckpointError(f"{checkpoint_path}: cannot load checkpoint ({err})") from None
    pool = cfg.model.pool
    weights = encoder_state(state, pool)
    if pool == "map" and not any(k.startswith("attn_pool.") for k in weights):
        raise CheckpointError(
            f"{checkpoint_path}: model.pool=map needs trained attn_pool.* weights, which this checkpoint lacks "
            "(an MAE checkpoint?); evaluate it with model.pool=cls, gap or max"
        )
    m = cfg.model
    encoder = build_eval_encoder(cfg)
    try:
        result = encoder.load_state_dict(adapt_state_dict(weights, encoder), strict=False)
    except (RuntimeError, ValueError) as err:  # shape mismatches
        raise CheckpointError(f"{checkpoint_path}: does not fit encoder {m.name} (model.*): {err}") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{checkpoint_path}: does not match encoder {m.name} (model.*): missing {result.missing_keys[:6]}, "
            f"unexpected {result.unexpected_keys[:6]}"
        )
    return encoder.eval()
