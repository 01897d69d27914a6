"""Frozen features of a labeled Arrow set: batched, no grad, pooled with the encoder's pooling choice."""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from maws_scale.data import normalize_on_device
from maws_scale.progress import counted_progress


@dataclass
class Features:
    """Pooled features (N, D) float32, integer labels (N,) and the record keys, on CPU."""

    x: torch.Tensor
    y: torch.Tensor
    keys: list[str]
    ids: torch.Tensor | None = None  # global sample ids (the loader's), to merge the shards of several ranks

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: torch.Tensor | list[int]) -> Features:
        index = torch.as_tensor(index, dtype=torch.long)
        ids = self.ids[index] if self.ids is not None else None
        return Features(self.x[index], self.y[index], [self.keys[i] for i in index.tolist()], ids)


def merge_shards(shards: list[Features], limit: int | None = None) -> Features:
    """The features of every rank's shard in global sample order (as one rank would have read them), each sample
    once, the first ``limit`` kept."""
    merged = Features(
        torch.cat([f.x for f in shards]),
        torch.cat([f.y for f in shards]),
        [k for f in shards for k in f.keys],
        torch.cat([f.ids for f in shards]),
    )
    order = torch.argsort(merged.ids, stable=True)
    keep = torch.ones(len(order), dtype=torch.bool)
    keep[1:] = merged.ids[order][1:] != merged.ids[order][:-1]  # a sample padded onto two ranks counts once
    order = order[keep][:limit]
    return merged.subset(order)


@torch.no_grad()
def extract_features(
    encoder: torch.nn.Module,
    batches: Iterable[dict[str, Any]],
    max_samples: int | None = None,
    total: int | None = None,
    description: str = "features",
    progress: bool = True,
    dtype: torch.dtype | None = None,
) -> Features:
    """Run ``encoder.forward_features`` + ``encoder.pool`` over loader batches (``images`` uint8, ``labels``) on the
    encoder's device; ``dtype`` (e.g. bf16): under autocast to it. Features come back fp32 on CPU."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    ids: list[torch.Tensor] = []
    keys: list[str] = []
    seen = 0
    limit = min(x for x in (max_samples, total) if x is not None) if (max_samples or total) else None
    try:
        with counted_progress(description, limit, enabled=progress, unit="images") as advance:
            for batch in batches:
                if "labels" not in batch or batch["labels"] is None:
                    raise ValueError("evaluation data has no 'label' column; build it with labels (a labeled set)")
                images = normalize_on_device(batch["images"].to(device, non_blocking=True))
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    pooled = encoder.pool(encoder.forward_features(images)).float().cpu()
                labels = torch.as_tensor(batch["labels"]).long().cpu()
                take = len(labels) if max_samples is None else min(len(labels), max_samples - seen)
                xs.append(pooled[:take])
                ys.append(labels[:take])
                if "sample_ids" in batch:
                    ids.append(torch.as_tensor(batch["sample_ids"]).long().cpu()[:take])
                keys.extend(list(batch.get("keys", [f"#{seen + i}" for i in range(take)]))[:take])
                seen += take
                advance(take)
                if max_samples is not None and seen >= max_samples:
                    break
    finally:
        encoder.train(was_training)
    if not xs:
        raise ValueError("evaluation data yielded no samples")
    return Features(torch.cat(xs), torch.cat(ys), keys, torch.cat(ids) if len(ids) == len(xs) else None)


def split_by_key(features: Features, test_every: int = 5) -> tuple[Features, Features]:
    """Deterministic probe-train / probe-test split: a record is test iff crc32(key) % ``test_every`` == 0.

    Depends only on the keys, not on the loader order, the world size or the batch size.
    """
    is_test = torch.tensor([zlib.crc32(key.encode()) % test_every == 0 for key in features.keys])
    train_idx, test_idx = (~is_test).nonzero().flatten(), is_test.nonzero().flatten()
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise ValueError(f"split_by_key: {len(features)} samples are too few for a probe-train / probe-test split")
    return features.subset(train_idx), features.subset(test_idx)
