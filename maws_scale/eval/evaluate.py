"""``evaluate_checkpoint``: frozen features of a checkpoint's encoder → linear probe, kNN and few-shot accuracy.

Data: the labeled Arrow set ``cfg.data.eval_path``. Probes are fitted on ``cfg.eval.train_path`` when it is set
(e.g. the Fashion-MNIST train split) and scored on ``data.eval_path``; otherwise ``data.eval_path`` is split
deterministically by record key (20 % probe-test, see :func:`~maws_scale.eval.features.split_by_key`).
Metric names are ``eval/<name>``; accuracies are top-1 in percent.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Protocol

import torch

from maws_scale.config import ConfigError
from maws_scale.data import build_loader
from maws_scale.eval.checkpoint import load_encoder, random_encoder
from maws_scale.eval.classifiers import few_shot, knn_classify, linear_probe
from maws_scale.eval.features import Features, extract_features, split_by_key

if TYPE_CHECKING:
    from maws_scale.config import RunConfig

EVAL_BATCH = 256
RANDOM = "random"


class MetricSink(Protocol):
    """What evaluation needs from a tracker (``maws_scale.track.mlflow``'s tracker has it)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


def _features(
    encoder: torch.nn.Module, cfg: RunConfig, path: str, limit: int | None, what: str, progress: bool
) -> Features:
    loader = build_loader(cfg, stage="eval", rank=0, world_size=1, micro_batch=EVAL_BATCH, path=path, infinite=False)
    total = getattr(loader, "epoch_size", None)
    device = next(encoder.parameters()).device
    dtype = torch.bfloat16 if device.type == "cuda" else None  # GPUs: bf16 autocast; CPUs: fp32 (bf16 is slow there)
    return extract_features(
        encoder, loader, max_samples=limit, total=total, description=what, progress=progress, dtype=dtype
    )


def evaluate_features(train: Features, test: Features, cfg: RunConfig) -> dict[str, float]:
    """Linear probe, kNN and few-shot on precomputed features; returns ``eval/*`` metrics."""
    classes = int(max(train.y.max(), test.y.max())) + 1
    metrics: dict[str, float] = {}
    metrics.update(linear_probe(train.x, train.y, test.x, test.y, num_classes=classes, seed=cfg.seed))
    metrics["knn_top1"] = knn_classify(train.x, train.y, test.x, test.y, k=cfg.eval.knn_k, num_classes=classes)
    if cfg.eval.few_shot:
        metrics.update(
            few_shot(train.x, train.y, test.x, test.y, cfg.eval.few_shot, seeds=cfg.eval.seeds, num_classes=classes)
        )
    metrics["num_probe_train"] = float(len(train))
    metrics["num_probe_test"] = float(len(test))
    return {f"eval/{k}": float(v) for k, v in metrics.items()}


def evaluate_encoder(encoder: torch.nn.Module, cfg: RunConfig, progress: bool = True) -> dict[str, float]:
    """Evaluate an encoder (with ``forward_features`` and ``pool``) on the config's labeled set(s)."""
    if not cfg.data.eval_path:
        raise ConfigError("data.eval_path: not set; evaluation needs a labeled set (`maws-scale data build ...`)")
    start = time.perf_counter()
    if cfg.eval.train_path:
        train = _features(encoder, cfg, cfg.eval.train_path, cfg.eval.max_train, "probe-train features", progress)
        test = _features(encoder, cfg, cfg.data.eval_path, None, "probe-test features", progress)
    else:
        train, test = split_by_key(_features(encoder, cfg, cfg.data.eval_path, None, "features", progress))
        if cfg.eval.max_train and len(train) > cfg.eval.max_train:
            train = train.subset(torch.arange(cfg.eval.max_train))
    seconds = time.perf_counter() - start
    metrics = evaluate_features(train, test, cfg)
    metrics["eval/feature_seconds"] = seconds
    return metrics


def evaluate_checkpoint(
    cfg: RunConfig,
    checkpoint_path: str | os.PathLike,
    tracker: MetricSink | Any | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Evaluate the encoder in ``checkpoint_path`` (MAE, WSP or two-tower state dict; the latter adds zero-shot
    classification and retrieval, see ``eval/zero_shot.py``) with ``cfg.model.pool`` on
    ``cfg.data.eval_path``; log the metrics to ``tracker`` (at step ``train.steps``) when given; return them.
    ``checkpoint_path="random"`` evaluates an untrained encoder (seed ``cfg.seed``): the floor of the probes.
    Features are extracted on ``device`` (default CPU; the pipeline passes the training device), in bf16 on CUDA."""
    from maws_scale.models.attention import pin_attention_backends

    device = torch.device(device or "cpu")
    clip = None
    if str(checkpoint_path) != RANDOM:
        from maws_scale.eval.zero_shot import is_clip_state, load_clip
        from maws_scale.models.state import load_state_dict_file

        if is_clip_state(load_state_dict_file(checkpoint_path)):  # clip / mae_clip / lit: probes + zero-shot
            clip = load_clip(cfg, checkpoint_path)
    if clip is not None:
        from maws_scale.eval.zero_shot import zero_shot_metrics

        metrics = {**evaluate_encoder(clip.visual, cfg), **zero_shot_metrics(clip, cfg)}
    else:
        encoder = random_encoder(cfg) if str(checkpoint_path) == RANDOM else load_encoder(cfg, checkpoint_path)
        encoder = encoder.to(device)
        pin_attention_backends(encoder, device)
        metrics = evaluate_encoder(encoder, cfg)
    if tracker is not None:
        tracker.log_metrics(metrics, step=cfg.train.steps or 0)
    return metrics
