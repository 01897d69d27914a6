"""Stages: DP-invariant MAE masking noise, the MAE and WSP losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maws_scale.config import ConfigError, load_config
from maws_scale.models import build_model
from maws_scale.train.stages import MAEStage, WSPStage, mask_noise, mix32


def lowbias32(x: int) -> int:
    """Reference: Wellons' lowbias32 in plain Python integers."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_mix32_matches_the_reference_without_int64_overflow():
    values = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 123456789, 0xDEADBEEF]
    values += np.random.default_rng(0).integers(0, 2**32, 100).tolist()
    got = mix32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [lowbias32(v) for v in values]


def test_noise_is_a_function_of_seed_id_and_patch_only():
    ids = torch.tensor([0, 5, 2**33 + 7, 12345678901])
    full = mask_noise(3, ids, 49)
    assert full.shape == (4, 49) and full.dtype == torch.float32
    assert float(full.min()) >= 0.0 and float(full.max()) < 1.0
    # any sub-batch (another data-parallel split) gets the same rows
    assert torch.equal(mask_noise(3, ids[2:], 49), full[2:])
    assert torch.equal(mask_noise(3, ids[[3, 0]], 49), full[[3, 0]])
    # rows have no ties, so argsort (the mask) is unambiguous on any device
    assert all(len(set(row.tolist())) == 49 for row in full)
    assert not torch.equal(mask_noise(4, ids, 49), full)
    assert not torch.equal(full[0], full[1])


def test_noise_is_roughly_uniform():
    noise = mask_noise(0, torch.arange(2000), 64)
    hist = torch.histc(noise, bins=10, min=0.0, max=1.0) / noise.numel()
    assert torch.allclose(hist, torch.full((10,), 0.1), atol=0.01)


def tiny(*overrides: str):
    return load_config(None, ["model.name=vit_micro_p4", "train.micro_batch=4", "train.global_batch=8", *overrides])


def test_mae_loss_of_a_batch_is_the_mean_of_its_data_parallel_halves():
    cfg = tiny()
    stage = MAEStage(cfg)
    torch.manual_seed(0)
    model = stage.build_model()
    batch = {"images": torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8), "sample_ids": torch.arange(40, 48)}
    halves = [{k: v[i : i + 4] for k, v in batch.items()} for i in (0, 4)]
    dtype, cpu = torch.float32, torch.device("cpu")
    whole, _ = stage.loss(model, batch, cpu, dtype)
    parts = [stage.loss(model, h, cpu, dtype)[0].item() for h in halves]
    assert whole.item() == pytest.approx(sum(parts) / 2, abs=1e-6)
    again, _ = stage.loss(model, batch, cpu, dtype)
    assert again.item() == whole.item()  # the masks come from the ids, not from a random generator


def test_the_bf16_mae_target_is_built_from_fp32_pixels(monkeypatch):
    """A bf16 run feeds the encoder bf16 images, but norm-pix targets from rounded pixels were ~1 % off (RMS)."""
    from maws_scale.data import normalize_on_device

    stage = MAEStage(tiny())
    model = stage.build_model().to(torch.bfloat16)
    seen = {}
    forward_loss = model.forward_loss

    def spy(imgs, pred, mask):
        seen["target"] = imgs
        return forward_loss(imgs, pred, mask)

    monkeypatch.setattr(model, "forward_loss", spy)
    batch = {"images": torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8), "sample_ids": torch.arange(4)}
    loss, _ = stage.loss(model, batch, torch.device("cpu"), torch.bfloat16)
    assert seen["target"].dtype == torch.float32
    torch.testing.assert_close(seen["target"], normalize_on_device(batch["images"]), rtol=0, atol=0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_wsp_loss_and_the_vocabulary_check():
    cfg = tiny("stage=wsp", "wsp.init=random")
    stage = WSPStage(cfg, num_classes=10)
    model = stage.build_model()
    targets = torch.zeros(4, 10)
    targets[:, 3] = 1.0
    batch = {"images": torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8), "targets": targets}
    loss, _ = stage.loss(model, batch, torch.device("cpu"), torch.float32)
    assert loss.dtype == torch.float32 and 1.0 < loss.item() < 5.0  # about log(10) for a fresh head
    with pytest.raises(ConfigError, match=r"wsp.num_classes=7 but the vocabulary has 10"):
        WSPStage(tiny("stage=wsp", "wsp.num_classes=7"), num_classes=10)


def test_wsp_initialised_from_an_mae_encoder(tmp_path):
    mae_cfg = tiny()
    mae = build_model(mae_cfg)
    path = tmp_path / "mae.pt"
    torch.save(mae.state_dict(), path)
    stage = WSPStage(tiny("stage=wsp", f"wsp.init_from={path}"), num_classes=10)
    model = stage.build_model()
    stage.initialize_weights(model, rank=0)
    assert torch.equal(model.blocks[0].attn.qkv.weight, mae.blocks[0].attn.qkv.weight)
    assert torch.equal(model.pos_embed, mae.pos_embed) and model.pos_embed.requires_grad
    report = stage.init_report
    assert "head.weight" in report["new"] and "decoder_pred.weight" in report["dropped"]
    assert "blocks.0.attn.qkv.weight" in report["loaded"]
    other = tmp_path / "other.pt"
    torch.save(build_model(tiny("model.name=vit_tiny_p4")).state_dict(), other)
    wrong = WSPStage(tiny("stage=wsp", f"wsp.init_from={other}"), num_classes=10)
    with pytest.raises(ConfigError, match=r"wsp.init_from: .*does not fit vit_micro_p4"):
        wrong.initialize_weights(wrong.build_model(), rank=0)
    missing = WSPStage(tiny("stage=wsp", f"wsp.init_from={tmp_path / 'nope.pt'}"), num_classes=10)
    with pytest.raises(ConfigError, match=r"wsp.init_from"):
        missing.initialize_weights(missing.build_model(), rank=0)


def _counted_step_flops(model, stage: str) -> float:
    """Forward + backward FLOPs per sample of ``model`` as torch's FlopCounterMode sees them (batch of 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    imgs = torch.randn(2, 3, model.img_size, model.img_size, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        out = model(imgs)
        loss = out[0] if stage == "mae" else out.square().mean()
        loss.backward()
    return counter.get_total_flops() / 2


@pytest.mark.parametrize(
    ("stage", "overrides"),
    [
        ("mae", ["mae.decoder_width=64", "mae.decoder_depth=3", "mae.decoder_heads=2"]),
        ("wsp", ["model.pool=map", "wsp.init=random"]),
    ],
    ids=["mae-wider-deeper-decoder", "wsp-map-pool"],
)
def test_mfu_numerator_counts_the_model_as_configured(stage, overrides):
    """The FLOPs behind MFU follow the configured decoder and pooling head, not the registry's defaults."""
    cfg = tiny(f"stage={stage}", "model.attention=math", *overrides)
    built = MAEStage(cfg) if stage == "mae" else WSPStage(cfg, num_classes=10)
    counted = _counted_step_flops(built.build_model(), stage)
    assert built.flops_per_sample() == pytest.approx(counted, rel=0.01)
