"""Pooling and the WSP soft-target cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from maws_scale.models import build_wsp, soft_target_cross_entropy
from maws_scale.models.attention import math_attention
from maws_scale.models.heads import pool_tokens


def test_pooling_modes():
    tokens = torch.randn(2, 5, 8)
    assert torch.equal(pool_tokens(tokens, "cls"), tokens[:, 0])
    torch.testing.assert_close(pool_tokens(tokens, "gap"), tokens[:, 1:].mean(1))
    assert torch.equal(pool_tokens(tokens, "max"), tokens[:, 1:].max(1).values)
    with pytest.raises(ValueError, match="attn_pool"):
        pool_tokens(tokens, "map")


def test_map_pool_is_latent_query_attention():
    torch.manual_seed(0)
    model = build_wsp("vit_micro_p4", 3, pool="map", attention="math")
    pool = model.attn_pool
    x = torch.randn(2, 17, 32)
    q = pool.q(pool.latent).reshape(1, 2, 16).transpose(0, 1)  # (H, 1, Dh)
    k, v = pool.kv(x).reshape(2, 17, 2, 2, 16).permute(2, 0, 3, 1, 4)
    out = pool.proj(math_attention(q.unsqueeze(0).expand(2, -1, -1, -1), k, v).transpose(1, 2).reshape(2, 1, 32))
    out = out + pool.mlp(pool.norm(out))
    torch.testing.assert_close(pool(x), out[:, 0])
    assert model.no_weight_decay() == {"pos_embed", "cls_token", "attn_pool.latent"}


def test_soft_target_ce_equals_hard_ce_for_one_hot_and_mean_of_tags():
    logits = torch.randn(4, 10)
    labels = torch.tensor([1, 3, 5, 9])
    torch.testing.assert_close(
        soft_target_cross_entropy(logits, F.one_hot(labels, 10).float()), F.cross_entropy(logits, labels)
    )
    targets = torch.zeros(4, 10)
    targets[0, [1, 2]] = 0.5
    targets[1:, 0] = 1.0
    per_row = soft_target_cross_entropy(logits, targets, reduction="none")
    logp = logits.log_softmax(-1)
    torch.testing.assert_close(per_row[0], -(logp[0, 1] + logp[0, 2]) / 2)
    torch.testing.assert_close(soft_target_cross_entropy(logits, targets, "sum"), per_row.sum())


def test_soft_target_ce_is_fp32_in_bf16():
    logits = (torch.randn(2, 30000) * 4).bfloat16()
    targets = torch.zeros(2, 30000)
    targets[:, :3] = 1 / 3
    loss = soft_target_cross_entropy(logits, targets.bfloat16())
    assert loss.dtype == torch.float32
    exact = -(targets.bfloat16().double() * logits.double().log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(loss.double(), exact, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        soft_target_cross_entropy(logits, targets[:, :10])
