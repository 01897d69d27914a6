"""Launch geometry of the fused kernels, in plain Python (no triton import) so traffic estimates can use it too."""

from __future__ import annotations

TARGET_PROGRAMS = 1024
"""Backward launches split the batch into chunks until about this many programs run (enough to fill a GPU)."""


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= ``n`` (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def block_d(width: int, cap: int = 1024) -> int:
    """Block along D for a row of ``width`` elements: the next power of two, at most ``cap``, at least 16."""
    return max(16, min(cap, next_power_of_2(width)))


def num_warps_for(block: int) -> int:
    """Warps for a memory-bound block: about 256 elements a warp (8 bf16 = 16 B per thread), 1 to 8 warps."""
    return max(1, min(8, block // 256))


def batch_splits(batch: int, programs: int, splits: int | None = None) -> tuple[int, int]:
    """(number of batch chunks, samples per chunk) for a backward launch with ``programs`` programs per chunk; by
    default enough chunks for about :data:`TARGET_PROGRAMS` programs in all."""
    if batch == 0:
        return 1, 1
    if splits is None:
        splits = -(-TARGET_PROGRAMS // max(1, programs))
    splits = max(1, min(batch, splits))
    chunk = -(-batch // splits)
    return -(-batch // chunk), chunk
