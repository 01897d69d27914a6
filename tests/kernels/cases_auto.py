"""The dispatcher where the fused kernels can run: "auto" takes them, "torch" does not, a mode change is refused.

Needs the fused kernels to run: on a CPU machine under ``TRITON_INTERPRET=1`` (``test_interpreter.py`` runs this
module in such a subprocess), on a GPU machine directly.
"""

from __future__ import annotations

import pytest
import torch
from maws_scale.kernels import reference, triton_available
from maws_scale.kernels.masking import random_masking_ids

from maws_scale import kernels

if not triton_available("cuda" if torch.cuda.is_available() else "cpu"):
    raise RuntimeError("the fused kernels cannot run here: run via tests/kernels/test_interpreter.py")


def run_all(impl, device, gen):
    keep_ids, restore_ids, mask = random_masking_ids(2, 16, 4, device, gen)
    tokens, pos = torch.randn(2, 16, 32, generator=gen).to(device), torch.randn(16, 32, generator=gen).to(device)
    visible, mask_token = torch.randn(2, 4, 32, generator=gen).to(device), torch.randn(32, generator=gen).to(device)
    imgs, pred = torch.randn(2, 3, 16, 16, generator=gen).to(device), torch.randn(2, 16, 48, generator=gen).to(device)
    return (
        kernels.gather_visible(tokens, pos, keep_ids, impl=impl),
        kernels.unshuffle_with_mask_tokens(visible, mask_token, restore_ids, pos, impl=impl),
        kernels.norm_pix_masked_mse(imgs, pred, mask, 4, impl=impl),
    )


def forbid_references(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the torch reference ran")

    for name in ("gather_visible_torch", "unshuffle_with_mask_tokens_torch", "norm_pix_masked_mse_torch"):
        monkeypatch.setattr(reference, name, refuse)


def test_auto_takes_the_fused_kernels(monkeypatch, device):
    wanted = run_all("torch", device, torch.Generator().manual_seed(0))
    forbid_references(monkeypatch)
    got = run_all("auto", device, torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, wanted, rtol=1e-5, atol=1e-6)


def test_torch_impl_takes_the_references(monkeypatch, device, gen):
    forbid_references(monkeypatch)
    with pytest.raises(AssertionError, match="reference ran"):
        run_all("torch", device, gen)


def test_interpreter_switched_off_after_loading_is_refused(monkeypatch, device, gen):
    run_all("triton", device, gen)  # the kernels are loaded now, in this process's mode
    from maws_scale.kernels import triton_common

    monkeypatch.setenv("TRITON_INTERPRET", "0" if triton_common.INTERPRETED else "1")
    assert not triton_available(device)
    with pytest.raises(RuntimeError, match=r"TRITON_INTERPRET .* changed"):
        run_all("triton", device, gen)


def test_mae_model_with_fused_kernels_matches_torch(device):
    """The MAE model end to end (tiny): the same loss and gradients with impl="triton" as with impl="torch"."""
    from maws_scale.models.mae import MaskedAutoencoder

    results = {}
    for impl in ("torch", "triton"):
        torch.manual_seed(0)
        model = MaskedAutoencoder(
            img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2,
            decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, kernels_impl=impl,
        ).to(device)  # fmt: skip
        imgs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)).to(device)
        loss = model(imgs, generator=torch.Generator().manual_seed(2))[0]
        loss.backward()
        results[impl] = (loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    (want_loss, want_grads), (loss, grads) = results["torch"], results["triton"]
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=1e-7)
    assert grads.keys() == want_grads.keys() and "mask_token" in grads
    torch.testing.assert_close(grads, want_grads, rtol=1e-4, atol=1e-6)
