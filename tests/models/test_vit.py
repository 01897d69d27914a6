"""ViT encoder: MAWS parameter counts on the meta device, timm naming for every size, structure and options."""

from __future__ import annotations

import pytest
import torch

from maws_scale.models import MODELS, build_encoder, build_wsp, get_spec
from maws_scale.models.layers import Attention, Block

# Parameter counts without head (MAWS paper / timm): within 0.1 %.
MAWS_PARAMS = {"vit_b16": 85.8e6, "vit_l16": 303.3e6, "vit_h14": 630.8e6, "vit_2b14": 1.89e9, "vit_6.5b14": 6.45e9}


@pytest.mark.parametrize("name", list(MAWS_PARAMS))
def test_meta_param_counts_match_maws(name):
    model = build_encoder(name, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / MAWS_PARAMS[name] - 1) < 1e-3, (name, count)


def test_generalised_fixture_equals_literal_b16(timm_naming):
    literal, timm_vit_keys, _ = timm_naming
    assert timm_vit_keys(768, 12, 16, 224, 3072, num_classes=1000) == literal


def test_vit_b16_state_dict_is_timm_literal(timm_naming):
    literal, _, _ = timm_naming
    model = build_wsp("vit_b16", 1000, device="meta")
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == literal


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("num_classes", [0, 7])
def test_every_size_has_timm_naming(name, num_classes, timm_naming):
    _, timm_vit_keys, _ = timm_naming
    spec = get_spec(name)
    model = build_encoder(name, device="meta", num_classes=num_classes)
    expected = timm_vit_keys(
        spec.width, spec.depth, spec.patch, spec.img_size, spec.mlp_hidden, spec.in_chans, num_classes
    )
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == expected


def test_structure_other_engineers_rely_on():
    model = build_encoder("vit_micro_p4")
    assert isinstance(model.blocks, torch.nn.ModuleList)
    block = model.blocks[0]
    assert isinstance(block, Block) and isinstance(block.attn, Attention)
    assert (block.attn.num_heads, block.attn.head_dim) == (2, 16)
    for name in ("qkv", "proj"):
        assert isinstance(getattr(block.attn, name), torch.nn.Linear)
    for name in ("fc1", "act", "fc2"):
        assert hasattr(block.mlp, name)
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}
    assert isinstance(model.head, torch.nn.Identity)


def test_forward_shapes_and_final_norm():
    torch.manual_seed(0)
    model = build_encoder("vit_micro_p4", attention="math").eval()
    x = torch.randn(2, 3, 16, 16)
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 17, 32)
    # after the final LayerNorm (unit weight, zero bias at init): each token has ~zero mean, unit variance
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(2, 17), atol=1e-5, rtol=0)
    assert torch.equal(model(x), tokens[:, 0])
    wsp = build_wsp("vit_micro_p4", 11)
    assert wsp(x).shape == (2, 11)
    with pytest.raises(ValueError, match="img_size"):
        model(torch.randn(1, 3, 20, 20))


def test_attention_reads_heads_at_call_time_like_tensor_parallelism():
    """Split the heads over two 'ranks' as TP does (qkv column-sharded, proj row-sharded, num_heads set to the
    local count): the sum of the shards' outputs equals the full layer."""
    torch.manual_seed(0)
    attn = build_encoder("vit_micro_p4", attention="math").blocks[0].attn
    x = torch.randn(2, 5, 32)
    full = attn(x)
    dim, half, total = 32, 16, torch.zeros_like(full)
    for rank in range(2):
        shard = Attention(dim, 2, backend="math")
        rows = torch.cat([torch.arange(rank * half, (rank + 1) * half) + j * dim for j in range(3)])
        shard.qkv = torch.nn.Linear(dim, 3 * half)
        shard.qkv.weight.data, shard.qkv.bias.data = attn.qkv.weight[rows].clone(), attn.qkv.bias[rows].clone()
        shard.proj = torch.nn.Linear(half, dim, bias=rank == 0)
        shard.proj.weight.data = attn.proj.weight[:, rank * half : (rank + 1) * half].clone()
        if rank == 0:
            shard.proj.bias.data = attn.proj.bias.clone()
        shard.num_heads = 1  # local head count
        total = total + shard(x)
    torch.testing.assert_close(total, full, atol=1e-5, rtol=1e-5)


