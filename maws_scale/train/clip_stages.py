"""The image-text stages of the one loop: ``clip``, ``mae_clip`` and ``lit`` (see docs/clip.md).

``CLIPStage``: both towers from scratch, symmetric InfoNCE over the global batch (``train/contrastive.py``).
``MAECLIPStage``: the image tower is an MAE; one masked forward gives the reconstruction loss and (with
``clip.mask_clip_input``) the image embedding; loss = clip_weight · CLIP + mae_weight · MAE. Masks come from
(seed, global sample index) as in the MAE stage. ``LiTStage``: the image tower is loaded from an MAE, WSP or MAWS
checkpoint (``clip.image_init_from``) and locked; the text tower, both projections and the temperature train.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from maws_scale.clip_checks import text_shape, text_spec
from maws_scale.config import ConfigError, RunConfig
from maws_scale.kernels.masking import mask_noise
from maws_scale.train.contrastive import clip_loss
from maws_scale.train.stages import Stage

if TYPE_CHECKING:
    from maws_scale.parallel.plan import ParallelPlan


def build_clip_model(cfg: RunConfig, device: str | torch.device | None = None) -> nn.Module:
    """The two-tower model of ``cfg.stage``: MAE image tower for mae_clip, locked ViT for lit, plain ViT for clip."""
    from contextlib import nullcontext

    from maws_scale.model_config import mae_options, vit_options
    from maws_scale.models.build import build_encoder, build_mae
    from maws_scale.models.clip import CLIP
    from maws_scale.models.text import TextTransformer

    # the image tower's shape is cfg.spec, as for MAE/WSP
    if cfg.stage == "mae_clip":
        visual = build_mae(cfg.spec, device=device, **mae_options(cfg))
    else:
        visual = build_encoder(cfg.spec, device=device, **vit_options(cfg))
    vocab, context = text_shape(cfg)
    spec = text_spec(cfg)
    with torch.device(device) if device is not None else nullcontext():
        text = TextTransformer.from_spec(spec, vocab, context)
        model = CLIP(visual, text, cfg.clip.embed_dim or spec.width, lock_image=cfg.stage == "lit")
    model.set_recompute(cfg.parallel.activation_checkpointing)
    return model


def text_flops(cfg: RunConfig) -> int:
    """Forward matmul FLOPs of the text tower for one caption (all positions)."""
    from maws_scale.models.flops import block_flops

    spec = text_spec(cfg)
    _, context = text_shape(cfg)
    return spec.depth * block_flops(context, spec.width, spec.mlp_hidden)


class CLIPStage(Stage):
    """Both towers from scratch."""

    name = "clip"
    data_stage = "clip"

    def build_model(self, device: str | torch.device | None = None) -> nn.Module:
        return build_clip_model(self.cfg, device)

    def contrastive(self, out: Any, batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, dict]:
        ids = batch["sample_ids"].to(device, non_blocking=True) if "sample_ids" in batch else None
        loss, accuracy = clip_loss(out.image, out.text, out.scale, ids=ids)  # repeated samples are no negatives
        return loss, {"clip_loss": loss.detach(), "clip_acc": accuracy, "logit_scale": out.scale.detach()}

    def loss(self, model, batch: dict[str, Any], device: torch.device, dtype: torch.dtype):
        images = self.images(batch, device, dtype)
        tokens = batch["tokens"].to(device, non_blocking=True)
        loss, metrics = self.contrastive(model(images, tokens), batch, device)
        return (self.cfg.clip.clip_weight * loss).float(), metrics

    def image_flops(self) -> int:
        from maws_scale.models.flops import forward_flops

        cfg = self.cfg
        return forward_flops(cfg.spec, "wsp", img_size=cfg.img_size, num_classes=0, pool=cfg.model.pool)

    def flops_per_sample(self) -> int:
        return 3 * (self.image_flops() + text_flops(self.cfg))


class MAECLIPStage(CLIPStage):
    """CLIP + MAE reconstruction from the same masked forward of the image tower."""

    name = "mae_clip"

    def loss(self, model, batch: dict[str, Any], device: torch.device, dtype: torch.dtype):
        cfg = self.cfg
        images = self.images(batch, device, dtype)
        tokens = batch["tokens"].to(device, non_blocking=True)
        noise = None
        if "sample_ids" in batch:
            noise = mask_noise(cfg.seed, batch["sample_ids"].to(device), self.tokens_per_sample())
        out = model(
            images, tokens, mask_ratio=cfg.mae.mask_ratio, noise=noise, mask_clip_input=cfg.clip.mask_clip_input
        )
        contrastive, metrics = self.contrastive(out, batch, device)
        mae = out.mae_loss.float()
        metrics["mae_loss"] = mae.detach()
        return (cfg.clip.clip_weight * contrastive + cfg.clip.mae_weight * mae).float(), metrics

    def flops_per_sample(self) -> int:
        from maws_scale.models.flops import step_flops

        cfg = self.cfg
        flops = step_flops(cfg.spec, "mae", img_size=cfg.img_size, mask_ratio=cfg.mae.mask_ratio)
        if not cfg.clip.mask_clip_input:
            flops += 3 * self.image_flops()
        return flops + 3 * text_flops(cfg)


class LiTStage(CLIPStage):
    """Locked image tower (from ``clip.image_init_from``), text tower trained."""

    name = "lit"

    def flops_per_sample(self) -> int:
        return self.image_flops() + 3 * text_flops(self.cfg)

    def initialize_weights(self, model: nn.Module, plan: ParallelPlan) -> None:
        """Load the image tower from an MAE / WSP / MAWS (or CLIP) checkpoint; it stays frozen."""
        path = self.cfg.clip.image_init_from
        if not path:
            raise ConfigError(
                "clip.image_init_from: stage lit needs an MAE, WSP or MAWS checkpoint for its image tower"
            )
        weights = image_tower_state(path, self.cfg.model.pool)
        shapes = build_clip_model(self.cfg, device="meta").visual
        from maws_scale.models.state import adapt_state_dict

        weights = adapt_state_dict(weights, shapes)
        own = dict(shapes.state_dict())
        missing = sorted(set(own) - set(weights))
        unexpected = sorted(set(weights) - set(own))
        bad = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or bad:
            hint = (
                " (model.pool=map needs trained attn_pool.* weights: use a WSP checkpoint or another pool)"
                if any(k.startswith("attn_pool.") for k in missing)
                else ""
            )
            raise ConfigError(
                f"clip.image_init_from: {path} does not fit image tower {self.cfg.model.name} (model.*): missing "
                f"{missing[:6]}, unexpected {unexpected[:6]}, wrong shape {bad[:6]}{hint}"
            )
        plan.load_state(model.visual, lambda: weights)
        model.visual.requires_grad_(False)
        self.init_report = {"init": "lit", "from": str(path), "loaded": sorted(weights), "locked": "visual.*"}


def image_tower_state(path: str, pool: str) -> dict[str, torch.Tensor]:
    """The encoder tensors of a checkpoint: MAE decoder and WSP head dropped, ``visual.`` of a CLIP one stripped."""
    from maws_scale.eval.checkpoint import encoder_state
    from maws_scale.models.state import load_state_dict_file

    if not Path(path).is_file():
        raise ConfigError(f"clip.image_init_from: {path} does not exist")
    try:
        state = load_state_dict_file(path)
    except (OSError, ValueError, RuntimeError) as err:
        raise ConfigError(f"clip.image_init_from: cannot read {path} as a state dict ({err})") from None
    if any(k.startswith("visual.") for k in state):
        state = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    return encoder_state(state, pool)


CLIP_STAGE_TYPES: dict[str, type[CLIPStage]] = {"clip": CLIPStage, "mae_clip": MAECLIPStage, "lit": LiTStage}
