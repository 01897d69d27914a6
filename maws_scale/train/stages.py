"""What differs between the two stages of the MAWS recipe; everything else is the one loop (``train/loop.py``).

A Stage supplies its model, its loss on a batch, the data stage name, and the FLOPs/tokens per sample that the
throughput meter needs. ``MAEStage``: masked autoencoder with norm-pix loss, masks from per-sample noise hashed
from (seed, global sample index, patch) so a sample's mask is the same whatever the data-parallel layout.
``WSPStage``: encoder + classifier head + softmax cross-entropy against soft multi-hot targets.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maws_scale.config import ConfigError, RunConfig

log = logging.getLogger("maws_scale.train")

_M32 = 0xFFFFFFFF


# ----- DP-invariant masking noise ---------------------------------------------------------------------------------
def _mulmod32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x · c) mod 2³² for int64 tensors holding uint32 values, without int64 overflow (16-bit halves)."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _M32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash with full avalanche (Wellons' 'lowbias32'), elementwise on int64 tensors."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mulmod32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mulmod32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mix32_int(x: int) -> int:
    """:func:`mix32` of one Python integer."""
    x &= _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def mask_noise(seed: int, sample_ids: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Uniform noise in [0, 1) of shape (B, L) that depends only on (seed, sample id, patch index).

    Values are distinct within a row (the low bits hold the patch index), so ``argsort`` has no ties and the
    mask is bit-identical on any device or data-parallel layout. Computed on ``sample_ids``' device.
    """
    ids = sample_ids.to(torch.int64)
    seed_key = _mix32_int((seed & _M32) ^ 0x9E3779B9)  # a Python int: no host-to-device copy per batch
    key = mix32((ids & _M32) ^ mix32(((ids >> 32) & _M32) ^ seed_key))
    patches = torch.arange(num_patches, dtype=torch.int64, device=ids.device)
    h = mix32(key[:, None] ^ mix32(patches + 0x632BE5AB)[None, :])
    index_bits = max(1, math.ceil(math.log2(num_patches)))
    random_bits = 24 - index_bits  # numerator < 2^24: exact in float32
    if random_bits < 4:
        raise ValueError(f"too many patches ({num_patches}) for float32 masking noise")
    value = (h >> (32 - random_bits)) * num_patches + patches[None, :]
    return value.to(torch.float32) / float((1 << random_bits) * num_patches)


