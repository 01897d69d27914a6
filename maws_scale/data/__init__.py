"""The data layer: Arrow IPC shards, builders, hashtag vocabulary, a resumable streaming loader, decode/augment.

See docs/data.md. The trainer needs only ``build_loader`` and ``normalize_on_device``.
"""

from maws_scale.data.decode import IMAGENET_MEAN, IMAGENET_STD, normalize_on_device
from maws_scale.data.loader import build_loader

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "build_loader", "normalize_on_device"]
