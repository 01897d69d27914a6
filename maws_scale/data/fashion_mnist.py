"""Fashion-MNIST as a MAWS-style data set: single 28-px images, or a noisy multi-label set of 2×2 mosaics (56 px).

Reads the idx files of Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) and PNG-encodes
each image. Mosaic record ``i`` is four tiles drawn at random (with replacement) from the split; its clean tags are
the classes present, its ``label`` is the class of the **top-left tile**. Label noise: with probability ``noise`` a
record's tag set gets one corruption, chosen uniformly among *drop* (remove one tag), *add* (add one absent class)
and *flip* (replace one tag by an absent class). The noisy set goes to ``tags``, the clean one to ``clean_tags``.
Everything is a pure function of (split, variant, seed, noise, limit).
"""

from __future__ import annotations

import gzip
import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from maws_scale.data.build import group_by_size
from maws_scale.data.shards import DatasetError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _read_idx(path: Path, magic: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except OSError as err:
        raise DatasetError(f"{path}: cannot read idx file ({err})") from None
    header = np.frombuffer(raw[:4], dtype=">u4")[0]
    if header != magic:
        raise DatasetError(f"{path}: bad idx magic {header}, expected {magic}")
    ndim = magic & 0xFF
    dims = np.frombuffer(raw[4 : 4 + 4 * ndim], dtype=">u4").astype(int)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: idx payload has {data.size} bytes, header says {tuple(dims)}")
    return data.reshape(tuple(dims))


@lru_cache(maxsize=2)
def load_split(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)) of a Fashion-MNIST split."""
    images_file, labels_file = FILES[split]
    images = _read_idx(Path(root) / images_file, 2051)
    labels = _read_idx(Path(root) / labels_file, 2049)
    if len(images) != len(labels):
        raise DatasetError(f"{root}: {len(images)} images but {len(labels)} labels in split '{split}'")
    return images, labels


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def corrupt(tags: list[int], op: int, r1: float, r2: float, num_classes: int = len(CLASSES)) -> list[int]:
    """Apply noise op 0 = drop, 1 = add, 2 = flip to a sorted tag list, choosing with uniforms r1, r2 in [0, 1)."""
    absent = [c for c in range(num_classes) if c not in tags]
    out = list(tags)
    if op == 0 and out:
        out.pop(int(r1 * len(out)))
    elif op == 1 and absent:
        out.append(absent[int(r2 * len(absent))])
    elif op == 2 and out and absent:
        out[int(r1 * len(out))] = absent[int(r2 * len(absent))]
    return sorted(out)


@dataclass
class FashionMNISTSource:
    """Source for :func:`maws_scale.data.build.build_dataset`."""

    root: str = DEFAULT_DIR
    split: str = "train"
    variant: str = "mosaic"
    noise: float = 0.0
    limit: int | None = None
    seed: int = 0
    captions: bool = False  # image-text data: a caption from the (noisy) tags, e.g. "a mosaic of bag, sneaker"
    name: str = "fashion-mnist"

    def __post_init__(self) -> None:
        if self.split not in FILES:
            raise ValueError(f"--split must be one of {', '.join(FILES)}, got '{self.split}'")
        if self.variant not in ("mosaic", "single"):
            raise ValueError(f"--variant must be mosaic or single, got '{self.variant}'")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"--noise must be in [0, 1], got {self.noise}")

    def describe(self) -> dict[str, Any]:
        return (
            {k: getattr(self, k) for k in ("root", "split", "variant", "noise", "limit", "seed")}
            | {
                "label": "class of the top-left tile" if self.variant == "mosaic" else "class of the image",
                "classes": list(CLASSES),
            }
            | ({"captions": "from the noisy tags"} if self.captions else {})
        )

    def _count(self) -> int:
        images, _ = load_split(self.root, self.split)
        return min(self.limit or len(images), len(images)) if self.variant == "single" else self.limit or len(images)

    def _draws(self) -> dict[str, np.ndarray]:
        """Every random choice of the whole set, drawn at once so any record range reproduces them."""
        images, _ = load_split(self.root, self.split)
        n = self._count()
        rng = np.random.default_rng([self.seed, 0 if self.split == "train" else 1])
        tiles = rng.integers(0, len(images), size=(n, 4)) if self.variant == "mosaic" else np.arange(n)[:, None]
        return {
            "tiles": tiles,
            "noisy": rng.random(n) < self.noise,
            "op": rng.integers(0, 3, size=n),
            "r": rng.random((n, 2)),
        }

    def plan(self, shard_size: int) -> tuple[list[Any], Counter]:
        n = self._count()
        sample = list(self.records((0, min(n, 64)), Counter()))
        per_record = sum(len(r["image"]) + len(r["key"]) + 16 * len(r["tags"]) + 40 for r in sample) // len(sample)
        groups = group_by_size(list(range(n)), [per_record] * n, shard_size)
        return [(g[0], g[-1] + 1) for g in groups], Counter()

    def records(self, task: tuple[int, int], skipped: Counter) -> Iterator[dict[str, Any]]:
        images, labels = load_split(self.root, self.split)
        draws = self._draws()
        for i in range(*task):
            tiles = draws["tiles"][i]
            if self.variant == "mosaic":
                grid = images[tiles].reshape(2, 2, 28, 28).transpose(0, 2, 1, 3).reshape(56, 56)
            else:
                grid = images[tiles[0]]
            classes = sorted({int(c) for c in labels[tiles]})
            noisy = classes
            if draws["noisy"][i]:
                noisy = corrupt(classes, int(draws["op"][i]), *map(float, draws["r"][i]))
            record = {
                "key": f"fmnist-{self.split}-{self.variant}-{i:06d}",
                "image": _png(np.ascontiguousarray(grid)),
                "tags": [CLASSES[c] for c in noisy],
                "clean_tags": [CLASSES[c] for c in classes],
                "label": int(labels[tiles[0]]),
                "width": grid.shape[1],
                "height": grid.shape[0],
            }
            if self.captions:
                names = " and ".join(CLASSES[c].lower() for c in noisy)
                record["captions"] = [f"a mosaic of {names}" if self.variant == "mosaic" else f"a photo of a {names}"]
            yield record
