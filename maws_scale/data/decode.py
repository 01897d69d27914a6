"""Decode + augment: the MAE recipe (RandomResizedCrop(0.2–1.0, bicubic) + horizontal flip), uint8 out.

Randomness is a counter-based hash of (seed, global sample position), computed for a whole batch at once, so a
resumed run draws exactly the crops it would have drawn. JPEGs decode through PIL's ``draft()`` (libjpeg DCT
scaling): when the crop is at least 2× the output side, the decoder reduces by 2/4/8 while decoding. Images are
written channels-last (B, H, W, 3), one contiguous write each; the loader hands them out as a (B, 3, H, W) view
(torch's channels_last layout), and :func:`normalize_on_device` turns them into contiguous normalised floats on the
accelerator.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RATIO = (3 / 4, 4 / 3)
ATTEMPTS = 10
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
    return x ^ (x >> np.uint64(31))


def uniforms(seed: int, positions: np.ndarray, count: int) -> np.ndarray:
    """float64 (B, count) uniforms in [0, 1), a pure function of (seed, position, column)."""
    with np.errstate(over="ignore"):
        base = _splitmix(np.full(1, seed & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64))
        pos = _splitmix(np.asarray(positions, dtype=np.int64).astype(np.uint64) ^ base)
        cols = np.arange(count, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03)
        bits = _splitmix(pos[:, None] ^ cols[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def random_resized_crop_params(
    sizes: np.ndarray, u: np.ndarray, scale: tuple[float, float], ratio: tuple[float, float] = RATIO
) -> np.ndarray:
    """Crop boxes (B, 4) = (left, top, width, height) for image sizes (B, 2) = (width, height), torchvision's
    RandomResizedCrop rule (10 attempts, then a centre crop clamped to ``ratio``), vectorised over the batch.
    ``u`` holds at least 4 × ATTEMPTS uniforms per sample."""
    width = sizes[:, 0:1].astype(np.float64)
    height = sizes[:, 1:2].astype(np.float64)
    u = u[:, : 4 * ATTEMPTS].reshape(len(sizes), ATTEMPTS, 4)
    area = width * height * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = np.round(np.sqrt(area * aspect))
    h = np.round(np.sqrt(area / aspect))
    valid = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = np.argmax(valid, axis=1)
    rows = np.arange(len(sizes))
    w, h = w[rows, first], h[rows, first]
    left = np.floor(u[rows, first, 2] * (width[:, 0] - w + 1))
    top = np.floor(u[rows, first, 3] * (height[:, 0] - h + 1))
    # fallback: whole image, clamped to the ratio range, centred
    fw, fh = width[:, 0].copy(), height[:, 0].copy()
    in_ratio = fw / fh
    narrow, wide = in_ratio < ratio[0], in_ratio > ratio[1]
    fh[narrow] = np.round(fw[narrow] / ratio[0])
    fw[wide] = np.round(fh[wide] * ratio[1])
    ok = valid.any(axis=1)
    boxes = np.where(
        ok[:, None],
        np.stack([left, top, w, h], axis=1),
        np.stack([(width[:, 0] - fw) // 2, (height[:, 0] - fh) // 2, fw, fh], axis=1),
    )
    return boxes


def center_params(sizes: np.ndarray, crop: float = 1.0) -> np.ndarray:
    """Centre square boxes (B, 4): resize-shorter-side-then-centre-crop as one crop+resize, the crop ``crop`` times the
    shorter side (DeiT's crop_pct); ``crop=0``: the whole image, squashed to a square (MAWS's square resize)."""
    if crop <= 0:
        zeros = np.zeros(len(sizes), dtype=np.float64)
        return np.stack([zeros, zeros, sizes[:, 0].astype(np.float64), sizes[:, 1].astype(np.float64)], axis=1)
    side = sizes.min(axis=1).astype(np.float64) * crop
    return np.stack([(sizes[:, 0] - side) // 2, (sizes[:, 1] - side) // 2, side, side], axis=1)


def decode_into(image: Image.Image, box: Sequence[float], out: np.ndarray, flip: bool = False, draft: bool = True):
    """Crop ``box`` (left, top, width, height in original pixels) from an opened image, resize it bicubic to
    ``out``'s (H, W, 3) shape, mirror it if ``flip``, and write it there; grayscale/palette images become RGB."""
    side = out.shape[0]
    full_w, full_h = image.size
    left, top, w, h = (float(v) for v in box)
    if draft and image.format == "JPEG":
        factor = min(w, h) / side
        reduce = 1 << min(3, math.floor(math.log2(factor))) if factor >= 2 else 1
        if reduce > 1:
            image.draft(image.mode if image.mode in ("L", "RGB") else "RGB", (full_w // reduce, full_h // reduce))
    sx, sy = full_w / image.size[0], full_h / image.size[1]
    if image.mode not in ("L", "RGB"):
        image = to_8bit(image).convert("RGB")
    crop_box = (left / sx, top / sy, (left + w) / sx, (top + h) / sy)
    pixels = np.asarray(image.resize((out.shape[1], side), Image.Resampling.BICUBIC, box=crop_box))
    if flip:
        pixels = pixels[:, ::-1]
    out[:] = pixels[..., None] if pixels.ndim == 2 else pixels


def to_8bit(image: Image.Image) -> Image.Image:
    """16-bit grayscale (mode ``I;16*``, or ``I`` holding 16-bit values) scaled to 8-bit ``L`` (0..65535 → 0..255);
    PIL's own conversion clips every value above 255 to white. Other modes are returned as they are."""
    if not (image.mode.startswith("I;16") or image.mode == "I"):
        return image
    pixels = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16") or pixels.max(initial=0) > 255:
        pixels = pixels / 257.0
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="L")


def open_image(data: bytes) -> Image.Image:
    """Open encoded bytes lazily (header only); raises on unidentifiable data."""
    return Image.open(io.BytesIO(data))


def error_reason(err: BaseException) -> str:
    text = str(err).lower()
    if "truncat" in text or "premature end" in text:
        return "truncated_image"
    return "corrupt_image"


def _boxes(sizes: np.ndarray, u: np.ndarray | None, scale: tuple[float, float], crop: float = 1.0) -> np.ndarray:
    return center_params(sizes, crop) if u is None else random_resized_crop_params(sizes, u, scale)


def crop_plan(
    sizes: np.ndarray,
    positions: np.ndarray,
    seed: int,
    train: bool,
    scale: tuple[float, float],
    hflip: bool,
    eval_crop: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(crop boxes (B, 4), flips (B,), uniforms or None) for images of ``sizes`` (B, 2) at stream ``positions``:
    the one rule every decode path (PIL, raw pixels, GPU) crops by, so that they and a resumed run agree.
    ``eval_crop``: the centre crop of ``train=False`` (:func:`center_params`)."""
    u = uniforms(seed, positions, 4 * ATTEMPTS + 1) if train else None
    boxes = _boxes(sizes, u, scale, eval_crop)
    flips = (u[:, -1] < 0.5) if (u is not None and hflip) else np.zeros(len(sizes), dtype=bool)
    return boxes, flips, u


def decode_batch(
    images: Sequence[bytes | None],
    positions: np.ndarray,
    seed: int,
    size: int,
    train: bool,
    scale: tuple[float, float] = (0.2, 1.0),
    hflip: bool = True,
    draft: bool = True,
    out: np.ndarray | None = None,
    sizes: np.ndarray | None = None,
    encoding: str = "encoded",
    eval_crop: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Decode and augment a batch into ``out`` (uint8 (B, size, size, 3), allocated when None: channels last, so
    each image is one contiguous write); return (out, ok mask (B,), failure reason per sample). Failed rows are
    zero. ``sizes`` (B, 2) = stored (width, height), -1 where unknown: with them the crops are drawn for the whole
    batch before anything is opened, and each image is opened and decoded in one pass (a wrong stored size is
    noticed and its crop redrawn). ``encoding="raw"``: the bytes are uint8 (height, width, 3) pixels of the stored
    size (a record of another length is ``corrupt_image``); nothing is decoded. ``eval_crop``: the centre crop of
    ``train=False`` (:func:`center_params`)."""
    n = len(images)
    batch = np.empty((n, size, size, 3), dtype=np.uint8) if out is None else out
    if encoding == "raw":
        return _raw_batch(images, positions, seed, size, train, scale, hflip, batch, sizes, eval_crop)
    ok = np.zeros(n, dtype=bool)
    reasons: list[str | None] = [None] * n
    opened: list[Image.Image | None] = [None] * n
    sizes = np.full((n, 2), -1, dtype=np.int64) if sizes is None else np.array(sizes, dtype=np.int64)
    for i in np.flatnonzero((sizes <= 0).any(axis=1)):
        if not images[i]:
            reasons[i] = "empty_image"
            continue
        try:
            opened[i] = open_image(images[i])
            sizes[i] = opened[i].size
        except Exception as err:  # PIL raises many types on hostile input; each one is counted by the caller
            reasons[i] = error_reason(err)
    sizes[(sizes <= 0).any(axis=1)] = 1  # failed rows: any box will do
    boxes, flips, u = crop_plan(sizes, positions, seed, train, scale, hflip, eval_crop)
    for i in range(n):
        if reasons[i] is not None or not images[i]:
            reasons[i] = reasons[i] or "empty_image"
            batch[i] = 0
            continue
        try:
            image = opened[i] or open_image(images[i])
            if image.size != tuple(sizes[i]):
                sizes[i] = image.size
                boxes[i] = _boxes(sizes[i : i + 1], None if u is None else u[i : i + 1], scale, eval_crop)[0]
            decode_into(image, boxes[i], batch[i], flip=bool(flips[i]), draft=draft)
            ok[i] = True
        except Exception as err:
            reasons[i] = error_reason(err)
            batch[i] = 0
    return batch, ok, reasons


def _raw_batch(
    images: Sequence[bytes | None],
    positions: np.ndarray,
    seed: int,
    size: int,
    train: bool,
    scale: tuple[float, float],
    hflip: bool,
    batch: np.ndarray,
    sizes: np.ndarray | None,
    eval_crop: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """decode_batch for raw-pixel records: crop, resize and flip the stored arrays."""
    n = len(images)
    sizes = np.full((n, 2), -1, dtype=np.int64) if sizes is None else np.array(sizes, dtype=np.int64)
    reasons: list[str | None] = [None] * n
    for i in range(n):
        if not images[i]:
            reasons[i] = "empty_image"
        elif (sizes[i] <= 0).any() or len(images[i]) != int(sizes[i, 0]) * int(sizes[i, 1]) * 3:
            reasons[i] = "corrupt_image"  # a raw record must hold exactly width × height × 3 bytes
    ok = np.array([r is None for r in reasons], dtype=bool)
    sizes[~ok] = 1
    boxes, flips, _ = crop_plan(sizes, positions, seed, train, scale, hflip, eval_crop)
    for i, (size_i, box, flip) in enumerate(zip(sizes.tolist(), boxes.astype(np.int64).tolist(), flips.tolist())):
        if ok[i]:
            crop_pixels_into(images[i], tuple(size_i), box, batch[i], flip)
        else:
            batch[i] = 0
    return batch, ok, reasons


def crop_pixels_into(
    pixels: bytes, size: tuple[int, int], box: Sequence[int], out: np.ndarray, flip: bool = False
) -> None:
    """Crop ``box`` (left, top, width, height; integers) from raw uint8 RGB ``pixels`` of ``size`` (width,
    height), resize it bicubic to ``out``'s (H, W, 3) shape (PIL, read straight from the bytes), mirror it if
    ``flip``, write it there. A box that is the whole image at the output size is a copy."""
    left, top, w, h = box
    if (left, top, w, h) == (0, 0, *size) and size == (out.shape[1], out.shape[0]):
        crop = np.frombuffer(pixels, dtype=np.uint8).reshape(out.shape)
    else:
        image = Image.frombuffer("RGB", size, pixels, "raw", "RGB", 0, 1)
        crop = np.asarray(
            image.resize((out.shape[1], out.shape[0]), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))
        )
    out[:] = crop[:, ::-1] if flip else crop


def normalize_on_device(
    images: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """uint8 (B, 3, H, W) (any memory layout) → contiguous ``dtype`` (default float32) (x / 255 - mean) / std on
    ``images``' device. (torch is imported here, so building data sets never loads it.)"""
    import torch

    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != len(mean):
        raise ValueError(f"expected uint8 (B, {len(mean)}, H, W) images, got {images.dtype} {tuple(images.shape)}")
    scale, shift = _normalize_constants(images.device, tuple(mean), tuple(std))
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device).copy_(images)
    out.mul_(scale.view(1, -1, 1, 1)).sub_(shift.view(1, -1, 1, 1))
    return out.to(dtype or torch.float32)


_CONSTANTS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _normalize_constants(
    device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) fp32 vectors on ``device``, made once per device: a ``torch.tensor(list, device=cuda)`` per
    batch would be a blocking host-to-device copy."""
    import torch

    key = (device, mean, std)
    if key not in _CONSTANTS:
        scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32)
        shift = torch.tensor([m / s for m, s in zip(mean, std)], dtype=torch.float32)
        _CONSTANTS[key] = (scale.to(device), shift.to(device))
    return _CONSTANTS[key]
