"""Tensor-parallel layout: which plain tensors shard how, shard/merge round trips, per-rank parameter counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from maws_scale.models import build_mae, build_wsp
from maws_scale.parallel.tensor_parallel import check_divisible
from maws_scale.parallel.tp_layout import (
    TPLayout,
    decoder_shardable,
    merge_shards,
    merge_state_dicts,
    shard_kind,
    shard_state_dict,
    shard_tensor,
    vocab_range,
)


def test_shard_kinds_follow_timm_names():
    assert shard_kind("blocks.3.attn.qkv.weight") == "qkv"
    assert shard_kind("blocks.3.attn.qkv.bias") == "qkv"
    assert shard_kind("blocks.3.attn.proj.weight") == "row"
    assert shard_kind("blocks.3.attn.proj.bias") is None
    assert shard_kind("blocks.0.mlp.fc1.bias") == "column"
    assert shard_kind("blocks.0.mlp.fc2.weight") == "row"
    assert shard_kind("blocks.0.mlp.fc2.bias") is None
    assert shard_kind("blocks.0.norm1.weight") is None
    assert shard_kind("head.weight") == "vocab"
    assert shard_kind("attn_pool.mlp.fc1.weight") is None
    assert shard_kind("decoder_blocks.0.attn.qkv.weight") is None
    assert shard_kind("decoder_blocks.0.attn.qkv.weight", shard_decoder=True) == "qkv"


@pytest.mark.parametrize("tp", [2, 4])
def test_qkv_shard_holds_whole_heads_of_q_k_and_v(tp):
    """Attention of the local heads from the shard equals those heads' slice of the full attention."""
    dim, heads, tokens = 32, 4, 5
    torch.manual_seed(0)
    weight, bias, x = torch.randn(3 * dim, dim), torch.randn(3 * dim), torch.randn(2, tokens, dim)
    head_dim, local = dim // heads, heads // tp
    full = F.linear(x, weight, bias).reshape(2, tokens, 3, heads, head_dim)
    for rank in range(tp):
        mine = F.linear(x, shard_tensor(weight, "qkv", rank, tp), shard_tensor(bias, "qkv", rank, tp))
        mine = mine.reshape(2, tokens, 3, local, head_dim)
        assert torch.equal(mine, full[:, :, :, rank * local : (rank + 1) * local])


@pytest.mark.parametrize("kind,shape", [("qkv", (24, 8)), ("column", (12, 8)), ("row", (8, 12)), ("vocab", (7, 8))])
def test_shard_merge_round_trip(kind, shape):
    full = torch.randn(shape)
    shards = [shard_tensor(full, kind, r, 4 if kind != "qkv" else 2) for r in range(4 if kind != "qkv" else 2)]
    assert len({s.shape for s in shards}) == 1  # equal shapes: all_gather needs them
    assert torch.equal(merge_shards(shards, kind, shape), full)


def test_vocab_padding_and_ranges():
    full = torch.randn(10, 3)
    shards = [shard_tensor(full, "vocab", r, 4) for r in range(4)]
    assert [s.shape[0] for s in shards] == [3, 3, 3, 3]
    assert torch.equal(shards[3][1:], torch.zeros(2, 3))  # two padding rows at the end
    assert [vocab_range(10, r, 4) for r in range(4)] == [(0, 3, 3), (3, 3, 3), (6, 3, 3), (9, 1, 3)]
    assert vocab_range(2, 3, 4) == (3, 0, 1)  # a rank with only padding


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="head groups"):
        shard_tensor(torch.randn(18, 4), "qkv", 0, 4)
    with pytest.raises(ValueError, match="not divisible"):
        shard_tensor(torch.randn(6, 4), "column", 0, 4)
    with pytest.raises(ValueError, match="outside"):
        shard_tensor(torch.randn(8, 4), "column", 4, 4)


def test_state_dict_round_trip_and_layout_json(tmp_path):
    model = build_wsp("vit_tiny_p4", 11)
    plain = model.state_dict()
    layout = TPLayout.for_state_dict(plain, 4)
    assert layout.shards["head.weight"] == ("vocab", (11, 96))
    assert "blocks.0.norm1.weight" not in layout.shards
    assert TPLayout.load(layout.save(tmp_path).parent) == layout
    ranks = [shard_state_dict(plain, layout, r) for r in range(4)]
    assert ranks[1]["blocks.0.mlp.fc1.weight"].shape == (96, 96)
    merged = merge_state_dicts(ranks, layout)
    assert list(merged) == list(plain)
    assert all(torch.equal(merged[k], plain[k]) for k in plain)
    with pytest.raises(ValueError, match="shards for a tensor-parallel size"):
        merge_state_dicts(ranks[:2], layout)


