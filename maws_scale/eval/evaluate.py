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
from maws_scale.eval.features import Features, extract_features, merge_shards, split_by_key

if TYPE_CHECKING:
    from maws_scale.config import RunConfig

EVAL_BATCH = 256
Shard = tuple[int, int]  # (rank, world size) of a collective evaluation
RANDOM = "random"


class MetricSink(Protocol):
    """What evaluation needs from a tracker (``maws_scale.track.mlflow``'s tracker has it)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


def _features(
    encoder: torch.nn.Module, cfg: RunConfig, path: str, limit: int | None, what: str, progress: bool, shard: Shard
) -> Features | None:
    """Features of ``path`` (its first ``limit`` samples). With several ranks (``shard`` = (rank, world size)) each
    extracts its strided slice and rank 0 gathers them in global order (a gloo group with ``parallel.wait_minutes``
    timeout); the other ranks get None."""
    rank, world = shard
    loader = build_loader(
        cfg, stage="eval", rank=rank, world_size=world, micro_batch=EVAL_BATCH, path=path, infinite=False
    )
    total = getattr(loader, "epoch_size", None)
    device = next(encoder.parameters()).device
    dtype = torch.bfloat16 if device.type == "cuda" else None  # GPUs: bf16 autocast; CPUs: fp32 (bf16 is slow there)
    per_rank = limit if limit is None or world == 1 else -(-limit // world)  # the slices are strided
    features = extract_features(
        encoder,
        loader,
        max_samples=per_rank,
        total=total,
        description=what,
        progress=progress and rank == 0,
        dtype=dtype,
    )
    if world == 1:
        return features
    import torch.distributed as dist

    from maws_scale.parallel.waits import wait_group

    gathered: list[Features] | None = [None] * world if rank == 0 else None  # type: ignore[list-item]
    dist.gather_object(features, gathered, dst=0, group=wait_group(cfg.parallel.wait_minutes))
    return merge_shards(gathered, limit) if gathered is not None else None


MAX_CLASSES = 1 << 20  # labels index (N, classes) score tables: a stray 2**62 would allocate without end


def _check_labels(labels: torch.Tensor, key: str) -> None:
    """Labels of an evaluation set lie in [0, MAX_CLASSES) (the loader gives -1 to a record without one)."""
    if len(labels) and (labels.min() < 0 or labels.max() >= MAX_CLASSES):
        bad = int(labels.min()) if labels.min() < 0 else int(labels.max())
        raise ConfigError(
            f"{key}: label {bad} (-1: a record without a label); evaluation needs labels in [0, {MAX_CLASSES})"
        )


def evaluate_features(train: Features, test: Features, cfg: RunConfig) -> dict[str, float]:
    """Linear probe, kNN and few-shot on precomputed features; returns ``eval/*`` metrics."""
    for features, key in (
        (train, "eval.train_path" if cfg.eval.train_path else "data.eval_path"),
        (test, "data.eval_path"),
    ):
        _check_labels(features.y, key)
    classes = int(max(train.y.max(), test.y.max())) + 1
    metrics: dict[str, float] = {}
    metrics.update(linear_probe(train.x, train.y, test.x, test.y, num_classes=classes, seed=cfg.seed))
    metrics["knn_top1"] = knn_classify(train.x, train.y, test.x, test.y, k=cfg.eval.knn_k, num_classes=classes)
    if cfg.eval.few_shot:
        counts = torch.bincount(train.y.long(), minlength=classes)
        if (most := max(cfg.eval.few_shot)) > counts.min():
            label = int(counts.argmin())
            raise ConfigError(
                f"eval.few_shot: {most} shots per class, but class {label} has {int(counts[label])} probe-train "
                f"samples; lower the shots or give a larger eval.train_path"
            )
        metrics.update(
            few_shot(train.x, train.y, test.x, test.y, cfg.eval.few_shot, seeds=cfg.eval.seeds, num_classes=classes)
        )
    metrics["num_probe_train"] = float(len(train))
    metrics["num_probe_test"] = float(len(test))
    return {f"eval/{k}": float(v) for k, v in metrics.items()}


def evaluate_encoder(
    encoder: torch.nn.Module, cfg: RunConfig, progress: bool = True, shard: Shard = (0, 1)
) -> dict[str, float] | None:
    """Evaluate an encoder (with ``forward_features`` and ``pool``) on the config's labeled set(s). With ``shard``
    = (rank, world size) every rank extracts its slice of the features (collective: all ranks call this) and rank 0
    fits the probes; the others return None."""
    if not cfg.data.eval_path:
        raise ConfigError("data.eval_path: not set; evaluation needs a labeled set (`maws-scale data build ...`)")
    start = time.perf_counter()
    if cfg.eval.train_path:
        train = _features(
            encoder, cfg, cfg.eval.train_path, cfg.eval.max_train, "probe-train features", progress, shard
        )
        test = _features(encoder, cfg, cfg.data.eval_path, None, "probe-test features", progress, shard)
    else:
        everything = _features(encoder, cfg, cfg.data.eval_path, None, "features", progress, shard)
        train, test = split_by_key(everything) if everything is not None else (None, None)
        if train is not None and cfg.eval.max_train and len(train) > cfg.eval.max_train:
            train = train.subset(torch.arange(cfg.eval.max_train))
    if train is None or test is None:
        return None
    seconds = time.perf_counter() - start
    metrics = evaluate_features(train, test, cfg)
    metrics["eval/feature_seconds"] = seconds
    return metrics


def evaluate_checkpoint(
    cfg: RunConfig,
    checkpoint_path: str | os.PathLike,
    tracker: MetricSink | Any | None = None,
    device: torch.device | str | None = None,
    shard: Shard = (0, 1),
) -> dict[str, float] | None:
    """Evaluate the encoder in ``checkpoint_path`` (MAE, WSP or two-tower state dict; the latter adds zero-shot
    classification and retrieval, see ``eval/zero_shot.py``) with ``cfg.model.pool`` on
    ``cfg.data.eval_path``; log the metrics to ``tracker`` (at step ``train.steps``) when given; return them.
    ``checkpoint_path="random"`` evaluates an untrained encoder (seed ``cfg.seed``): the floor of the probes.
    Features are extracted on ``device`` (default CPU; the pipeline and ``maws-scale eval`` pass the job's), in bf16
    on CUDA;
    with ``shard`` = (rank, world size) by every rank (see :func:`evaluate_encoder`), and rank 0 returns the metrics
    (None elsewhere). Zero-shot metrics of a two-tower model are computed on rank 0 alone."""
    from maws_scale.models.attention import pin_attention_backends

    device = torch.device(device or "cpu")
    clip = None
    if str(checkpoint_path) != RANDOM:
        from maws_scale.eval.zero_shot import is_clip_state, load_clip
        from maws_scale.models.state import load_state_dict_file

        if is_clip_state(load_state_dict_file(checkpoint_path)):  # clip / mae_clip / lit: probes + zero-shot
            clip = load_clip(cfg, checkpoint_path, device)  # on the job's device, like the probes' encoder
    if clip is not None:
        from maws_scale.eval.zero_shot import zero_shot_metrics

        probes = evaluate_encoder(clip.visual, cfg, shard=shard)
        metrics = {**probes, **zero_shot_metrics(clip, cfg)} if probes is not None else None
    else:
        encoder = random_encoder(cfg) if str(checkpoint_path) == RANDOM else load_encoder(cfg, checkpoint_path)
        encoder = encoder.to(device)
        pin_attention_backends(encoder, device)
        metrics = evaluate_encoder(encoder, cfg, shard=shard)
    if tracker is not None and metrics is not None:
        tracker.log_metrics(metrics, step=cfg.train.steps or 0)
    return metrics
