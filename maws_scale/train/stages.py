"""What differs between the two stages of the MAWS recipe; everything else is the one loop (``train/loop.py``).

A Stage supplies its model, its loss on a batch, the data stage name, and the FLOPs/tokens per sample that the
throughput meter needs. ``MAEStage``: masked autoencoder with norm-pix loss, masks from per-sample noise hashed
from (seed, global sample index, patch) so a sample's mask is the same whatever the data-parallel layout
(``kernels/masking.py::mask_noise``). ``WSPStage``: encoder + classifier head + softmax cross-entropy against soft
multi-hot targets. Stages never ask how the model is split: the parallel plan (``parallel/plan.py``) they are bound
to gives the WSP criterion and loads initial weights into whatever the model became.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from maws_scale.config import ConfigError, RunConfig
from maws_scale.kernels.masking import mask_noise

if TYPE_CHECKING:
    from maws_scale.parallel.plan import ParallelPlan

log = logging.getLogger("maws_scale.train")


# ----- stages -----------------------------------------------------------------------------------------------------
class Stage(ABC):
    """One stage of the recipe: what the shared loop needs to train it."""

    name: str
    data_stage: str

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.init_report: dict[str, Any] | None = None
        self.plan: ParallelPlan | None = None

    def bind(self, plan: ParallelPlan | None) -> None:
        """Attach the parallel plan the model was built with (None detaches it, e.g. after the engine is gone)."""
        self.plan = plan

    @abstractmethod
    def build_model(self, device: str | torch.device | None = None) -> nn.Module:
        """A freshly initialised model (``device="meta"`` for shapes only)."""

    def initialize_weights(self, model: nn.Module, plan: ParallelPlan) -> None:  # noqa: B027  (optional hook)
        """Load initial weights from elsewhere (e.g. the MAE encoder) into the built model through
        ``plan.load_state`` (which knows whether it is sharded or partitioned)."""

    @abstractmethod
    def loss(self, model: Callable, batch: dict[str, Any], device: torch.device, dtype: torch.dtype):
        """Forward a micro-batch: → (scalar loss, {name: scalar tensor} extra metrics)."""

    @abstractmethod
    def flops_per_sample(self) -> int:
        """Forward + backward model FLOPs for one sample."""

    def evaluate(self, model: nn.Module, plan: ParallelPlan, device: torch.device, dtype: torch.dtype):
        """Held-out metrics of the model being trained (collective), or None for a stage without them. The first
        metric is the one the best checkpoint is kept by (higher is better)."""
        return None

    def eval_every(self) -> int:
        """Evaluate every N optimizer steps (0: after the last step only)."""
        return 0

    def ema_decay(self) -> float:
        """Decay of an exponential moving average of the weights the loop keeps (0: none)."""
        return 0.0

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
        from maws_scale.model_config import build_model

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


class ClassifierStage(Stage):
    """A stage that trains the encoder with a classification head (WSP, fine-tuning): the plan's classification loss,
    the model built with ``num_classes`` outputs."""

    def __init__(self, cfg: RunConfig, num_classes: int, criterion: Callable | None = None) -> None:
        super().__init__(cfg)
        self.num_classes = num_classes
        self.criterion = criterion

    def bind(self, plan: ParallelPlan | None) -> None:
        """The plan's classification loss (vocab-parallel when the head is sharded) becomes this stage's criterion."""
        super().bind(plan)
        self.criterion = plan.classification_loss() if plan is not None else None

    def build_model(self, device: str | torch.device | None = None) -> nn.Module:
        from maws_scale.model_config import build_model

        return build_model(self.cfg, num_classes=self.num_classes, device=device)


class WSPStage(ClassifierStage):
    """Weakly-supervised pretraining: softmax cross-entropy against soft multi-hot hashtag targets."""

    name = "wsp"
    data_stage = "wsp"

    def __init__(self, cfg: RunConfig, num_classes: int, criterion: Callable | None = None) -> None:
        if cfg.wsp.num_classes is not None and cfg.wsp.num_classes != num_classes:
            raise ConfigError(
                f"wsp.num_classes={cfg.wsp.num_classes} but the vocabulary has {num_classes} tags; "
                "leave wsp.num_classes unset or point wsp.vocab at the matching vocabulary"
            )
        super().__init__(cfg, num_classes, criterion)

    def initialize_weights(self, model: nn.Module, plan: ParallelPlan) -> None:
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

        def read() -> dict[str, torch.Tensor]:  # on the ranks that read the file (ZeRO-3: rank 0 alone)
            state, report = self._handoff_state(path)
            self.init_report = report.record("mae", str(path))
            return state

        plan.load_state(model, read)

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


def make_stage(cfg: RunConfig, num_classes: int | None = None, criterion: Callable | None = None) -> Stage:
    """The Stage object for ``cfg.stage``."""
    if cfg.stage == "mae":
        return MAEStage(cfg)
    if cfg.stage in ("clip", "mae_clip", "lit"):
        from maws_scale.train.clip_stages import CLIP_STAGE_TYPES

        return CLIP_STAGE_TYPES[cfg.stage](cfg)
    if cfg.stage == "finetune":
        from maws_scale.train.finetune import FinetuneStage, finetune_num_classes

        return FinetuneStage(cfg, num_classes or finetune_num_classes(cfg), criterion)
    if num_classes is None:
        raise ConfigError("wsp.num_classes: unknown; the WSP data set needs a vocabulary (wsp.vocab)")
    return WSPStage(cfg, num_classes, criterion)
