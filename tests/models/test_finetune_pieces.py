"""Fine-tuning's model pieces against independent computations: position-embedding resampling (bicubic, class token
apart), drop path (identity at 0, expectation kept, linear over depth), fc_norm pooling (timm's global-pool form)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maws_scale.models import build_wsp
from maws_scale.models.layers import DropPath
from maws_scale.models.state import resample_pos_embed


def _cubic(x: float, a: float) -> float:
    x = abs(x)
    if x < 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _bicubic_matrix(n_in: int, n_out: int, a: float = -0.5) -> np.ndarray:
    """The antialiased bicubic resampling matrix (Keys kernel, a = -0.5, widened by the scale when shrinking, taps
    inside the image renormalised): PIL's and timm's ``resample_abs_pos_embed`` rule, written from its definition."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    support = 2 * stretch
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        for j in range(lo, hi):
            weights[i, j] = _cubic((j - centre + 0.5) / stretch, a)
        weights[i] /= weights[i].sum()
    return weights


@pytest.mark.parametrize(("old", "new"), [(7, 9), (14, 37), (7, 5)])
def test_pos_embed_resampling_is_bicubic_with_the_class_token_apart(old, new):
    gen = np.random.RandomState(old * 100 + new)
    grid = gen.randn(old, old, 6)
    cls = torch.randn(1, 1, 6)
    pos_embed = torch.cat([cls, torch.tensor(grid, dtype=torch.float32).reshape(1, old * old, 6)], dim=1)
    out = resample_pos_embed(pos_embed, new)
    assert out.shape == (1, 1 + new * new, 6)
    assert torch.equal(out[:, :1], cls)  # the class token is not interpolated
    matrix = _bicubic_matrix(old, new)
    expected = np.einsum("ij,jkc,lk->ilc", matrix, grid, matrix)  # separable: rows, then columns
    np.testing.assert_allclose(out[0, 1:].numpy().reshape(new, new, 6), expected, atol=1e-5)


def test_pos_embed_resampling_to_the_same_grid_is_the_identity():
    pos_embed = torch.randn(1, 1 + 49, 8)
    assert torch.equal(resample_pos_embed(pos_embed, 7), pos_embed)


def test_a_constant_grid_stays_constant_at_any_size():
    pos_embed = torch.full((1, 1 + 16, 3), 0.25)
    assert torch.allclose(resample_pos_embed(pos_embed, 11), torch.full((1, 1 + 121, 3), 0.25))


def test_drop_path_at_rate_zero_and_in_eval_is_the_identity():
    x = torch.randn(4, 5, 3)
    assert torch.equal(DropPath(0.0).train()(x), x)
    assert torch.equal(DropPath(0.3).eval()(x), x)


def test_drop_path_drops_whole_samples_and_keeps_the_expectation():
    torch.manual_seed(0)
    p = 0.3
    x = torch.ones(20000, 4, 2)
    out = DropPath(p).train()(x)
    per_sample = out.reshape(20000, -1)
    kept = per_sample[:, 0] != 0
    assert torch.allclose(
        per_sample[kept], torch.full_like(per_sample[kept], 1 / (1 - p))
    )  # survivors scaled by 1 / keep
    assert torch.all(per_sample[~kept] == 0)  # a dropped sample loses its whole branch
    assert out.mean().item() == pytest.approx(1.0, abs=0.02)  # E[drop_path(x)] = x
    assert (~kept).float().mean().item() == pytest.approx(p, abs=0.02)


def test_drop_path_rises_linearly_over_depth():
    model = build_wsp("vit_b16", 10, drop_path=0.1, device="meta")
    rates = [block.drop_path1.p for block in model.blocks]
    assert rates == pytest.approx([0.1 * i / 11 for i in range(12)])
    assert [block.drop_path2.p for block in model.blocks] == rates


def test_fc_norm_pooling_is_mean_of_unnormed_tokens_then_layer_norm():
    torch.manual_seed(0)
    model = build_wsp("vit_micro_p4", 5, pool="gap", fc_norm=True, attention="math").eval()
    names = {n for n, _ in model.named_parameters()}
    assert {"fc_norm.weight", "fc_norm.bias"} <= names and not any(n.startswith("norm.") for n in names)
    for p in model.parameters():
        p.data.normal_()
    x = torch.randn(2, 3, 16, 16)
    tokens = model.run_blocks(torch.cat([model.cls_token.expand(2, -1, -1), model.patch_embed(x)], 1) + model.pos_embed)
    pooled = torch.nn.functional.layer_norm(
        tokens[:, 1:].mean(1), (model.embed_dim,), model.fc_norm.weight, model.fc_norm.bias, eps=1e-6
    )
    torch.testing.assert_close(model(x), model.head(pooled))
