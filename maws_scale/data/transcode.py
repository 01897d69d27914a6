"""Build-time image format: resize (``shorter:N``, ``max:N``, ``square:N`` or ``none``) and encoding (the encoded
bytes, re-encoded as JPEG when resized; or ``raw`` uint8 HWC pixels).

``shorter:N`` and ``max:N`` keep the aspect ratio (shorter / longer side to N); ``square:N`` takes the centred
square and resizes it to N×N. No rule ever upscales: an image already small enough keeps its pixels (and, encoded,
its original bytes). Every record keeps its original size (``orig_width``/``orig_height``) and the resize applied
(``resize``); the manifest records the format under ``build.options.image``, and ``data merge`` refuses parts built
with different formats.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from maws_scale.data.decode import to_8bit

ENCODINGS = ("encoded", "raw")
DEFAULT_QUALITY = 90


@dataclass(frozen=True)
class ImageFormat:
    """How a builder stores images. The default (``resize="none"``, ``encoding="encoded"``) stores the bytes as
    found."""

    resize: str = "none"
    jpeg_quality: int | None = None
    encoding: str = "encoded"

    def __post_init__(self) -> None:
        rule, _ = parse_resize(self.resize)
        if self.encoding not in ENCODINGS:
            raise ValueError(f"--encoding: unknown '{self.encoding}' (one of {', '.join(ENCODINGS)})")
        if self.encoding == "raw" and rule == "none":
            raise ValueError("--encoding raw needs a --resize (e.g. square:64): raw pixels of full photos are huge")
        if self.jpeg_quality is not None:
            if not 1 <= self.jpeg_quality <= 100:
                raise ValueError(f"--jpeg-quality: {self.jpeg_quality} is outside 1..100")
            if rule == "none" or self.encoding == "raw":
                raise ValueError("--jpeg-quality applies to resized JPEGs: give --resize, not --encoding raw")

    @property
    def is_default(self) -> bool:
        return self == ImageFormat()

    @property
    def quality(self) -> int:
        return self.jpeg_quality or DEFAULT_QUALITY

    def describe(self) -> dict[str, Any]:
        """The manifest's record of the format (``build.options.image``)."""
        quality = self.quality if self.resize != "none" and self.encoding == "encoded" else None
        return {"resize": self.resize, "jpeg_quality": quality, "encoding": self.encoding}

    def apply(self, data: bytes, image: Image.Image) -> tuple[bytes, tuple[int, int], str]:
        """(stored bytes, stored (width, height), resize applied: the rule, or "none" when the image was already
        small enough) for the encoded ``data`` opened as ``image``."""
        full = image.size
        target, box = target_size(full, *parse_resize(self.resize))
        resized = target != full or box is not None
        if not resized and self.encoding == "encoded":
            return data, full, "none"
        src = box or (0, 0, *full)
        if image.format == "JPEG" and resized:  # DCT scaling: decode at the smallest scale that still covers target
            want = (
                math.ceil(full[0] * target[0] / (src[2] - src[0])),
                math.ceil(full[1] * target[1] / (src[3] - src[1])),
            )
            image.draft(image.mode if image.mode in ("L", "RGB") else "RGB", want)
        sx, sy = image.size[0] / full[0], image.size[1] / full[1]
        if image.mode != "RGB":
            image = to_8bit(image).convert("RGB")
        if resized:
            image = image.resize(
                target, Image.Resampling.BICUBIC, box=(src[0] * sx, src[1] * sy, src[2] * sx, src[3] * sy)
            )
        applied = self.resize if resized else "none"
        if self.encoding == "raw":
            return np.ascontiguousarray(np.asarray(image, dtype=np.uint8)).tobytes(), target, applied
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=self.quality)
        return buffer.getvalue(), target, applied


def parse_resize(spec: str) -> tuple[str, int]:
    """'shorter:256' → ('shorter', 256); 'none' → ('none', 0); ValueError naming the option otherwise."""
    if spec == "none":
        return "none", 0
    match = re.fullmatch(r"(shorter|max|square):(\d+)", spec)
    if not match or int(match.group(2)) < 1:
        raise ValueError(f"--resize: '{spec}' is not one of none, shorter:N, max:N, square:N (N ≥ 1)")
    return match.group(1), int(match.group(2))


def target_size(
    size: tuple[int, int], rule: str, side: int
) -> tuple[tuple[int, int], tuple[int, int, int, int] | None]:
    """(output (width, height), centred crop box in source pixels or None) for ``rule``; never larger than the
    source."""
    width, height = size
    if rule == "square":
        short = min(width, height)
        left, top = (width - short) // 2, (height - short) // 2
        crop = None if width == height else (left, top, left + short, top + short)
        out = min(side, short)
        return (out, out), crop
    ref = min(width, height) if rule == "shorter" else max(width, height)
    if rule == "none" or ref <= side:
        return (width, height), None
    scale = side / ref
    return (max(1, round(width * scale)), max(1, round(height * scale))), None
