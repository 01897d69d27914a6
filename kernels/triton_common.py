"""Launch helpers and the rounding store shared by the Triton kernels (importing this module imports triton)."""

from __future__ import annotations

import triton
import triton.language as tl

INTERPRETED = bool(triton.knobs.runtime.interpret)
"""Whether the kernels were decorated for the Triton CPU interpreter (``TRITON_INTERPRET=1`` when they loaded)."""


@triton.jit
def to_storage(x, dtype: tl.constexpr):
    """fp32 ``x`` rounded to ``dtype`` to nearest-even, as torch rounds. bf16 is rounded with integer ops: the Triton
    CPU interpreter truncates fp32 → bf16 casts, the GPU rounds them; this gives both the same (and torch's) bits."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = tl.where(x != x, 0x7FC00000, bits + (((bits >> 16) & 1) + 0x7FFF))  # NaN stays a quiet NaN
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)
