"""Layer-wise LR decay (BEiT / MAE rule) in the optimizer's groups: every ViT-B parameter checked against a table
written out by hand, and the scheduled LR multiplied by each group's scale."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from maws_scale.models import build_wsp
from maws_scale.models.layer_decay import layer_id, lr_scale
from maws_scale.parallel.engine import set_lr
from maws_scale.parallel.optimizer import param_groups

DECAY = 0.65
WD = 0.05


def _expected_vit_b() -> dict[str, tuple[float, float]]:
    """name → (lr scale, weight decay) of a ViT-B/16 with a 1000-class head, written out from the rule: 12 blocks,
    embeddings at id 0 (scale 0.65^13), block i at id i+1 (0.65^(12-i)), norm and head at id 13 (scale 1); no
    weight decay on 1-D tensors, pos_embed and cls_token."""
    table = {
        "cls_token": (DECAY**13, 0.0),
        "pos_embed": (DECAY**13, 0.0),
        "patch_embed.proj.weight": (DECAY**13, WD),
        "patch_embed.proj.bias": (DECAY**13, 0.0),
        "norm.weight": (1.0, 0.0),
        "norm.bias": (1.0, 0.0),
        "head.weight": (1.0, WD),
        "head.bias": (1.0, 0.0),
    }
    for i in range(12):
        scale = DECAY ** (12 - i)
        for part in ("norm1", "norm2"):
            table[f"blocks.{i}.{part}.weight"] = (scale, 0.0)
            table[f"blocks.{i}.{part}.bias"] = (scale, 0.0)
        for part in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            table[f"blocks.{i}.{part}.weight"] = (scale, WD)
            table[f"blocks.{i}.{part}.bias"] = (scale, 0.0)
    return table


def test_every_vit_b_parameter_gets_the_hand_written_scale_and_decay():
    model = build_wsp("vit_b16", 1000, device="meta")
    groups = param_groups(model, WD, layer_decay=DECAY)
    got = {}
    for group in groups:
        for name in group["names"]:
            assert name not in got, f"{name} in two groups"
            got[name] = (group["lr_scale"], group["weight_decay"])
    expected = _expected_vit_b()
    assert set(got) == set(expected) == {n for n, _ in model.named_parameters()}
    for name, (scale, wd) in expected.items():
        assert got[name][0] == pytest.approx(scale, rel=1e-12), name
        assert got[name][1] == wd, name
    # one group per (layer, decay / no decay): 14 layer ids, the head's layer has both kinds
    assert len(groups) == 2 * 14


def test_layer_ids_of_pooling_and_fc_norm_are_the_top():
    assert layer_id("fc_norm.weight", 12) == 13
    assert layer_id("attn_pool.latent", 12) == 13
    assert layer_id("blocks.11.mlp.fc2.weight", 12) == 12
    assert lr_scale("head.weight", 12, 0.5) == 1.0
    with pytest.raises(ValueError, match=r"finetune\.layer_decay"):
        lr_scale("head.weight", 12, 1.5)


def test_without_layer_decay_the_groups_are_unchanged():
    """Every other stage: one decayed and one undecayed group, no lr_scale key (checkpoints and DeepSpeed as before)."""
    model = build_wsp("vit_micro_p4", 5)
    groups = param_groups(model, WD)
    assert [g["weight_decay"] for g in groups] == [WD, 0.0]
    assert all("lr_scale" not in g for g in groups)


def test_set_lr_multiplies_each_groups_scale():
    model = build_wsp("vit_micro_p4", 5)
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, WD, layer_decay=0.5)]
    optimizer = torch.optim.AdamW(groups, lr=1.0)
    set_lr(SimpleNamespace(optimizer=optimizer), 2e-3)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(2e-3 * group["lr_scale"])
    assert min(g["lr"] for g in optimizer.param_groups) == pytest.approx(2e-3 * 0.5 ** (model.depth + 1))
