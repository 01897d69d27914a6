"""The data layer: Arrow IPC shards, builders, hashtag vocabulary, a resumable streaming loader, decode/augment.

See docs/data.md. The trainer needs only ``build_loader`` and ``normalize_on_device``. They are imported on first
use, so the builders (``maws-scale data ...``) never import torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "build_loader", "normalize_on_device"]


def __getattr__(name: str) -> Any:
    if name in ("IMAGENET_MEAN", "IMAGENET_STD", "normalize_on_device"):
        from maws_scale.data import decode

        return getattr(decode, name)
    if name == "build_loader":
        from maws_scale.data.loader import build_loader

        return build_loader
    raise AttributeError(f"module 'maws_scale.data' has no attribute '{name}'")
