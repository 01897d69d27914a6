"""Layout-independent init: a tensor's initial value depends on (model seed, its name) only."""

from __future__ import annotations

import pytest
import torch

from maws_scale.models import build_mae, build_wsp
from maws_scale.models.init import full_linear, tensor_generator
from maws_scale.models.mae import MaskedAutoencoder
from maws_scale.models.vit import VisionTransformer


def _build(kind: str, device: str | None = None):
    torch.manual_seed(0)
    if kind == "mae":
        return build_mae("vit_micro_p4", device=device)
    return build_wsp("vit_micro_p4", 10, pool="map", device=device)


@pytest.mark.parametrize("kind", ["mae", "wsp"])
def test_meta_build_materialised_equals_the_plain_build(kind):
    plain = _build(kind)
    meta = _build(kind, device="meta")
    meta.to_empty(device="cpu")
    meta.init_weights()
    for name, value in plain.state_dict().items():
        assert torch.equal(meta.state_dict()[name], value), name


@pytest.mark.parametrize("kind", ["mae", "wsp"])
def test_a_linear_of_a_meta_model_gets_the_plain_models_values(kind):
    plain = _build(kind)
    meta = _build(kind, device="meta")
    weight, bias = full_linear(meta, "blocks.1.mlp.fc1", meta.blocks[1].mlp.fc1)
    assert torch.equal(weight, plain.blocks[1].mlp.fc1.weight) and torch.equal(bias, plain.blocks[1].mlp.fc1.bias)


def test_values_do_not_depend_on_what_else_was_initialised():
    a = _build("wsp")
    torch.manual_seed(0)
    b = build_wsp("vit_micro_p4", 10, pool="map")
    b.blocks[0].apply(lambda m: None)  # re-running part of the init elsewhere changes nothing either
    b.init_weights()
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    torch.manual_seed(1)
    other = build_wsp("vit_micro_p4", 10, pool="map")
    assert not torch.equal(other.blocks[0].attn.qkv.weight, a.blocks[0].attn.qkv.weight)  # the seed decides
    assert not torch.equal(a.blocks[0].attn.qkv.weight[:4], a.blocks[1].attn.qkv.weight[:4])  # names differ
    g1, g2 = tensor_generator(5, "blocks.0.attn.qkv.weight"), tensor_generator(5, "blocks.0.attn.qkv.weight")
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def test_init_follows_the_timm_and_mae_rules():
    torch.manual_seed(0)
    vit = build_wsp("vit_small_p8", 10)
    mae = build_mae("vit_small_p8")
    qkv = vit.blocks[0].attn.qkv.weight
    assert abs(qkv.std().item() - 0.02) < 0.002  # trunc-normal(0.02) (truncated at ±2, as timm)
    bound = (6 / sum(mae.blocks[0].attn.qkv.weight.shape)) ** 0.5  # xavier-uniform
    assert mae.blocks[0].attn.qkv.weight.abs().max().item() <= bound
    assert abs(mae.blocks[0].attn.qkv.weight.std().item() - bound / 3**0.5) < 0.1 * bound
    assert torch.equal(vit.blocks[0].norm1.weight, torch.ones_like(vit.blocks[0].norm1.weight))
    assert not vit.blocks[0].attn.qkv.bias.any()


def test_the_mae_is_composed_not_a_classifier():
    mae = build_mae("vit_micro_p4")
    assert isinstance(mae, MaskedAutoencoder) and not isinstance(mae, VisionTransformer)
    assert not hasattr(mae, "head") and mae.attn_pool is None
    assert not any(k.startswith(("head", "attn_pool")) for k in mae.state_dict())
    pooled = build_mae("vit_micro_p4", pool="map")  # the MAE-CLIP image tower pools its latent
    assert pooled.attn_pool is not None
    tokens = pooled.forward_features(torch.randn(2, 3, 16, 16))
    assert pooled.pool(tokens).shape == (2, pooled.embed_dim)
    with pytest.raises(ValueError, match="without pooling"):
        mae.pool(tokens)


def test_model_code_never_imports_configs_or_parallel_libraries():
    """models/ takes model options: no RunConfig, deepspeed or megatron import anywhere in it (parallelism and
    configs are applied from outside: parallel/plan.py, model_config.py)."""
    import ast
    from pathlib import Path

    import maws_scale.models as models

    banned = ("maws_scale.config", "maws_scale.parallel", "maws_scale.train", "deepspeed", "megatron")
    for path in Path(models.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not [n for n in names if n.startswith(banned)], f"{path.name} imports {names}"