def test_divisibility_refused_with_the_config_key():
    check_divisible(build_wsp("vit_micro_p4", 3), 2)
    with pytest.raises(ValueError, match=r"parallel\.tp: .* 2 heads of the encoder"):
        check_divisible(build_wsp("vit_micro_p4", 3), 4)
    mae = build_mae("vit_tiny_p4", decoder_heads=2)
    check_divisible(mae, 4)  # the decoder is not checked unless it is to be sharded
    assert decoder_shardable(mae, 2) and not decoder_shardable(mae, 4)  # "auto" replicates it at tp=4
    assert not decoder_shardable(build_wsp("vit_tiny_p4", 3), 2)
    with pytest.raises(ValueError, match=r"mae\.decoder_heads: .* 2 heads of the MAE decoder"):
        check_divisible(mae, 4, shard_decoder=True)


def _inventory(name: str, stage: str, tp: int, *extra: str):
    from maws_scale.config import load_config
    from maws_scale.perf.inventory import build_inventory

    return build_inventory(load_config(None, [f"model.name={name}", f"stage={stage}", *extra]), tp=tp)


@pytest.mark.parametrize(
    "name,kwargs,stage",
    [
        ("vit_micro_p4", {"num_classes": 10}, "wsp"),
        ("vit_tiny_p4", {"num_classes": 11, "pool": "map"}, "wsp"),
        ("vit_tiny_p4", {}, "mae"),
    ],
)
def test_inventory_at_tp1_equals_the_model(name, kwargs, stage):
    if stage == "mae":
        model = build_mae(name)
        inv = _inventory(name, stage, 1)
    else:
        model = build_wsp(name, kwargs["num_classes"], pool=kwargs.get("pool", "cls"))
        inv = _inventory(
            name, stage, 1, f"wsp.num_classes={kwargs['num_classes']}", f"model.pool={kwargs.get('pool', 'cls')}"
        )
    assert inv.full_params == inv.numel == sum(p.numel() for p in model.parameters())


def test_inventory_split_at_tp4():
    one = _inventory("vit_6.5b14", "wsp", 1, "wsp.num_classes=30000")
    four = _inventory("vit_6.5b14", "wsp", 4, "wsp.num_classes=30000")

    def parts(inv):
        return sum(e.numel for e in inv.entries if e.sharded), sum(e.numel for e in inv.entries if not e.sharded)

    assert four.full_params == one.full_params
    sharded_one = sum(e.numel for e in one.entries if e.name in {f.name for f in four.entries if f.sharded})
    assert parts(four)[0] * 4 == sharded_one  # 30000 classes divide by 4: no padding
    assert parts(four)[1] == one.numel - sharded_one
    assert 0.25 < four.numel / one.full_params < 0.26  # norms, embeddings and row biases are < 1 % at 6.5B
    tiny4 = _inventory("vit_tiny_p4", "wsp", 4, "wsp.num_classes=11")
    head4 = sum(e.numel for e in tiny4.entries if e.name.startswith("head."))
    assert head4 * 4 - 11 * 97 == 97  # K = 11 padded to 12: one padding row of weight (96) + bias (1)
    auto = _inventory("vit_6.5b14", "mae", 4)  # 16 decoder heads: the decoder is sharded at tp=4
    plain = _inventory("vit_6.5b14", "mae", 1)
    split_per_block = 12 * 512 * 512 + 3 * 512 + 2048  # qkv, proj, fc1, fc2 weights; qkv and fc1 biases
    decoder = lambda inv: sum(e.numel for e in inv.entries if e.name.startswith("decoder_blocks."))  # noqa: E731
    assert auto.decoder_sharded and decoder(plain) - decoder(auto) == 8 * split_per_block * 3 // 4


def test_local_shards_of_a_plain_model_is_the_state_dict():
    """The engine calls local_shards on whatever model it has; without TP it must hand the tensors back untouched."""
    from maws_scale.parallel.tp_checkpoint import local_shards

    model = build_wsp("vit_micro_p4", 3)
    state = model.state_dict()
    local = local_shards(model, state)
    assert list(local) == list(state)
    assert all(local[k] is state[k] for k in state)
