"""Real photos without a download: random crops of the sample images shipped inside scikit-image and
scikit-learn, re-encoded as JPEG. Used by the loader benchmark and by tests of the JPEG path."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

SKIMAGE_PHOTOS = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "hubble_deep_field.jpg",
    "camera.png",
    "brick.png",
    "grass.png",
    "gravel.png",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


def photo_files() -> list[Path]:
    """Paths of the sample photos of whichever of scikit-image / scikit-learn is installed (may be empty)."""
    paths: list[Path] = []
    try:
        import skimage

        paths += [Path(skimage.__file__).parent / "data" / name for name in SKIMAGE_PHOTOS]
    except ImportError:
        pass
    try:
        import sklearn

        paths += [Path(sklearn.__file__).parent / "datasets" / "images" / name for name in SKLEARN_PHOTOS]
    except ImportError:
        pass
    return [p for p in paths if p.is_file()]


def photo_jpegs(
    count: int, seed: int = 0, sides: tuple[int, int] = (224, 512), quality: int = 90
) -> list[tuple[bytes, tuple[int, int]]]:
    """``count`` JPEGs: random crops of the sample photos, resized so the longer side is in ``sides``;
    returns (bytes, (width, height)). Raises RuntimeError when no sample photo is installed."""
    files = photo_files()
    if not files:
        raise RuntimeError("no sample photos: install scikit-image or scikit-learn (the [bench] extra)")
    photos = [Image.open(p).convert("RGB") for p in files]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        w, h = photo.size
        frac = rng.uniform(0.5, 1.0)
        cw, ch = max(16, int(w * frac)), max(16, int(h * rng.uniform(0.5, 1.0)))
        left, top = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        crop = photo.crop((left, top, left + cw, top + ch))
        longer = int(rng.integers(sides[0], sides[1] + 1))
        scale = longer / max(cw, ch)
        size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
        buffer = io.BytesIO()
        crop.resize(size, Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=quality)
        out.append((buffer.getvalue(), size))
    return out
