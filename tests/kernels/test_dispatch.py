"""The dispatcher in an ordinary CPU process (no interpreter): references run, "triton" refuses with a reason."""

from __future__ import annotations

import pytest
import torch
from maws_scale.kernels import dispatch, reference
from maws_scale.kernels.masking import random_masking_ids

from maws_scale import kernels


@pytest.fixture
def no_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def inputs(gen):
    keep_ids, restore_ids, mask = random_masking_ids(2, 16, 4, generator=gen)
    return {
        "gather": (torch.randn(2, 16, 8, generator=gen), torch.randn(16, 8, generator=gen), keep_ids),
        "unshuffle": (torch.randn(2, 4, 8, generator=gen), torch.randn(8, generator=gen), restore_ids,
                      torch.randn(16, 8, generator=gen)),
        "loss": (torch.randn(2, 3, 16, 16, generator=gen), torch.randn(2, 16, 48, generator=gen), mask, 4),
    }  # fmt: skip


OPS = {
    "gather": (kernels.gather_visible, reference.gather_visible_torch),
    "unshuffle": (kernels.unshuffle_with_mask_tokens, reference.unshuffle_with_mask_tokens_torch),
    "loss": (kernels.norm_pix_masked_mse, reference.norm_pix_masked_mse_torch),
}


def test_triton_is_installed_here():
    """Triton is a dev dependency: the fused-kernel tests must run, never be skipped for want of it."""
    assert dispatch._triton_import_error() is None


def test_cpu_without_interpreter_is_not_available(no_interpreter):
    assert not kernels.triton_available("cpu")
    assert not kernels.triton_available(torch.device("cpu"))
    assert "TRITON_INTERPRET" in dispatch._unavailable_reason("cpu")


def test_cuda_needs_a_gpu(no_interpreter):
    assert kernels.triton_available("cuda") == torch.cuda.is_available()


def test_missing_triton_is_reported(monkeypatch):
    monkeypatch.setattr(dispatch, "_triton_import_error", lambda: "ModuleNotFoundError: No module named 'triton'")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not kernels.triton_available("cpu") and not kernels.triton_available("cuda")
    with pytest.raises(RuntimeError, match="triton cannot be imported"):
        kernels.gather_visible(
            torch.zeros(1, 2, 4), torch.zeros(2, 4), torch.zeros(1, 1, dtype=torch.long), impl="triton"
        )


@pytest.mark.parametrize("op", OPS)
def test_auto_and_torch_run_the_reference(op, no_interpreter):
    fused, ref = OPS[op]
    args = inputs(torch.Generator().manual_seed(1))[op]
    want = ref(*args)
    for impl in ("auto", "torch"):
        assert torch.equal(fused(*args, impl=impl), want)


@pytest.mark.parametrize("op", OPS)
def test_triton_refuses_with_the_reason(op, no_interpreter):
    args = inputs(torch.Generator().manual_seed(2))[op]
    with pytest.raises(RuntimeError, match=r"impl='triton'.*TRITON_INTERPRET=1"):
        OPS[op][0](*args, impl="triton")


@pytest.mark.parametrize("op", OPS)
def test_unknown_impl_is_an_error(op):
    args = inputs(torch.Generator().manual_seed(3))[op]
    with pytest.raises(ValueError, match="impl must be one of"):
        OPS[op][0](*args, impl="cuda")


def test_a_kernel_that_fails_at_set_up_makes_auto_fall_back_with_one_warning(monkeypatch, gen):
    """A Triton build that cannot compile a kernel (stand-in: every fused op raises) must not stop an impl=auto run."""

    class Broken:
        @staticmethod
        def apply(*args):
            raise RuntimeError("triton compilation failed: PassManager::run failed")

    stub = type("Fused", (), {"GatherVisible": Broken, "UnshuffleWithMaskTokens": Broken, "NormPixMaskedMSE": Broken})
    monkeypatch.setattr(dispatch, "_fused", lambda: stub)
    monkeypatch.setattr(dispatch, "_interpreter_on", lambda: True)  # as if the kernels could run on this CPU
    monkeypatch.setattr(dispatch, "_SETUP_FAILURES", {})
    with pytest.warns(dispatch.KernelFallbackWarning, match="PassManager"):
        assert dispatch.check_kernels("cpu", torch.float32) is False
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert dispatch.check_kernels("cpu", torch.float32) is False
        args = inputs(gen)["gather"]
        torch.testing.assert_close(kernels.gather_visible(*args), reference.gather_visible_torch(*args))
    with pytest.raises(RuntimeError, match="failed at set-up"):
        kernels.gather_visible(*args, impl="triton")
