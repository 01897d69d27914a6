"""``data.decode: gpu``: JPEGs decoded in batches on the accelerator, cropped and resized there.

A loader worker does no JPEG decode: it draws the crop boxes and flips with the same rule as the CPU path
(:func:`~maws_scale.data.decode.crop_plan`, a pure function of seed and stream position, so resume stays exact),
decodes only the records that are not JPEG on the CPU (per record, counted as ``cpu_fallback``), and sends the
JPEG bytes as one uint8 buffer (page-locked by the DataLoader's pin thread). The main process hands the bytes to a
batched decoder with ``torchvision.io.decode_jpeg``'s interface (``decoder(list_of_uint8_tensors, device=...) ->
list of (3, H, W) uint8``), then crops, resizes (bicubic with PIL's weights, as two matrix products) and flips each
image on the device.
A JPEG the device decoder refuses is decoded by PIL in the main process (counted as ``cpu_fallback``); one that
neither can decode is dropped or, in a training batch, replaced by another sample of the batch (counted as
``corrupt_image``), as the CPU path does.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from maws_scale.data.decode import crop_plan, decode_batch, decode_into, error_reason, open_image

log = logging.getLogger("maws_scale.data")
JPEG_MAGIC = b"\xff\xd8\xff"
JpegDecoder = Callable[..., list[torch.Tensor]]


def is_jpeg(data: bytes | None) -> bool:
    return bool(data) and data[:3] == JPEG_MAGIC  # type: ignore[index]


def torchvision_decoder() -> JpegDecoder | None:
    """``torchvision.io.decode_jpeg`` (RGB out), or None when torchvision cannot be imported here."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception:  # ImportError, or a torchvision built for another torch failing on import
        return None

    def decode(data: list[torch.Tensor], device: str | torch.device = "cpu") -> list[torch.Tensor]:
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))

    return decode


def pil_decoder(data: list[torch.Tensor], device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """A CPU stand-in with ``decode_jpeg``'s interface (full decode by PIL, RGB): exercises the device path's
    batching, cropping and resizing where torchvision is absent. Raises on bytes PIL cannot decode."""
    out = []
    for tensor in data:
        image = Image.open(io.BytesIO(tensor.numpy().tobytes())).convert("RGB")
        out.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).to(device))
    return out


def plan_device_batch(
    images: Sequence[bytes | None],
    positions: np.ndarray,
    seed: int,
    size: int,
    train: bool,
    scale: tuple[float, float],
    hflip: bool,
    out: np.ndarray,
    sizes: np.ndarray,
) -> tuple[np.ndarray, list[str | None], dict[str, Any], int]:
    """The worker's half: decode the non-JPEG records into ``out`` on the CPU, and describe the JPEGs for the
    device. Returns (ok mask, reasons, jobs {row: (bytes, box, flip, position, size)}, CPU fallbacks)."""
    n = len(images)
    sizes = np.array(sizes, dtype=np.int64)
    device_rows = np.array([is_jpeg(data) for data in images], dtype=bool)
    for i in np.flatnonzero(device_rows & (sizes <= 0).any(axis=1)):  # size not stored: read the header
        try:
            sizes[i] = open_image(images[i]).size
        except Exception:
            device_rows[i] = False  # the CPU path names the reason
    ok = np.ones(n, dtype=bool)
    reasons: list[str | None] = [None] * n
    cpu_rows = np.flatnonzero(~device_rows)
    if cpu_rows.size:
        decoded, cpu_ok, cpu_reasons = decode_batch(
            [images[i] for i in cpu_rows], positions[cpu_rows], seed, size, train, scale, hflip, sizes=sizes[cpu_rows]
        )
        out[cpu_rows] = decoded
        ok[cpu_rows] = cpu_ok
        for k, i in enumerate(cpu_rows):
            reasons[i] = cpu_reasons[k]
    rows = np.flatnonzero(device_rows)
    boxes, flips, _ = crop_plan(sizes[rows], positions[rows], seed, train, scale, hflip)
    out[rows] = 0
    jobs = {
        int(i): (images[i], boxes[k].astype(np.int64), bool(flips[k]), int(positions[i]), sizes[i].copy())
        for k, i in enumerate(rows.tolist())
    }
    fallbacks = int(sum(1 for i in cpu_rows if images[i]))
    return ok, reasons, jobs, fallbacks


def pack_jobs(jobs: dict[int, tuple], keep: np.ndarray) -> dict[str, Any] | None:
    """The device jobs of the emitted slots (``keep`` maps slot → batch row) as tensors: concatenated bytes and
    offsets, slots, boxes, flips, positions, sizes. None when no slot holds a JPEG."""
    slots = [k for k, row in enumerate(keep.tolist()) if row in jobs]
    if not slots:
        return None
    picked = [jobs[int(keep[k])] for k in slots]
    lengths = np.array([len(p[0]) for p in picked], dtype=np.int64)
    data = torch.frombuffer(bytearray(b"".join(p[0] for p in picked)), dtype=torch.uint8)
    return {
        "data": data,
        "offsets": np.concatenate([[0], np.cumsum(lengths)]),
        "slots": np.array(slots, dtype=np.int64),
        "boxes": np.stack([p[1] for p in picked]),
        "flips": np.array([p[2] for p in picked], dtype=bool),
        "positions": np.array([p[3] for p in picked], dtype=np.int64),
        "sizes": np.stack([p[4] for p in picked]),  # the (width, height) the boxes were drawn for
    }


