"""Decode + augment: crop geometry, determinism, the JPEG draft fast path, grayscale/alpha handling, bad bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from maws_scale.data.decode import (
    center_params,
    decode_batch,
    random_resized_crop_params,
    uniforms,
)


def _encode(array: np.ndarray, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def _photo(width: int = 480, height: int = 360) -> np.ndarray:
    """A smooth colour image (so a JPEG of it is faithful and resizes compare well)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1).astype(np.uint8)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 3000), st.integers(1, 3000)), min_size=1, max_size=16),
    st.integers(0, 2**63),
    st.floats(0.01, 1.0),
)
def test_crop_boxes_lie_inside_the_image(sizes, seed, low):
    sizes = np.array(sizes)
    boxes = random_resized_crop_params(sizes, uniforms(seed, np.arange(len(sizes)), 41), (low, 1.0))
    left, top, w, h = boxes.T
    assert (w >= 1).all() and (h >= 1).all()
    assert (left >= 0).all() and (top >= 0).all()
    assert (left + w <= sizes[:, 0]).all() and (top + h <= sizes[:, 1]).all()


def test_crop_area_and_ratio_follow_the_recipe():
    sizes = np.full((4000, 2), 400)
    boxes = random_resized_crop_params(sizes, uniforms(0, np.arange(4000), 41), (0.2, 1.0))
    area = boxes[:, 2] * boxes[:, 3] / 400**2
    ratio = boxes[:, 2] / boxes[:, 3]
    assert area.min() >= 0.19 and area.max() <= 1.0
    assert 0.5 < np.median(area) < 0.7  # uniform scale in [0.2, 1], minus the attempts that do not fit
    assert (ratio > 0.74).all() and (ratio < 1.34).all()


def test_uniforms_are_a_pure_function_of_seed_and_position():
    a = uniforms(7, np.array([5, 6, 7]), 3)
    assert np.array_equal(a, uniforms(7, np.array([5, 6, 7]), 3))
    assert np.array_equal(a[1:], uniforms(7, np.array([6, 7]), 3))  # does not depend on batch composition
    assert not np.array_equal(a, uniforms(8, np.array([5, 6, 7]), 3))
    big = uniforms(1, np.arange(100_000), 1)
    assert big.min() >= 0 and big.max() < 1 and abs(big.mean() - 0.5) < 0.01


def test_center_crop_is_the_central_square():
    assert center_params(np.array([[400, 300]])).tolist() == [[50, 0, 300, 300]]


def test_jpeg_draft_fast_path_matches_full_decode():
    data = _encode(_photo(), "JPEG", quality=95)
    fast, ok_fast, _ = decode_batch([data], np.array([0]), 0, 64, train=False, draft=True)
    slow, ok_slow, _ = decode_batch([data], np.array([0]), 0, 64, train=False, draft=False)
    assert ok_fast.all() and ok_slow.all()
    assert np.abs(fast.astype(int) - slow.astype(int)).mean() < 2.0


def test_flip_and_crop_are_deterministic_per_position():
    data = [_encode(_photo(), "JPEG")] * 4
    a, _, _ = decode_batch(data, np.arange(4), 3, 32, train=True)
    b, _, _ = decode_batch(data[2:], np.arange(2, 4), 3, 32, train=True)
    assert np.array_equal(a[2:], b)
    assert not np.array_equal(a[0], a[1])
    no_flip, _, _ = decode_batch(data, np.arange(4), 3, 32, train=True, hflip=False)
    flipped = [i for i in range(4) if not np.array_equal(a[i], no_flip[i])]
    assert flipped and all(np.array_equal(a[i], no_flip[i][:, ::-1]) for i in flipped)


def test_modes_become_rgb():
    gray = _encode(_photo()[..., 0], "JPEG")
    rgba = _encode(np.dstack([_photo(), np.full((360, 480), 128, np.uint8)]), "PNG")
    palette = io.BytesIO()
    Image.fromarray(_photo()).convert("P").save(palette, format="PNG")
    out, ok, _ = decode_batch([gray, rgba, palette.getvalue()], np.arange(3), 0, 48, train=True)
    assert ok.all() and out.shape == (3, 48, 48, 3)
    assert np.array_equal(out[0, ..., 0], out[0, ..., 2])


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"", "empty_image"), (b"\x89PNG not really", "corrupt_image"), (None, "empty_image")],
)
def test_bad_bytes_are_reported_not_raised(data, reason):
    good = _encode(_photo(), "JPEG")
    out, ok, reasons = decode_batch([good, data], np.arange(2), 0, 32, train=True)
    assert ok.tolist() == [True, False] and reasons[1] == reason
    assert not out[1].any()


def test_truncated_jpeg_is_reported():
    data = _encode(_photo(), "JPEG")
    _, ok, reasons = decode_batch([data[: len(data) // 2]], np.arange(1), 0, 32, train=False)
    assert not ok[0] and reasons[0] == "truncated_image"


def test_real_photo_jpegs_decode():
    pytest.importorskip("skimage")
    from maws_scale.data.samples import photo_jpegs

    photos = photo_jpegs(6, seed=1)
    assert all(224 <= max(size) <= 512 for _, size in photos)
    out, ok, _ = decode_batch([p for p, _ in photos], np.arange(6), 0, 224, train=True)
    assert ok.all() and out.shape == (6, 224, 224, 3) and out.std() > 10


def test_stored_sizes_give_the_same_pixels_and_wrong_ones_are_corrected():
    data = [_encode(_photo(480, 360), "JPEG"), _encode(_photo(200, 300), "PNG"), b"", b"junk"]
    pos = np.arange(4)
    plain, ok, reasons = decode_batch(data, pos, 5, 40, train=True)
    stored = np.array([[480, 360], [200, 300], [-1, -1], [10, 10]])
    known, ok2, reasons2 = decode_batch(data, pos, 5, 40, train=True, sizes=stored)
    wrong = np.array([[100, 900], [-1, -1], [3, 3], [-1, -1]])
    fixed, ok3, _ = decode_batch(data, pos, 5, 40, train=True, sizes=wrong)
    assert np.array_equal(plain, known) and np.array_equal(plain, fixed)
    assert ok.tolist() == ok2.tolist() == ok3.tolist() == [True, True, False, False]
    assert reasons[2:] == reasons2[2:] == ["empty_image", "corrupt_image"]