def test_options_change_keys_like_timm():
    qk = build_encoder("vit_micro_p4", qk_norm=True, device="meta").state_dict()
    assert qk["blocks.0.attn.q_norm.weight"].shape == (16,) and "blocks.0.attn.k_norm.bias" in qk
    lean = build_encoder("vit_micro_p4", qkv_bias=False, norm_bias=False, device="meta").state_dict()
    assert "blocks.0.attn.qkv.bias" not in lean and "norm.bias" not in lean and "blocks.1.norm1.bias" not in lean
    assert "blocks.0.attn.proj.bias" in lean
    par = build_encoder("vit_micro_p4", parallel_block=True, device="meta").state_dict()
    assert "blocks.0.norm2.weight" not in par and "blocks.0.norm1.weight" in par
    mapped = build_encoder("vit_micro_p4", pool="map", device="meta").state_dict()
    expected = {
        "attn_pool.latent": (1, 1, 32),
        "attn_pool.q.weight": (32, 32),
        "attn_pool.kv.weight": (64, 32),
        "attn_pool.proj.weight": (32, 32),
        "attn_pool.norm.weight": (32,),
        "attn_pool.mlp.fc1.weight": (128, 32),
        "attn_pool.mlp.fc2.weight": (32, 128),
    }
    assert {k: tuple(mapped[k].shape) for k in expected} == expected


def test_parallel_block_computes_the_parallel_form():
    torch.manual_seed(0)
    block = build_encoder("vit_micro_p4", parallel_block=True, attention="math").blocks[0]
    x = torch.randn(2, 5, 32)
    y = block.norm1(x)
    torch.testing.assert_close(block(x), x + block.attn(y) + block.mlp(y))


@pytest.mark.parametrize("pool", ["cls", "gap", "max", "map"])
def test_grad_checkpointing_gives_same_grads(pool):
    torch.manual_seed(0)
    model = build_wsp("vit_micro_p4", 5, pool=pool, attention="math")
    x = torch.randn(2, 3, 16, 16)
    model(x).square().sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_recompute(True)
    calls = []
    handle = torch.utils.checkpoint.checkpoint
    try:
        import maws_scale.models.recompute as vit_module

        vit_module.checkpoint = lambda fn, *a, **kw: calls.append(kw) or handle(fn, *a, **kw)
        model(x).square().sum().backward()
    finally:
        vit_module.checkpoint = handle
    assert len(calls) == 2 and all(kw == {"use_reentrant": False} for kw in calls)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, ref[name], msg=name)


def test_drop_path_is_identity_in_eval_and_stochastic_in_train():
    torch.manual_seed(0)
    model = build_encoder("vit_micro_p4", drop_path=0.5, attention="math")
    x = torch.randn(4, 3, 16, 16)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_unknown_option_and_pool_are_refused():
    with pytest.raises(TypeError, match="decoder_width"):
        build_encoder("vit_micro_p4", decoder_width=8)
    with pytest.raises(ValueError, match=r"model\.pool"):
        build_encoder("vit_micro_p4", pool="avg")


@pytest.mark.parametrize("builder", ["encoder_map", "mae"])
def test_meta_build_materialises_with_init_weights(builder):
    """Build on meta, to_empty, init_weights(): every tensor initialised (none left NaN), constants (norms, biases,
    sin-cos tables) equal to a direct build's, random tensors from the same distribution."""
    from maws_scale.models import build_mae
    from maws_scale.models.layers import sincos_pos_embed_2d

    make = (lambda **kw: build_wsp("vit_micro_p4", 5, pool="map", **kw)) if builder == "encoder_map" else None
    make = make or (lambda **kw: build_mae("vit_micro_p4", **kw))
    model = make(device="meta").to_empty(device="cpu")
    for p in model.parameters():
        p.data.fill_(float("nan"))
    model.init_weights()
    direct = make()
    for (name, got), (_, want) in zip(model.state_dict().items(), direct.state_dict().items()):
        assert torch.isfinite(got).all(), name
        if want.numel() == 1 or want.std() == 0 or (name.endswith("pos_embed") and builder == "mae"):
            assert torch.equal(got, want), name
        else:
            assert 0.6 < got.std() / want.std() < 1.6, name
    if builder == "mae":
        torch.testing.assert_close(model.pos_embed[0], sincos_pos_embed_2d(32, 4))


def test_dtype_argument_builds_bf16():
    from maws_scale.models import build_mae

    model = build_mae("vit_micro_p4", dtype=torch.bfloat16, attention="math")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    loss, pred, _ = model(torch.randn(2, 3, 16, 16, dtype=torch.bfloat16))
    assert loss.dtype == torch.float32 and pred.dtype == torch.bfloat16 and torch.isfinite(loss)