def decode_on_device(
    images: torch.Tensor,
    jobs: dict[str, Any],
    device: str | torch.device,
    decoder: JpegDecoder,
    seed: int,
    train: bool,
    scale: tuple[float, float],
    hflip: bool,
) -> tuple[torch.Tensor, list[int], int, list[str]]:
    """The main process's half: ``images`` (B, 3, S, S) uint8 (CPU-decoded rows filled) to ``device``, the JPEG
    slots decoded there in one ``decoder`` call, cropped, resized and flipped. Returns (images on the device,
    (B, 3, S, S) in channels-last memory like the CPU path; failed slots; CPU fallbacks; failure reasons)."""
    size = images.shape[-1]
    out = images.permute(0, 2, 3, 1).to(device, non_blocking=True)  # (B, S, S, 3) view of the same memory
    offsets = jobs["offsets"]
    data = [jobs["data"][offsets[k] : offsets[k + 1]] for k in range(len(jobs["slots"]))]
    try:
        decoded: list[torch.Tensor | None] = list(decoder(data, device=device))
    except Exception:  # one bad JPEG fails the whole batched call: decode one by one to find it
        decoded = []
        for item in data:
            try:
                decoded.append(decoder([item], device=device)[0])
            except Exception:
                decoded.append(None)
    failed, reasons, fallbacks = [], [], 0
    for k, slot in enumerate(jobs["slots"].tolist()):
        image, box, flip = decoded[k], jobs["boxes"][k], bool(jobs["flips"][k])
        if image is None:  # the device decoder refused it: PIL, in this process, same crop
            fallbacks += 1
            reason = _cpu_decode(data[k], jobs["positions"][k : k + 1], seed, size, train, scale, hflip, out, slot)
            if reason is not None:
                failed.append(slot)
                reasons.append(reason)
            continue
        height, width = image.shape[-2:]
        left, top, w, h = (int(v) for v in box)
        if (width, height) != tuple(jobs["sizes"][k]):  # the stored size was wrong: redraw as the CPU path does
            box = crop_plan(np.array([[width, height]]), jobs["positions"][k : k + 1], seed, train, scale, hflip)[0][0]
            left, top, w, h = (int(v) for v in box)
        resized = resize_crop(image, (left, top, w, h), size)
        out[slot] = (resized.flip(-1) if flip else resized).permute(1, 2, 0)
    return out.permute(0, 3, 1, 2), failed, fallbacks, reasons


def _cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """The bicubic kernel PIL uses (a = -0.5)."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _weights(start: int, length: int, out: int, full: int, device: torch.device) -> tuple[torch.Tensor, int, int]:
    """PIL's resampling weights (out, hi - lo) along one axis for the span [start, start + length) of an axis of
    ``full`` pixels resized to ``out``: the kernel widens with the reduction (antialias) and, like PIL's
    ``resize(box=...)``, reads pixels beyond the span where it reaches them; rows normalised to 1."""
    scale = length / out
    support = 2.0 * max(scale, 1.0)
    lo = max(0, int(start - support - 1))
    hi = min(full, int(start + length + support + 2))
    centers = start + (torch.arange(out, device=device, dtype=torch.float64) + 0.5) * scale
    pixels = torch.arange(lo, hi, device=device, dtype=torch.float64) + 0.5
    weights = _cubic((pixels[None, :] - centers[:, None]) / max(scale, 1.0))
    return (weights / weights.sum(dim=1, keepdim=True)).float(), lo, hi


def resize_crop(image: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """uint8 (3, H, W) → the crop ``box`` (left, top, width, height) resized bicubic to uint8 (3, size, size), on
    the image's device, with PIL's weights (as the CPU path's ``Image.resize(box=...)``): two matrix products."""
    left, top, w, h = box
    rows, y0, y1 = _weights(top, h, size, image.shape[-2], image.device)
    cols, x0, x1 = _weights(left, w, size, image.shape[-1], image.device)
    region = image[:, y0:y1, x0:x1].float()
    return (rows @ region @ cols.T).round_().clamp_(0, 255).to(torch.uint8)


def _cpu_decode(
    data: torch.Tensor,
    position: np.ndarray,
    seed: int,
    size: int,
    train: bool,
    scale: tuple[float, float],
    hflip: bool,
    out: torch.Tensor,
    slot: int,
) -> str | None:
    """Decode one record with PIL into ``out[slot]`` (on any device); the failure reason or None."""
    try:
        image = open_image(data.numpy().tobytes())
        box, flips, _ = crop_plan(np.array([image.size]), position, seed, train, scale, hflip)
        pixels = np.empty((size, size, 3), dtype=np.uint8)
        decode_into(image, box[0], pixels, flip=bool(flips[0]))
    except Exception as err:
        return error_reason(err)
    out[slot] = torch.from_numpy(pixels).to(out.device)
    return None
