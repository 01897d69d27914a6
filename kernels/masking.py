"""MAE masking indices: the one argsort implementation (the MAE model and the kernel tests both use it).

``keep_ids`` (B, L_keep) lists each sample's visible patches, ``restore_ids`` (B, L) is the inverse permutation of the
shuffle (``restore_ids[b, l] < L_keep`` exactly when patch ``l`` is visible), ``mask`` (B, L) is 1 for masked patches.
The fused kernels rely on this contract: keep indices distinct per row, restore indices a permutation per row.
"""

from __future__ import annotations

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
