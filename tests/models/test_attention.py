"""Attention backends agree with the math reference; xformers falls back to sdpa (one warning) where it can't run."""

from __future__ import annotations

import warnings

import pytest
import torch
from cuda_standins import xformers_cpu_standin

import maws_scale.models.attention as attention_module
from maws_scale.models import build_encoder
from maws_scale.models.attention import (
    XFormersUnavailableWarning,
    attention,
    math_attention,
    pin_attention_backends,
    resolve_backend,
    xformers_status,
)

SHAPES = [(1, 1, 1, 8), (2, 3, 17, 16), (3, 4, 50, 32), (2, 2, 65, 64)]
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _available_backends(device: str) -> list[str]:
    backends = ["sdpa"]
    if xformers_status(device)[0]:
        backends.append("xformers")
    return backends


def _inputs(shape, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(device=device, dtype=dtype).requires_grad_(True) for _ in range(3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_backends_match_math_forward_and_backward(shape, dtype):
    device = _device()
    for backend in _available_backends(device):
        ref_in = _inputs(shape, dtype, device, seed=sum(shape))
        test_in = [t.detach().clone().requires_grad_(True) for t in ref_in]
        grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
        ref = math_attention(*ref_in)
        out = attention(*test_in, backend=backend)
        assert out.shape == shape and out.dtype == dtype
        torch.testing.assert_close(out, ref, **TOL[dtype], msg=f"{backend} forward")
        ref.backward(grad_out)
        out.backward(grad_out)
        for a, b, name in zip(test_in, ref_in, "qkv"):
            torch.testing.assert_close(a.grad, b.grad, **TOL[dtype], msg=f"{backend} d{name}")


def test_math_is_softmax_attention():
    q, k, v = (torch.randn(2, 3, 7, 8, dtype=torch.float64) for _ in range(3))
    weights = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1)
    torch.testing.assert_close(math_attention(q, k, v), weights @ v)


def test_resolve_backend_names():
    assert resolve_backend("sdpa", "cpu") == "sdpa"
    assert resolve_backend("math", "cpu") == "math"
    assert resolve_backend("auto", "cpu") == "sdpa"
    with pytest.raises(ValueError, match=r"model\.attention"):
        resolve_backend("flash", "cpu")


@pytest.mark.cpu_only  # exercises the real failing xformers build on CPU
def test_xformers_falls_back_to_sdpa_with_one_warning():
    """xformers 0.0.35 is installed but has no CPU operator: the probe fails for real, sdpa is used, one warning."""
    works, reason = xformers_status("cpu")
    assert not works and "xformers" in reason
    attention_module._warn_fallback.cache_clear()
    q, k, v = (torch.randn(2, 2, 9, 16) for _ in range(3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_backend("xformers", "cpu") == "sdpa"
        out = attention(q, k, v, "xformers")
        attention(q, k, v, "xformers")
    fallback = [w for w in caught if issubclass(w.category, XFormersUnavailableWarning)]
    assert len(fallback) == 1 and "falling back" in str(fallback[0].message)
    torch.testing.assert_close(out, math_attention(q, k, v), atol=2e-5, rtol=1e-4)


def test_auto_does_not_warn_on_cpu():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend("auto", torch.device("cpu")) == "sdpa"


def test_auto_prefers_sdpa_even_where_xformers_works():
    """xformers 0.0.35 calls the aten kernels SDPA uses: auto does not even probe it."""
    with xformers_cpu_standin() as calls:
        assert resolve_backend("xformers", "cpu") == "xformers"  # selectable, and it works here
        assert resolve_backend("auto", "cpu") == "sdpa"
        model = build_encoder("vit_micro_p4", attention="auto")
        assert set(pin_attention_backends(model, "cpu")) == {"sdpa"}
    assert calls[0] == 1  # the one probe of the explicit request


def test_the_probe_ignores_the_callers_autograd_state_and_rng():
    """Asked for under no_grad (evaluation) the old probe's backward failed and xformers was silently off."""
    with xformers_cpu_standin(), torch.no_grad():
        state = torch.get_rng_state()
        assert xformers_status("cpu") == (True, "ok")
        assert torch.equal(torch.get_rng_state(), state)


def test_pinning_writes_the_concrete_backend_into_every_attention_module():
    with xformers_cpu_standin() as calls:
        model = build_encoder("vit_micro_p4", attention="xformers", pool="map")
        counts = pin_attention_backends(model, "cpu")
        assert counts == {"xformers": len(model.blocks) + 1}  # the blocks and the attention-pool head
        assert {m.backend for m in model.modules() if hasattr(m, "backend")} == {"xformers"}
        model(torch.randn(2, 3, model.img_size, model.img_size)).sum().backward()
    assert calls[0] == 1 + len(model.blocks) + 1  # one probe, then one call per attention module


@pytest.mark.parametrize("pinned", [True, False])
def test_xformers_under_activation_checkpointing_trains(pinned):
    """The probe used to run inside checkpointed block 0 (its own backward there): CheckpointError on backward."""
    with xformers_cpu_standin() as calls:
        torch.manual_seed(0)
        model = build_encoder("vit_micro_p4", attention="xformers")
        if pinned:
            pin_attention_backends(model, "cpu")
        model.set_recompute(True)
        images = torch.randn(2, 3, model.img_size, model.img_size)
        for _ in range(3):
            model(images).sum().backward()
    assert calls[0] == 1 + 3 * 2 * len(model.blocks)  # probe + (forward + recompute) per block per step


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_xformers_on_gpu_matches_math_or_reports_why():
    works, reason = xformers_status("cuda")
    if not works:
        pytest.skip(reason)
    q, k, v = (torch.randn(2, 4, 33, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    torch.testing.assert_close(attention(q, k, v, "xformers"), math_attention(q, k, v), atol=2e-2, rtol=2e-2)
