"""MAE → WSP handoff loads every encoder key; state-dict utilities; build_model from a RunConfig."""

from __future__ import annotations

import pytest
import torch

from maws_scale.config import load_config
from maws_scale.model_config import build_model
from maws_scale.models import MaskedAutoencoder, VisionTransformer, build_mae
from maws_scale.models.handoff import HandoffError, wsp_from_mae
from maws_scale.models.state import adapt_state_dict, clean_state_dict, resample_pos_embed, to_timm


@pytest.mark.parametrize("pool", ["cls", "map"])
def test_handoff_loads_every_encoder_key(pool):
    torch.manual_seed(0)
    mae = build_mae("vit_micro_p4", qk_norm=True)
    for p in mae.parameters():  # make every tensor distinctive
        p.data.normal_()
    source = mae.state_dict()
    model, report = wsp_from_mae(source, "vit_micro_p4", 9, pool=pool, qk_norm=True)
    encoder_keys = [k for k in source if not k.startswith(("decoder_", "mask_token"))]
    assert sorted(report.loaded) == sorted(encoder_keys)
    assert sorted(report.dropped) == sorted(set(source) - set(encoder_keys))
    assert {k.split(".")[0] for k in report.new} == ({"head", "attn_pool"} if pool == "map" else {"head"})
    own = model.state_dict()
    for key in encoder_keys:
        assert torch.equal(own[key], source[key]), key
    assert set(own) == set(report.loaded) | set(report.new)
    assert model.pos_embed.requires_grad
    assert "loaded" in report.summary()


def test_handoff_same_features_as_mae_encoder():
    torch.manual_seed(0)
    mae = build_mae("vit_micro_p4", attention="math").eval()
    model, _ = wsp_from_mae({"module": mae.state_dict()}, "vit_micro_p4", 5, attention="math")
    imgs = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model.eval().forward_features(imgs), mae.forward_features(imgs))


def test_handoff_from_file_and_new_resolution(tmp_path):
    mae = build_mae("vit_micro_p4")
    path = tmp_path / "mae.pt"
    torch.save({"model": mae.state_dict(), "epoch": 3}, path)
    model, report = wsp_from_mae(path, "vit_micro_p4", 4, img_size=24)
    assert report.resampled == ["pos_embed"]
    assert model.pos_embed.shape == (1, 1 + 36, 32)
    torch.testing.assert_close(model.pos_embed[:, :1], mae.pos_embed[:, :1])


def test_handoff_refuses_a_wrong_encoder():
    mae = build_mae("vit_micro_p4")
    with pytest.raises(HandoffError, match=r"shape mismatch: cls_token \(1, 1, 32\) vs \(1, 1, 96\)"):
        wsp_from_mae(mae.state_dict(), "vit_tiny_p4", 3, img_size=16)
    partial = {k: v for k, v in mae.state_dict().items() if k != "blocks.1.mlp.fc2.bias"}
    with pytest.raises(HandoffError, match=r"missing encoder keys: blocks\.1\.mlp\.fc2\.bias"):
        wsp_from_mae(partial, "vit_micro_p4", 3)


def test_resample_pos_embed_keeps_class_token_and_is_identity_at_same_size():
    pos = torch.randn(1, 1 + 16, 8)
    assert resample_pos_embed(pos, 4) is pos
    up = resample_pos_embed(pos, 8)
    assert up.shape == (1, 65, 8) and torch.equal(up[:, 0], pos[:, 0])
    # a constant grid stays constant; a linear ramp stays monotone
    const = torch.ones(1, 17, 2)
    torch.testing.assert_close(resample_pos_embed(const, 6), torch.ones(1, 37, 2))
    ramp = torch.arange(4.0).repeat(4).reshape(1, 16, 1)
    row = resample_pos_embed(torch.cat([torch.zeros(1, 1, 1), ramp], 1), 8)[0, 1:9, 0]
    assert torch.all(row[1:] >= row[:-1])


def test_adapt_state_dict_replaces_fixed_decoder_table():
    small, big = build_mae("vit_micro_p4"), build_mae("vit_micro_p4", img_size=24)
    adapted = adapt_state_dict(small.state_dict(), big)
    big.load_state_dict(adapted)  # strict
    torch.testing.assert_close(big.decoder_pos_embed, build_mae("vit_micro_p4", img_size=24).decoder_pos_embed)


def test_clean_and_to_timm():
    sd = {"module._orig_mod.cls_token": torch.zeros(1), "module.head.weight": torch.zeros(2), "x": 3}
    assert set(clean_state_dict({"module": {k: v for k, v in sd.items() if k != "x"}})) == {"cls_token", "head.weight"}
    assert set(to_timm(sd, head=False)) == {"cls_token"}
    with pytest.raises(ValueError, match="no tensors"):
        clean_state_dict({"epoch": 1})


def test_build_model_reads_every_config_field():
    cfg = load_config(
        None,
        [
            "model.name=vit_micro_p4",
            "model.img_size=24",
            "model.attention=math",
            "model.qk_norm=true",
            "model.parallel_block=true",
            "model.qkv_bias=false",
            "model.norm_bias=false",
            "model.drop_path=0.1",
            "model.kernels=torch",
            "mae.mask_ratio=0.6",
            "mae.decoder_width=48",
            "mae.decoder_depth=3",
            "mae.decoder_heads=3",
            "mae.norm_pix_loss=false",
            "parallel.activation_checkpointing=true",
        ],
    )
    mae = build_model(cfg)
    assert isinstance(mae, MaskedAutoencoder)
    assert (mae.img_size, mae.mask_ratio, mae.norm_pix_loss, mae.kernels_impl) == (24, 0.6, False, "torch")
    assert (len(mae.decoder_blocks), mae.decoder_embed_dim, mae.decoder_blocks[0].attn.num_heads) == (3, 48, 3)
    block = mae.blocks[1]
    assert block.parallel and block.attn.backend == "math" and block.attn.qkv.bias is None
    assert block.norm1.bias is None and block.drop_path1.p == pytest.approx(0.1)
    assert isinstance(block.attn.q_norm, torch.nn.LayerNorm) and mae.recomputes
    wsp = build_model(
        cfg.for_stage("wsp").model_copy(update={"model": cfg.model.model_copy(update={"pool": "gap"})}), 17
    )
    assert isinstance(wsp, VisionTransformer) and wsp.head.out_features == 17 and wsp.global_pool == "gap"
    with pytest.raises(ValueError, match=r"wsp\.num_classes"):
        build_model(cfg.for_stage("wsp"))
