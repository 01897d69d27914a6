"""RandAugment on the device, with the semantics of timm's ``rand-m9-mstd0.5-inc1`` (DeiT / MAE fine-tuning).

Per image: ``num_ops`` operations drawn with replacement from the "increasing" set below, each applied with
probability 0.5 at a magnitude drawn from N(``magnitude``, ``magnitude_std``) clipped to [0, 10]; geometric ops fill
with the mean pixel (124, 116, 104). Images are float (C, H, W) tensors in [0, 255], rounded after every op as PIL's
uint8 images are; the colour ops follow PIL's ``ImageOps`` / ``ImageEnhance`` (tested against PIL), the geometric ones
resample bilinearly as PIL's affine transform does (within 1 grey level).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FILL = (124.0, 116.0, 104.0)
ROUNDING = torch.floor  # PIL truncates its bilinear samples to uint8
OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)


def _u8(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp_(0, 255)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """PIL's ``convert("L")`` (ITU-R 601-2 luma, rounded)."""
    r, g, b = x[0], x[1], x[2]
    return torch.floor((r * 19595 + g * 38470 + b * 7471 + 0x8000) / 65536)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL ``Image.blend``: computed in float, truncated to uint8."""
    return torch.floor(degenerate + factor * (x - degenerate)).clamp_(0, 255)


def auto_contrast(x: torch.Tensor) -> torch.Tensor:
    """Each channel stretched to [0, 255] (PIL ``ImageOps.autocontrast``, no cutoff)."""
    out = x.clone()
    for c in range(x.shape[0]):
        lo, hi = x[c].min(), x[c].max()
        if hi > lo:
            scale = 255.0 / float(hi - lo)
            out[c] = torch.floor(x[c] * scale - float(lo) * scale).clamp_(0, 255)  # PIL's int() of the LUT
    return out


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Per-channel histogram equalization (PIL ``ImageOps.equalize``)."""
    out = x.clone()
    for c in range(x.shape[0]):
        values = x[c].long().flatten()
        hist = torch.bincount(values, minlength=256)
        nonzero = hist[hist > 0]
        step = int((int(hist.sum()) - int(nonzero[-1])) // 255) if nonzero.numel() else 0
        if step == 0:
            continue
        cumulative = torch.cumsum(hist, 0) - hist  # the count before each value
        lut = torch.clamp((step // 2 + cumulative) // step, max=255)
        out[c] = lut[values].reshape(x[c].shape).to(x.dtype)
    return out


def posterize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Keep the ``bits`` high bits of every value."""
    if bits >= 8:
        return x
    mask = ~(2 ** (8 - bits) - 1) & 0xFF
    return (x.long() & mask).to(x.dtype)


def solarize(x: torch.Tensor, threshold: float) -> torch.Tensor:
    return torch.where(x >= threshold, 255.0 - x, x)


def solarize_add(x: torch.Tensor, add: int, threshold: float = 128) -> torch.Tensor:
    return torch.where(x < threshold, torch.clamp(x + add, max=255.0), x)


def color(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Saturation (PIL ``ImageEnhance.Color``): blend with the grey image."""
    return _blend(_gray(x).expand_as(x), x, factor)


def contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL ``ImageEnhance.Contrast``: blend with the mean grey level (rounded)."""
    mean = math.floor(float(_gray(x).mean()) + 0.5)
    return _blend(torch.full_like(x, float(mean)), x, factor)


def brightness(x: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(torch.zeros_like(x), x, factor)


def sharpness(x: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL ``ImageEnhance.Sharpness``: blend with the SMOOTH-filtered image (3×3, centre 5, total 13; border kept)."""
    kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(x.shape[0], 1, 3, 3)
    smooth = x.clone()
    smooth[:, 1:-1, 1:-1] = _u8(F.conv2d(x[None], kernel, groups=x.shape[0])[0])
    return _blend(smooth, x, factor)


def affine(x: torch.Tensor, matrix: tuple[float, ...]) -> torch.Tensor:
    """PIL ``Image.transform(AFFINE, (a, b, c, d, e, f))``: output pixel (u, v) samples input (a u + b v + c,
    d u + e v + f) (pixel centres), bilinear, outside filled with :data:`FILL`."""
    _, height, width = x.shape
    a, b, c, d, e, f = matrix
    v, u = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=x.device) + 0.5,
        torch.arange(width, dtype=torch.float32, device=x.device) + 0.5,
        indexing="ij",
    )
    src_x, src_y = a * u + b * v + c, d * u + e * v + f
    grid = torch.stack([src_x / width * 2 - 1, src_y / height * 2 - 1], dim=-1)[None]
    sampled = F.grid_sample(x[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    inside = (src_x >= 0) & (src_x < width) & (src_y >= 0) & (src_y < height)  # PIL: fill where the source is out
    fill = torch.tensor(FILL[: x.shape[0]], dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return torch.where(inside, ROUNDING(sampled + 1e-3), fill).to(x.dtype)  # + 1e-3: exact at whole pixels


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Counter-clockwise about the centre (PIL ``Image.rotate``)."""
    _, height, width = x.shape
    angle = math.radians(degrees)
    cx, cy = width / 2, height / 2
    cos, sin = math.cos(angle), math.sin(angle)
    # inverse map: output → input, rotation by -angle about the centre (PIL's rotate matrix)
    a, b, d, e = cos, -sin, sin, cos
    return affine(x, (a, b, cx - a * cx - b * cy, d, e, cy - d * cx - e * cy))


def _signed(value: float, generator: torch.Generator | None) -> float:
    return -value if float(torch.rand((), generator=generator)) < 0.5 else value


def apply_op(x: torch.Tensor, name: str, magnitude: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """One RandAugment op at ``magnitude`` (0-10), with timm's magnitude → argument rules."""
    level = magnitude / 10.0
    _, height, width = x.shape
    if name == "AutoContrast":
        return auto_contrast(x)
    if name == "Equalize":
        return equalize(x)
    if name == "Invert":
        return 255.0 - x
    if name == "Rotate":
        return rotate(x, _signed(30.0 * level, generator))
    if name == "PosterizeIncreasing":
        return posterize(x, 4 - int(4 * level))
    if name == "SolarizeIncreasing":
        return solarize(x, 256 - int(256 * level))
    if name == "SolarizeAdd":
        return solarize_add(x, int(110 * level))
    if name in ("ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"):
        factor = 1.0 + _signed(0.9 * level, generator)
        enhance = {"Color": color, "Contrast": contrast, "Brightness": brightness, "Sharpness": sharpness}
        return enhance[name.removesuffix("Increasing")](x, factor)
    if name == "ShearX":
        return affine(x, (1, _signed(0.3 * level, generator), 0, 0, 1, 0))
    if name == "ShearY":
        return affine(x, (1, 0, 0, _signed(0.3 * level, generator), 1, 0))
    if name == "TranslateXRel":
        return affine(x, (1, 0, _signed(0.45 * level, generator) * width, 0, 1, 0))
    if name == "TranslateYRel":
        return affine(x, (1, 0, 0, 0, 1, _signed(0.45 * level, generator) * height))
    raise ValueError(f"unknown RandAugment op '{name}' (known: {', '.join(OPS)})")


def rand_augment(
    images: torch.Tensor,
    num_ops: int = 2,
    magnitude: float = 9.0,
    magnitude_std: float = 0.5,
    prob: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, C, H, W) float images in [0, 255] → augmented copies, each image its own ops and magnitudes."""
    if num_ops <= 0:
        return images
    out = images.clone()
    for i in range(images.shape[0]):
        picks = torch.randint(0, len(OPS), (num_ops,), generator=generator).tolist()
        for pick in picks:
            if float(torch.rand((), generator=generator)) >= prob:
                continue
            level = (
                magnitude + magnitude_std * float(torch.randn((), generator=generator)) if magnitude_std else magnitude
            )
            out[i] = apply_op(out[i], OPS[pick], min(10.0, max(0.0, level)), generator)
    return out
