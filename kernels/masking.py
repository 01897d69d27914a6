"""MAE masking indices for tests and benchmarks (the model builds its own with the same contract).

``keep_ids`` (B, L_keep) lists each sample's visible patches, ``restore_ids`` (B, L) is the inverse permutation of the
shuffle (``restore_ids[b, l] < L_keep`` exactly when patch ``l`` is visible), ``mask`` (B, L) is 1 for masked patches.
The fused kernels rely on this contract: keep indices distinct per row, restore indices a permutation per row.
"""

from __future__ import annotations

import torch


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
    noise = torch.rand(batch, length, generator=generator).to(device)
    shuffle_ids = torch.argsort(noise, dim=1)
    restore_ids = torch.argsort(shuffle_ids, dim=1)
    mask = (restore_ids >= keep).float()
    return shuffle_ids[:, :keep], restore_ids, mask
