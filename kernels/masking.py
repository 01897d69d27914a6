"""MAE masking indices: the one argsort implementation (the MAE model and the kernel tests both use it).

``keep_ids`` (B, L_keep) lists each sample's visible patches, ``restore_ids`` (B, L) is the inverse permutation of the
shuffle (``restore_ids[b, l] < L_keep`` exactly when patch ``l`` is visible), ``mask`` (B, L) is 1 for masked patches.
The fused kernels rely on this contract: keep indices distinct per row, restore indices a permutation per row.

:func:`mask_noise` is the deterministic per-sample noise the training stages mask with: hashed from (seed, global
sample index, patch), so a sample's mask is the same whatever the data-parallel layout or device.
"""

from __future__ import annotations

import math

import torch


def masking_ids_from_noise(noise: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's argsort masking of per-sample noise (B, L): the ``keep`` smallest are visible. → keep, restore, mask."""
    shuffle_ids = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    restore_ids = torch.argsort(shuffle_ids, dim=1)
    mask = (restore_ids >= keep).float()
    return shuffle_ids[:, :keep], restore_ids, mask


def random_masking_ids(
    batch: int,
    length: int,
    keep: int,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by argsort of uniform noise: returns ``(keep_ids, restore_ids, mask)``."""
    if not 0 <= keep <= length:
        raise ValueError(f"keep must be in [0, {length}], got {keep}")
    return masking_ids_from_noise(torch.rand(batch, length, generator=generator).to(device), keep)


# ----- DP-invariant masking noise ---------------------------------------------------------------------------------
_M32 = 0xFFFFFFFF


def _mulmod32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x · c) mod 2³² for int64 tensors holding uint32 values, without int64 overflow (16-bit halves)."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _M32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash with full avalanche (Wellons' 'lowbias32'), elementwise on int64 tensors."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mulmod32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mulmod32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mix32_int(x: int) -> int:
    """:func:`mix32` of one Python integer."""
    x &= _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def mask_noise(seed: int, sample_ids: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Uniform noise in [0, 1) of shape (B, L) that depends only on (seed, sample id, patch index).

    Values are distinct within a row (the low bits hold the patch index), so ``argsort`` has no ties and the
    mask is bit-identical on any device or data-parallel layout. Computed on ``sample_ids``' device.
    """
    ids = sample_ids.to(torch.int64)
    seed_key = _mix32_int((seed & _M32) ^ 0x9E3779B9)  # a Python int: no host-to-device copy per batch
    key = mix32((ids & _M32) ^ mix32(((ids >> 32) & _M32) ^ seed_key))
    patches = torch.arange(num_patches, dtype=torch.int64, device=ids.device)
    h = mix32(key[:, None] ^ mix32(patches + 0x632BE5AB)[None, :])
    index_bits = max(1, math.ceil(math.log2(num_patches)))
    random_bits = 24 - index_bits  # numerator < 2^24: exact in float32
    if random_bits < 4:
        raise ValueError(f"too many patches ({num_patches}) for float32 masking noise")
    value = (h >> (32 - random_bits)) * num_patches + patches[None, :]
    return value.to(torch.float32) / float((1 << random_bits) * num_patches)
