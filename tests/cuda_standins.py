"""CPU stand-ins for CUDA-only operators, so their code paths run in the CPU suite."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def xformers_cpu_standin() -> Iterator[list[int]]:
    """Replace ``xformers.ops.memory_efficient_attention`` (no CPU operator in 0.0.35) by an SDPA-based CPU op for the
    duration; the probe cache is cleared on entry and exit. Yields a one-item list counting the op's calls."""
    import torch.nn.functional as F
    import xformers.ops as xops

    from maws_scale.models import attention as attention_module

    calls = [0]
    original = xops.memory_efficient_attention

    def standin(query, key, value, attn_bias=None, p=0.0, scale=None, op=None):  # (B, T, H, Dh) like xformers
        calls[0] += 1
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
        return out.transpose(1, 2)

    attention_module._xformers_probe.cache_clear()
    xops.memory_efficient_attention = standin
    try:
        yield calls
    finally:
        xops.memory_efficient_attention = original
        attention_module._xformers_probe.cache_clear()
