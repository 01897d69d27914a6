"""DeepSpeed config filling: templates → final config from RunConfig, block-sized ZeRO-3 buckets, optimizer groups."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from maws_scale.config import ConfigError, load_config
from maws_scale.models import build_mae
from maws_scale.parallel.ds_config import BlockInfo, build_ds_config, fill_ds_config, load_template
from maws_scale.parallel.optimizer import build_optimizer, optimizer_impl, param_groups

TEMPLATES = ["zero0.json", "zero1.json", "zero2.json", "zero3.json", "zero3_offload.json"]


def cfg_for(*overrides: str):
    return load_config(None, ["train.global_batch=64", "train.micro_batch=8", *overrides])


@pytest.fixture(scope="module")
def b16_blocks() -> BlockInfo:
    return BlockInfo.from_model(build_mae("vit_b16", device="meta"))


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), tree


@pytest.mark.parametrize(
    ("stage", "offload", "template"),
    [
        (0, "none", "zero0.json"),
        (1, "none", "zero1.json"),
        (2, "none", "zero2.json"),
        (3, "none", "zero3.json"),
        (3, "optimizer", "zero3_offload.json"),
        (3, "all", "zero3_offload.json"),
    ],
)
def test_every_template_fills_completely(stage, offload, template, b16_blocks):
    accum = "model" if stage == 0 else "fp32"  # DeepSpeed has no fp32 accumulation of a bf16 model without ZeRO
    cfg = cfg_for(f"parallel.zero_stage={stage}", f"parallel.offload={offload}", f"parallel.grad_accum_dtype={accum}")
    ds = build_ds_config(cfg, dp_size=2, grad_accum=4, blocks=b16_blocks)
    assert load_template(cfg)[1] == template
    assert not [k for k, v in _leaves(ds) if v == "auto"]
    assert ds["zero_optimization"]["stage"] == stage
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (
        64,
        8,
        4,
    )
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False  # precision defaults to bf16


def test_shipped_templates_are_package_data():
    import importlib.resources

    names = {p.name for p in importlib.resources.files("maws_scale.ds_configs").iterdir()}
    assert set(TEMPLATES) <= names


@pytest.mark.parametrize("clip", [0.0, 1.5])
def test_gradient_clipping_is_always_written(clip):
    # DeepSpeed 0.19 defaults gradient_clipping to 1.0: an unset key would silently clip
    ds = build_ds_config(cfg_for(f"train.clip_grad={clip}", "parallel.zero_stage=1"), 8, 1, None)
    assert ds["gradient_clipping"] == clip


@pytest.mark.parametrize(
    ("precision", "bf16", "fp16"), [("fp32", False, False), ("bf16", True, False), ("fp16", False, True)]
)
def test_precision(precision, bf16, fp16):
    ds = build_ds_config(cfg_for(f"parallel.precision={precision}", "parallel.zero_stage=2"), 8, 1, None)
    assert (ds["bf16"]["enabled"], ds["fp16"]["enabled"]) == (bf16, fp16)


def test_zero3_buckets_follow_the_transformer_block(b16_blocks):
    # ViT-B/16 block: 12·768² + 13·768 parameters; biases/norms ≤ 3072 elements; smallest matrix 768²
    assert b16_blocks.block_numel == 12 * 768 * 768 + 13 * 768
    assert (b16_blocks.max_vector_numel, b16_blocks.min_matrix_numel) == (3072, 768 * 768)
    zero = build_ds_config(cfg_for("parallel.zero_stage=3"), 8, 1, b16_blocks)["zero_optimization"]
    assert zero["stage3_prefetch_bucket_size"] == 2 * b16_blocks.block_numel
    assert zero["stage3_max_live_parameters"] >= zero["stage3_prefetch_bucket_size"] + b16_blocks.block_numel
    assert 3072 < zero["stage3_param_persistence_threshold"] <= 768 * 768
    assert zero["reduce_bucket_size"] == b16_blocks.block_numel
    assert zero["leaf_module"]["classes"] == ["maws_scale.models.layers.Block"]


def test_offload_variants(b16_blocks):
    opt = build_ds_config(cfg_for("parallel.zero_stage=3", "parallel.offload=optimizer"), 8, 1, b16_blocks)
    zero = opt["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "none"
    assert zero["offload_optimizer"]["pin_memory"] is torch.cuda.is_available()
    assert opt["zero_force_ds_cpu_optimizer"] is False  # our torch optimizer with ZeRO-Offload is deliberate
    full = build_ds_config(
        cfg_for("parallel.zero_stage=3", "parallel.offload=all"), 8, 1, b16_blocks, client_optimizer="deepspeed"
    )
    assert full["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert "zero_force_ds_cpu_optimizer" not in full  # DeepSpeedCPUAdam needs no override
    z2 = build_ds_config(cfg_for("parallel.zero_stage=2", "parallel.offload=optimizer"), 8, 1, None)
    assert z2["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "offload_param" not in z2["zero_optimization"]
    assert optimizer_impl(cfg_for("parallel.zero_stage=2", "parallel.offload=optimizer")) == "deepspeed"


def test_a_template_that_contradicts_the_run_config_is_refused(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"gradient_clipping": 1.0, "zero_optimization": {"stage": 2}}))
    with pytest.raises(ConfigError, match=r"gradient_clipping=1.0.*train.clip_grad"):
        build_ds_config(cfg_for(f"parallel.ds_config={path}", "parallel.zero_stage=2"), 8, 1, None)
    with pytest.raises(ConfigError, match=r"zero_optimization.stage=2.*parallel.zero_stage"):
        build_ds_config(
            cfg_for(f"parallel.ds_config={path}", "parallel.zero_stage=1", "train.clip_grad=1.0"), 8, 1, None
        )


def test_unknown_auto_and_bad_files_are_named(tmp_path):
    cfg = cfg_for("parallel.zero_stage=1")
    with pytest.raises(ConfigError, match=r"zero_optimization.sub_group_size"):
        fill_ds_config(cfg, {"zero_optimization": {"stage": 1, "sub_group_size": "auto"}}, dp_size=8, grad_accum=1)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"parallel.ds_config"):
        build_ds_config(cfg_for(f"parallel.ds_config={bad}"), 8, 1, None)
    with pytest.raises(ConfigError, match=r"parallel.ds_config: cannot read"):
        build_ds_config(cfg_for(f"parallel.ds_config={tmp_path / 'missing.json'}"), 8, 1, None)


def test_deepspeed_accepts_the_filled_configs(b16_blocks):
    from deepspeed.runtime.config import DeepSpeedConfig

    for stage, offload in [(0, "none"), (1, "none"), (2, "optimizer"), (3, "none"), (3, "all")]:
        accum = "model" if stage == 0 else "fp32"
        overrides = [
            f"parallel.zero_stage={stage}",
            f"parallel.offload={offload}",
            f"parallel.grad_accum_dtype={accum}",
        ]
        cfg = cfg_for(*overrides)
        parsed = DeepSpeedConfig(build_ds_config(cfg, 1, 8, b16_blocks))
        assert parsed.gradient_clipping == 0.0
        assert parsed.zero_optimization_stage == stage
        if stage == 3:
            assert parsed.zero_config.prefetch_bucket_size == 2 * b16_blocks.block_numel
            assert parsed.zero_config.leaf_module.classes == ["maws_scale.models.layers.Block"]


def test_weight_decay_groups_exclude_norms_biases_embeddings_and_tokens():
    model = build_mae("vit_micro_p4")
    groups = param_groups(model, weight_decay=0.05)
    decay = dict(zip(groups[0]["names"], groups[0]["params"]))
    no_decay = set(groups[1]["names"])
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay.values())
    assert {"cls_token", "mask_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias"} <= no_decay
    assert {"blocks.0.attn.qkv.weight", "decoder_pred.weight", "patch_embed.proj.weight"} <= set(decay)
    # fixed sin-cos tables are frozen in MAE: no group at all
    assert "pos_embed" not in decay and "pos_embed" not in no_decay


def test_weight_decay_groups_use_zero3_logical_shapes():
    model = nn.Linear(4, 4)
    model.weight.data = torch.empty(0)  # what a ZeRO-3 partitioned parameter looks like locally
    model.weight.ds_shape = torch.Size([4, 4])
    groups = param_groups(model, 0.1)
    assert groups[0]["names"] == ["weight"] and groups[1]["names"] == ["bias"]


def test_optimizer_choice_never_needs_apex():
    cfg = cfg_for("optim.weight_decay=0.03", "optim.lr=0.01")
    opt = build_optimizer(build_mae("vit_micro_p4"), cfg)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.03, 0.0]
    assert opt.param_groups[0]["lr"] == 0.01
    if optimizer_impl(cfg_for()) != "apex":
        with pytest.raises(ConfigError, match=r"optim.impl=apex"):
            build_optimizer(build_mae("vit_micro_p4"), cfg_for("optim.impl=apex"))


@pytest.mark.parametrize("stage", [1, 2])
def test_zero12_overlap_and_contiguous_gradients_follow_the_device(stage, b16_blocks):
    cfg = cfg_for(f"parallel.zero_stage={stage}")
    gpu = build_ds_config(cfg, 8, 1, b16_blocks, device="cuda")["zero_optimization"]
    cpu = build_ds_config(cfg, 8, 1, b16_blocks, device="cpu")["zero_optimization"]
    assert (gpu["overlap_comm"], gpu["contiguous_gradients"]) == (True, True)
    assert gpu["reduce_bucket_size"] == gpu["allgather_bucket_size"] == max(1 << 20, b16_blocks.block_numel)
    assert (cpu["overlap_comm"], cpu["contiguous_gradients"]) == (False, False)
    assert cpu["reduce_bucket_size"] == cpu["allgather_bucket_size"] == 500_000_000
    # the planner plans GPUs unless told otherwise; its bucket memory follows the device's settings
    from maws_scale.perf.inventory import build_inventory
    from maws_scale.perf.planner import zero_settings

    plain = build_inventory(cfg)
    assert zero_settings(cfg, 8, plain).overlap_comm is True
    assert zero_settings(cfg, 8, plain, "cpu").contiguous_gradients is False
