"""Stage finetune: a classifier trained end to end from a pretrained encoder, through the same loop and engine.

``FinetuneStage`` builds the classifier (``model.pool``; ``model.fc_norm`` for MAE's global pool), loads the encoder
from ``finetune.init_from`` (an MAE, WSP, MAWS or CLIP checkpoint of this toolkit, or a timm/MAWS-named state dict;
``pos_embed`` resampled to ``model.img_size``) and trains with RandAugment (``train/randaugment.py``), random erasing,
mixup / cutmix and label smoothing (``train/augment.py``); layer-wise LR decay lives in the optimizer's groups
(``models/layer_decay.py``). :func:`evaluate_classifier` measures top-1 / top-5 on ``data.eval_path`` at the
fine-tuning resolution, sharded over the data-parallel ranks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from maws_scale.config import ConfigError, RunConfig
from maws_scale.errors import RunError
from maws_scale.train.augment import Mixup, random_erasing
from maws_scale.train.stages import ClassifierStage

if TYPE_CHECKING:
    from maws_scale.parallel.plan import ParallelPlan


def finetune_num_classes(cfg: RunConfig) -> int:
    """``finetune.num_classes``, else the class list of ``data.path``'s manifest (``build.options.classes``)."""
    if cfg.finetune.num_classes is not None:
        return cfg.finetune.num_classes
    if cfg.data.synthetic:
        return 1000
    manifest = Path(cfg.data.path or "") / "manifest.json"
    try:
        classes = json.loads(manifest.read_text())["build"]["options"]["classes"]
    except (OSError, ValueError, KeyError, TypeError):
        classes = None
    if not isinstance(classes, list) or len(classes) < 2:
        raise ConfigError(f"finetune.num_classes: not set, and {manifest} lists no classes; set finetune.num_classes")
    return len(classes)


class FinetuneStage(ClassifierStage):
    """Supervised fine-tuning: soft-target cross-entropy of (mixed, smoothed) labels."""

    name = "finetune"
    data_stage = "finetune"

    def __init__(self, cfg: RunConfig, num_classes: int, criterion: Callable | None = None) -> None:
        super().__init__(cfg, num_classes, criterion)
        f = cfg.finetune
        self.mixup = Mixup(num_classes, f.mixup, f.cutmix, f.mix_prob, f.switch_prob, f.label_smoothing)

    def initialize_weights(self, model: nn.Module, plan: ParallelPlan) -> None:
        """``finetune.init=checkpoint``: the encoder of ``finetune.init_from`` into ``model`` (head fresh)."""
        f = self.cfg.finetune
        if f.init == "random":
            self.init_report = {"init": "random"}
            return
        if not f.init_from:
            raise ConfigError("finetune.init_from: finetune.init=checkpoint needs a checkpoint, or set init=random")
        path = Path(f.init_from)
        if not path.is_file():
            raise ConfigError(f"finetune.init_from: {path} does not exist")

        def read() -> dict[str, torch.Tensor]:  # on the ranks that read the file (ZeRO-3: rank 0 alone)
            from maws_scale.models.handoff import HandoffError, classifier_state
            from maws_scale.models.state import load_state_dict_file

            try:
                source = load_state_dict_file(path)
            except (RuntimeError, OSError, ValueError) as err:
                raise ConfigError(f"finetune.init_from: cannot read {path} as a state dict ({err})") from None
            try:
                state, report = classifier_state(source, self.build_model(device="meta"))
            except HandoffError as err:
                raise ConfigError(f"finetune.init_from: {path}: {err}") from None
            self.init_report = report.record("checkpoint", str(path))
            return state

        plan.load_state(model, read)

    def loss(self, model: Callable, batch: dict[str, Any], device: torch.device, dtype: torch.dtype):
        from maws_scale.models.heads import soft_target_cross_entropy

        labels = torch.as_tensor(batch["labels"])
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):  # host values
            raise RunError(
                f"data.path: a label outside [0, {self.num_classes}) in batch of {batch['keys'][0]!r}…; "
                "set finetune.num_classes to the data's class count"
            )
        f = self.cfg.finetune
        if f.randaug_ops > 0:  # on the uint8 pixels, before normalization (timm's order)
            from maws_scale.train.randaugment import rand_augment

            raw = batch["images"].to(device, non_blocking=True)
            batch = {**batch, "images": rand_augment(raw.float(), f.randaug_ops, f.randaug_magnitude).to(torch.uint8)}
        images = self.images(batch, device, torch.float32)
        images = random_erasing(images, f.random_erasing)
        images, targets = self.mixup(images, labels.to(device))
        logits = model(images.to(dtype))
        criterion = self.criterion or soft_target_cross_entropy
        return criterion(logits, targets).float(), {}

    def flops_per_sample(self) -> int:
        from maws_scale.models.flops import step_flops

        return step_flops(self.build_model(device="meta"), "wsp")  # a classifier's forward + backward

    def evaluate(self, model: nn.Module, plan: ParallelPlan, device: torch.device, dtype: torch.dtype) -> dict:
        """Top-1 / top-5 on ``data.eval_path`` (:func:`evaluate_classifier`)."""
        return evaluate_classifier(model, self.cfg, plan, device, dtype)

    def eval_every(self) -> int:
        return self.cfg.finetune.eval_every

    def ema_decay(self) -> float:
        return self.cfg.finetune.ema


def eval_crop(cfg: RunConfig) -> float:
    """The eval loader's centre crop: ``finetune.crop_pct``, or 0 (whole image) for ``eval_transform=square_resize``."""
    return 0.0 if cfg.finetune.eval_transform == "square_resize" else cfg.finetune.crop_pct


def evaluate_classifier(module: nn.Module, cfg: RunConfig, plan: ParallelPlan, device: torch.device, dtype) -> dict:
    """Top-1 / top-5 accuracy (%) of ``module`` on ``data.eval_path`` at ``model.img_size``, one ordered pass sharded
    over the data-parallel ranks (collective: every rank calls it; ranks with fewer batches run empty forwards so
    that ZeRO-3's gathers stay in step)."""
    from maws_scale.data import build_loader, normalize_on_device

    if not cfg.data.eval_path:
        raise ConfigError("data.eval_path: stage finetune evaluates top-1/top-5 on a held-out labeled set; set it")
    loader = build_loader(
        cfg, "eval", rank=plan.dp_rank, world_size=plan.dp_size, infinite=False, eval_crop=eval_crop(cfg)
    )
    batches = int(plan.data_parallel_max(len(loader)))
    counts = torch.zeros(3, dtype=torch.float64)  # top-1 hits, top-5 hits, samples
    was_training = module.training
    module.eval()
    stream = iter(loader)
    with torch.no_grad():
        for _ in range(batches):
            batch = next(stream, None)
            if batch is None:  # this rank's share is done: a forward the others' gathers need, not counted
                side = cfg.img_size
                module(torch.zeros((1, cfg.model.in_chans, side, side), device=device, dtype=dtype))
                continue
            images = normalize_on_device(batch["images"].to(device), dtype=dtype)
            logits = plan.full_logits(module(images)).float()
            labels = torch.as_tensor(batch["labels"]).long().to(logits.device)
            top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
            hits = top == labels[:, None]
            counts += torch.tensor([hits[:, 0].sum().item(), hits.any(dim=1).sum().item(), len(labels)])
    module.train(was_training)
    top1, top5, n = (plan.data_parallel_sum(float(c)) for c in counts)
    if n == 0:
        raise RunError(f"data.eval_path: {cfg.data.eval_path} gave no readable labeled sample to evaluate")
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "eval_samples": n}
