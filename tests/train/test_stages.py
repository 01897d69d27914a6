"""Stages: DP-invariant MAE masking noise, the MAE and WSP losses."""

from __future__ import annotations

import pytest
import torch

from maws_scale.config import ConfigError, load_config
from maws_scale.model_config import build_model
from maws_scale.parallel.distributed import DistInfo
from maws_scale.parallel.plan import ParallelPlan
from maws_scale.train.stages import MAEStage, WSPStage


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


def one_process_plan(cfg) -> ParallelPlan:
    return ParallelPlan(cfg, DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))


def test_wsp_initialised_from_an_mae_encoder(tmp_path):
    mae_cfg = tiny()
    mae = build_model(mae_cfg)
    path = tmp_path / "mae.pt"
    torch.save(mae.state_dict(), path)
    stage = WSPStage(tiny("stage=wsp", f"wsp.init_from={path}"), num_classes=10)
    model = stage.build_model()
    stage.initialize_weights(model, one_process_plan(stage.cfg))
    assert torch.equal(model.blocks[0].attn.qkv.weight, mae.blocks[0].attn.qkv.weight)
    assert torch.equal(model.pos_embed, mae.pos_embed) and model.pos_embed.requires_grad
    report = stage.init_report
    assert "head.weight" in report["new"] and "decoder_pred.weight" in report["dropped"]
    assert "blocks.0.attn.qkv.weight" in report["loaded"]
    other = tmp_path / "other.pt"
    torch.save(build_model(tiny("model.name=vit_tiny_p4")).state_dict(), other)
    wrong = WSPStage(tiny("stage=wsp", f"wsp.init_from={other}"), num_classes=10)
    with pytest.raises(ConfigError, match=r"wsp.init_from: .*does not fit vit_micro_p4"):
        wrong.initialize_weights(wrong.build_model(), one_process_plan(wrong.cfg))
    missing = WSPStage(tiny("stage=wsp", f"wsp.init_from={tmp_path / 'nope.pt'}"), num_classes=10)
    with pytest.raises(ConfigError, match=r"wsp.init_from"):
        missing.initialize_weights(missing.build_model(), one_process_plan(missing.cfg))


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
