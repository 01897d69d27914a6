"""Fused MAE masking / loss ops with torch references; imported as ``maws_scale.kernels``.

Each public op takes ``impl="auto"|"triton"|"torch"``: "auto" uses the fused Triton kernel when Triton and a CUDA
device are there (or the Triton interpreter is on, ``TRITON_INTERPRET=1``) and the torch reference otherwise.
Importing this package does not import triton; the kernels load on the first fused call. See docs/kernels.md.
"""

from __future__ import annotations

from .dispatch import gather_visible, norm_pix_masked_mse, triton_available, unshuffle_with_mask_tokens
from .reference import patchify, unpatchify

__all__ = [
    "gather_visible",
    "norm_pix_masked_mse",
    "patchify",
    "triton_available",
    "unpatchify",
    "unshuffle_with_mask_tokens",
]