# ----- stages -----------------------------------------------------------------------------------------------------
class Stage(ABC):
    """One stage of the recipe: what the shared loop needs to train it."""

    name: str
    data_stage: str

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.init_report: dict[str, Any] | None = None

    @abstractmethod
    def build_model(self, device: str | torch.device | None = None) -> nn.Module:
        """A freshly initialised model (``device="meta"`` for shapes only)."""

    def initialize_weights(self, model: nn.Module, rank: int) -> None:  # noqa: B027  (optional hook)
        """Load initial weights from elsewhere (e.g. the MAE encoder) into the built, possibly partitioned model."""

    @abstractmethod
    def loss(self, model: Callable, batch: dict[str, Any], device: torch.device, dtype: torch.dtype):
        """Forward a micro-batch: → (scalar loss, {name: scalar tensor} extra metrics)."""

    @abstractmethod
    def flops_per_sample(self) -> int:
        """Forward + backward model FLOPs for one sample."""

    def tokens_per_sample(self) -> int:
        """Patches per image (the input tokens the throughput is counted in)."""
        return (self.cfg.img_size // self.cfg.spec.patch) ** 2

    @staticmethod
    def images(batch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        from maws_scale.data import normalize_on_device

        return normalize_on_device(batch["images"].to(device, non_blocking=True), dtype=dtype)


class MAEStage(Stage):
    """MAE pre-pretraining: reconstruct the normalized pixels of 75 % masked patches."""

    name = "mae"
    data_stage = "mae"

    def build_model(self, device: str | torch.device | None = None) -> nn.Module:
        from maws_scale.models import build_model

        return build_model(self.cfg, device=device)

    def loss(self, model: Callable, batch: dict[str, Any], device: torch.device, dtype: torch.dtype):
        pixels = self.images(batch, device, torch.float32)  # the norm-pix target comes from unrounded pixels
        noise = None
        if "sample_ids" in batch:
            ids = batch["sample_ids"].to(device, non_blocking=True)
            noise = mask_noise(self.cfg.seed, ids, self.tokens_per_sample())
        loss, _, _ = model(pixels.to(dtype), mask_ratio=self.cfg.mae.mask_ratio, noise=noise, target=pixels)
        return loss.float(), {}

    def flops_per_sample(self) -> int:
        from maws_scale.models.flops import step_flops

        # from the model as built (on meta): the configured decoder width/depth count, not the registry's
        return step_flops(self.build_model(device="meta"), "mae", mask_ratio=self.cfg.mae.mask_ratio)


class WSPStage(Stage):
    """Weakly-supervised pretraining: softmax cross-entropy against soft multi-hot hashtag targets."""

    name = "wsp"
    data_stage = "wsp"

    def __init__(self, cfg: RunConfig, num_classes: int, criterion: Callable | None = None) -> None:
        super().__init__(cfg)
        if cfg.wsp.num_classes is not None and cfg.wsp.num_classes != num_classes:
            raise ConfigError(
                f"wsp.num_classes={cfg.wsp.num_classes} but the vocabulary has {num_classes} tags; "
                "leave wsp.num_classes unset or point wsp.vocab at the matching vocabulary"
            )
        self.num_classes = num_classes
        self.criterion = criterion

    def build_model(self, device: str | torch.device | None = None) -> nn.Module:
        from maws_scale.models import build_model

        return build_model(self.cfg, num_classes=self.num_classes, device=device)

    def initialize_weights(self, model: nn.Module, rank: int) -> None:
        """``wsp.init=mae``: copy the MAE encoder (decoder dropped, head fresh) into ``model``."""
        cfg = self.cfg
        if cfg.wsp.init != "mae":
            self.init_report = {"init": "random"}
            return
        if not cfg.wsp.init_from:
            raise ConfigError("wsp.init_from: wsp.init=mae needs an MAE checkpoint, or set wsp.init=random")
        path = Path(cfg.wsp.init_from)
        if not path.is_file():
            raise ConfigError(f"wsp.init_from: {path} does not exist")
        partitioned = any(hasattr(p, "ds_id") for p in model.parameters())
        state: dict[str, torch.Tensor] | None = None
        report = None
        if rank == 0 or not partitioned:
            state, report = self._handoff_state(path)
        if hasattr(model, "tp_layout"):  # tensor-parallel: each rank keeps its shard of every sharded tensor
            from maws_scale.parallel.tensor_parallel import load_plain_state_dict

            load_plain_state_dict(model, state, strict=False)
            model.pos_embed.requires_grad_(True)
        elif partitioned:
            _load_partitioned(model, state, rank)
        else:
            own = model.state_dict(keep_vars=True)
            with torch.no_grad():
                for key, value in state.items():
                    own[key].copy_(value)
                    if isinstance(own[key], nn.Parameter):
                        own[key].requires_grad_(True)  # MAE's fixed pos_embed becomes trainable for WSP
        if report is not None:
            self.init_report = {
                "init": "mae",
                "from": str(path),
                "summary": report.summary(),
                "loaded": report.loaded,
                "new": report.new,
                "dropped": report.dropped,
                "resampled": report.resampled,
            }

    def _handoff_state(self, path: Path) -> tuple[dict[str, torch.Tensor], Any]:
        """The MAE encoder tensors for this WSP model, checked and named by the models' handoff, without building a
        second model: the handoff runs on the meta device and the file is memory-mapped, not read into RAM."""
        from maws_scale.models.handoff import HandoffError, wsp_from_mae
        from maws_scale.models.state import adapt_state_dict, clean_state_dict

        try:
            source = clean_state_dict(torch.load(path, map_location="cpu", mmap=True, weights_only=True))
        except (RuntimeError, OSError, ValueError) as err:
            raise ConfigError(f"wsp.init_from: cannot read {path} as a state dict ({err})") from None
        m = self.cfg.model
        try:
            shapes, report = wsp_from_mae(
                source,
                self.cfg.model_ref,
                self.num_classes,
                pool=m.pool,
                device="meta",
                img_size=self.cfg.img_size,
                in_chans=m.in_chans,
                qkv_bias=m.qkv_bias,
                qk_norm=m.qk_norm,
                norm_bias=m.norm_bias,
                parallel_block=m.parallel_block,
                attention=m.attention,
            )
        except HandoffError as err:  # names wsp.init_from and the offending keys
            raise ConfigError(str(err)) from None
        return adapt_state_dict({k: source[k] for k in report.loaded}, shapes), report

    def loss(self, model: Callable, batch: dict[str, Any], device: torch.device, dtype: torch.dtype):
        from maws_scale.models.heads import soft_target_cross_entropy

        images = self.images(batch, device, dtype)
        logits = model(images)
        targets = batch["targets"].to(device, non_blocking=True)
        criterion = self.criterion or soft_target_cross_entropy
        return criterion(logits, targets).float(), {}

    def flops_per_sample(self) -> int:
        from maws_scale.models.flops import step_flops

        return step_flops(self.build_model(device="meta"), "wsp")  # as built: the configured pooling and head count


def _load_partitioned(model: nn.Module, state: dict[str, torch.Tensor] | None, rank: int) -> None:
    """Copy rank 0's ``state`` into ZeRO-3 partitioned parameters, one parameter gathered at a time."""
    import deepspeed
    import torch.distributed as dist

    names = sorted(state) if rank == 0 else None
    box = [names]
    dist.broadcast_object_list(box, src=0)
    own = dict(model.named_parameters())
    for name in box[0]:
        param = own[name]
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0), torch.no_grad():
            if rank == 0:
                param.copy_(state[name].to(param.dtype))
        param.requires_grad_(True)


def make_stage(cfg: RunConfig, num_classes: int | None = None, criterion: Callable | None = None) -> Stage:
    """The Stage object for ``cfg.stage``."""
    if cfg.stage == "mae":
        return MAEStage(cfg)
    if cfg.stage in ("clip", "mae_clip", "lit"):
        from maws_scale.train.clip_stages import CLIP_STAGE_TYPES

        return CLIP_STAGE_TYPES[cfg.stage](cfg)
    if num_classes is None:
        raise ConfigError("wsp.num_classes: unknown; the WSP data set needs a vocabulary (wsp.vocab)")
    return WSPStage(cfg, num_classes, criterion)
