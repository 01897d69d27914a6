"""The deterministic masking noise: a function of (seed, global sample id, patch) only, uniform, without ties."""

from __future__ import annotations

import numpy as np
import torch
from maws_scale.kernels.masking import mask_noise, mix32


def lowbias32(x: int) -> int:
    """Reference: Wellons' lowbias32 in plain Python integers."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_mix32_matches_the_reference_without_int64_overflow():
    values = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 123456789, 0xDEADBEEF]
    values += np.random.default_rng(0).integers(0, 2**32, 100).tolist()
    got = mix32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [lowbias32(v) for v in values]


def test_noise_is_a_function_of_seed_id_and_patch_only():
    ids = torch.tensor([0, 5, 2**33 + 7, 12345678901])
    full = mask_noise(3, ids, 49)
    assert full.shape == (4, 49) and full.dtype == torch.float32
    assert float(full.min()) >= 0.0 and float(full.max()) < 1.0
    # any sub-batch (another data-parallel split) gets the same rows
    assert torch.equal(mask_noise(3, ids[2:], 49), full[2:])
    assert torch.equal(mask_noise(3, ids[[3, 0]], 49), full[[3, 0]])
    # rows have no ties, so argsort (the mask) is unambiguous on any device
    assert all(len(set(row.tolist())) == 49 for row in full)
    assert not torch.equal(mask_noise(4, ids, 49), full)
    assert not torch.equal(full[0], full[1])


def test_noise_is_roughly_uniform():
    noise = mask_noise(0, torch.arange(2000), 64)
    hist = torch.histc(noise, bins=10, min=0.0, max=1.0) / noise.numel()
    assert torch.allclose(hist, torch.full((10,), 0.1), atol=0.01)
