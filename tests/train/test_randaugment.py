"""RandAugment ops against PIL (the library timm's RandAugment runs on), and the per-image op / magnitude draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from maws_scale.train import randaugment as ra

FILL = (124, 116, 104)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    rng = np.random.RandomState(0)
    pixels = rng.randint(0, 256, (24, 20, 3)).astype(np.uint8)
    pixels[:8] = pixels[:8] // 3 + 40  # an uneven histogram for equalize / autocontrast
    return Image.fromarray(pixels)


def _tensor(img: Image.Image) -> torch.Tensor:
    return torch.tensor(np.asarray(img)).permute(2, 0, 1).float()


CASES = [
    ("autocontrast", lambda x: ra.auto_contrast(x), lambda i: ImageOps.autocontrast(i)),
    ("equalize", lambda x: ra.equalize(x), lambda i: ImageOps.equalize(i)),
    ("posterize", lambda x: ra.posterize(x, 2), lambda i: ImageOps.posterize(i, 2)),
    ("solarize", lambda x: ra.solarize(x, 100), lambda i: ImageOps.solarize(i, 100)),
    ("invert", lambda x: ra.apply_op(x, "Invert", 5), lambda i: ImageOps.invert(i)),
    *[
        (f"{name}-{f}", lambda x, fn=fn, f=f: fn(x, f), lambda i, cls=cls, f=f: cls(i).enhance(f))
        for f in (0.3, 1.7)
        for name, fn, cls in [
            ("color", ra.color, ImageEnhance.Color),
            ("contrast", ra.contrast, ImageEnhance.Contrast),
            ("brightness", ra.brightness, ImageEnhance.Brightness),
            ("sharpness", ra.sharpness, ImageEnhance.Sharpness),
        ]
    ],
    ("rotate", lambda x: ra.rotate(x, 20), lambda i: i.rotate(20, resample=Image.BILINEAR, fillcolor=FILL)),
    (
        "shear",
        lambda x: ra.affine(x, (1, 0.2, 0, 0, 1, 0)),
        lambda i: i.transform(i.size, Image.AFFINE, (1, 0.2, 0, 0, 1, 0), resample=Image.BILINEAR, fillcolor=FILL),
    ),
    (
        "translate",
        lambda x: ra.affine(x, (1, 0, 5, 0, 1, -3)),
        lambda i: i.transform(i.size, Image.AFFINE, (1, 0, 5, 0, 1, -3), resample=Image.BILINEAR, fillcolor=FILL),
    ),
]


@pytest.mark.parametrize(("name", "ours", "pil"), CASES, ids=[c[0] for c in CASES])
def test_each_op_matches_pil_within_one_grey_level(image, name, ours, pil):
    got, expected = ours(_tensor(image)), _tensor(pil(image))
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1.0, name
    assert (got != expected).float().mean().item() < 0.06, name  # off by one only where float rounding differs


def test_magnitude_zero_geometric_ops_are_the_identity(image):
    x = _tensor(image)
    for name in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel", "BrightnessIncreasing"):
        assert torch.equal(ra.apply_op(x, name, 0.0), x), name


def test_each_image_draws_its_own_ops_and_the_pixels_stay_uint8(image):
    torch.manual_seed(0)
    batch = _tensor(image).expand(16, -1, -1, -1).clone()
    out = ra.rand_augment(batch, num_ops=2, magnitude=9)
    assert out.shape == batch.shape
    assert torch.equal(out, out.round()) and out.min() >= 0 and out.max() <= 255
    changed = [not torch.equal(out[i], batch[i]) for i in range(16)]
    assert 4 <= sum(changed) < 16  # each op applies with probability 0.5: (1/2)^2 of images keep their pixels
    distinct = {tuple(out[i].flatten()[:64].tolist()) for i in range(16) if changed[i]}
    assert len(distinct) > 1
    assert torch.equal(ra.rand_augment(batch, num_ops=0), batch)
