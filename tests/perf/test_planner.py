"""The analytic planner against hand-computed values: parameter inventory, DeepSpeed model-state rules, activation
bytes per token, the verdict / largest micro-batch search, the layout search and the speed model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from maws_scale.config import ConfigError, load_config
from maws_scale.models.recompute import recomputed_blocks
from maws_scale.parallel.tp_layout import shard_kind
from maws_scale.perf.activations import BlockShape, block_bytes_per_token, estimate
from maws_scale.perf.inventory import build_inventory
from maws_scale.perf.planner import (
    CHECKPOINTING_MODES,
    GiB,
    Hardware,
    best_micro_batch,
    candidate,
    parse_bytes,
    plan_layout,
    search,
    valid_micro_batches,
)
from maws_scale.perf.zero_memory import ZeroSettings, model_state_bytes, partition_touching

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def cfg_for(*overrides: str):
    return load_config(None, ["wsp.num_classes=1000", *overrides])


# ----- inventory --------------------------------------------------------------------------------------------------
def test_vit_b16_parameter_count_is_timms() -> None:
    inv = build_inventory(cfg_for("model.name=vit_b16", "stage=wsp"))
    assert inv.full_params == 86_567_656  # timm vit_base_patch16_224 with its 1000-class head
    assert inv.engine_blocks.block_numel == 7_087_872
    assert inv.head_numel() == 1000 * 769
    assert not inv.frozen  # WSP trains every tensor


@pytest.mark.parametrize("stage", ["mae", "wsp"])
@pytest.mark.parametrize("tp", [2, 4])
def test_inventory_splits_exactly_the_tensor_parallel_layers(stage: str, tp: int) -> None:
    cfg = cfg_for("model.name=vit_b16", f"stage={stage}", "wsp.num_classes=1001")
    one, split = build_inventory(cfg, tp=1), build_inventory(cfg, tp=tp)
    sharded = {e.name for e in split.entries if e.sharded}
    kinds = {shard_kind(e.name, split.decoder_sharded) for e in one.entries}
    assert sharded == {e.name for e in one.entries if shard_kind(e.name, split.decoder_sharded) is not None}
    assert kinds - {None} <= {"qkv", "column", "row", "vocab"}
    for mine, whole in zip(split.entries, one.entries):
        padded = 1001 + (-1001) % tp if mine.name.startswith("head.") else None
        expected = whole.numel // tp if padded is None else padded // tp * (whole.numel // 1001)
        assert mine.numel == (expected if mine.sharded else whole.numel), mine.name
    assert split.engine_blocks.block_numel == one.engine_blocks.block_numel // tp  # the trainer's bucket rule


def test_mae_frozen_tables_and_weight_decay_groups() -> None:
    inv = build_inventory(cfg_for("model.name=vit_b16", "stage=mae"))
    # encoder and decoder sin-cos tables, (1 + 196) × 768 and (1 + 196) × 512, are frozen
    assert inv.frozen == [197 * 768, 197 * 512]
    decay, no_decay = inv.groups()
    assert all(n > 1000 for n in decay)  # matrices only
    assert len(no_decay) > 0 and sum(decay) + sum(no_decay) == inv.trainable_numel


# ----- DeepSpeed model-state rules --------------------------------------------------------------------------------
def test_partition_touching_counts_boundary_parameters_whole() -> None:
    assert partition_touching([10, 6], dp=2, rank=0) == (8, 10)
    assert partition_touching([10, 6], dp=2, rank=1) == (8, 16)
    assert partition_touching([7, 6], dp=2, rank=0) == (8, 13)  # 13 padded to 16 (2·dp alignment)
    assert partition_touching([7, 6], dp=1, rank=0) == (14, 13)


def test_stage_rules_by_hand() -> None:
    bf16 = ZeroSettings(stage=2, precision="bf16", reduce_bucket_size=100, overlap_comm=True)
    s = model_state_bytes([[10, 6]], [4], dp=2, zs=bf16, rank=1)
    assert (s.params, s.grads, s.master, s.moments, s.buffers, s.step_temp, s.host) == (40, 32, 32, 64, 400, 32, 0)
    worst = model_state_bytes([[10, 6]], [4], dp=2, zs=bf16)
    assert worst == s  # rank 1 holds more gradients than rank 0

    s0 = model_state_bytes([[10, 6]], [4], dp=2, zs=replace(bf16, stage=0))
    assert (s0.params, s0.grads, s0.master, s0.moments, s0.step_temp) == (40, 32, 64, 128, 64)
    f0 = model_state_bytes([[10, 6]], [4], dp=2, zs=replace(bf16, stage=0, precision="fp32"))
    assert (f0.params, f0.grads, f0.master, f0.moments) == (80, 64, 0, 128)

    z3 = ZeroSettings(
        stage=3,
        precision="bf16",
        reduce_bucket_size=100,
        persistence_threshold=6,
        max_live_parameters=10,
        prefetch_bucket_size=0,
    )
    s3 = model_state_bytes([[10, 6]], [4], dp=2, zs=z3)
    # partitions 5 + 3 (+ 2 frozen), resident vectors 6 + 4, gathered ≤ 10 elements
    assert (s3.params, s3.grads, s3.master, s3.moments, s3.buffers) == (40, 16, 32, 64, 220)
    assert model_state_bytes([[10, 6]], [4], dp=2, zs=replace(z3, zero_init=False)).params == 20

    off = model_state_bytes([[10, 6]], [4], dp=2, zs=replace(bf16, offload_optimizer=True), rank=1)
    assert (off.params, off.grads, off.optimizer, off.host) == (40, 0, 0, 12 * 8 + 4 * 8)


def test_settings_read_from_the_engines_ds_config() -> None:
    from maws_scale.perf.planner import zero_settings

    cfg = cfg_for(
        "model.name=vit_b16", "stage=mae", "parallel.zero_stage=3", "train.global_batch=64", "train.micro_batch=8"
    )
    plain = build_inventory(cfg)
    zs = zero_settings(cfg, 8, plain)
    block = plain.engine_blocks.block_numel
    assert (zs.stage, zs.precision, zs.overlap_comm) == (3, "bf16", True)
    assert zs.grad_accum == "fp32" and zs.grad_bytes == 4  # parallel.grad_accum_dtype's default
    assert zs.prefetch_bucket_size == 2 * block and zs.max_live_parameters == 4 * block
    assert zs.persistence_threshold == 3072 + 1  # every bias / norm vector stays resident
    with pytest.raises(ValueError, match="grad_accum_dtype"):
        ZeroSettings.from_ds_config({"bf16": {"enabled": True}, "data_types": {"grad_accum_dtype": "fp8"}})


# ----- activations --------------------------------------------------------------------------------------------------
def test_block_activation_bytes_by_hand() -> None:
    b16 = BlockShape(tokens=197, width=768, mlp=3072, heads=12)
    # 4·w·a replicated + 2 norms' fp32 stats + (3w + w + 2m)·a + fp32 log-sum-exp per head
    assert block_bytes_per_token(b16, 2, "fused", False, False) == 4 * 768 * 2 + 16 + 9216 * 2 + 48
    tp2 = block_bytes_per_token(replace(b16, tp=2), 2, "fused", False, False)
    assert tp2 == 4 * 768 * 2 + 16 + 9216 + 24
    math_attn = block_bytes_per_token(b16, 2, "math", False, False)
    assert math_attn == 4 * 768 * 2 + 16 + 9216 * 2 + 12 * 197 * 6


def test_checkpointing_keeps_block_inputs_and_one_block() -> None:
    cfg = cfg_for("model.name=vit_b16", "stage=wsp")
    full = estimate(cfg)
    ckpt = estimate(cfg, checkpointing=True)
    assert ckpt.blocks == 12 * 197 * 768 * 2
    assert ckpt.recompute == pytest.approx(full.blocks / 12)
    assert ckpt.per_sample < 0.2 * full.per_sample
    mae = estimate(cfg_for("model.name=vit_b16", "stage=mae"))
    assert (mae.tokens_encoder, mae.tokens_decoder) == (1 + 49, 1 + 196)


# ----- verdict and search -----------------------------------------------------------------------------------------
def test_largest_micro_batch_is_the_boundary() -> None:
    cfg = cfg_for("model.name=vit_l16", "stage=mae", "parallel.zero_stage=1", "train.global_batch=4096")
    hw = Hardware(gpus=8, gpu_mem=16 * GiB, reserve=GiB)
    plan = plan_layout(cfg, hw)
    m = plan.max_micro_batch()
    assert m > 0
    at = plan_layout(cfg, hw, candidate(cfg, hw.gpus, 1, 1, False, "none", m))
    above = plan_layout(cfg, hw, candidate(cfg, hw.gpus, 1, 1, False, "none", m + 1))
    assert at.fits and not above.fits
    valid = best_micro_batch(plan, 4096)
    assert valid <= m and (4096 // 8) % valid == 0 and 2 * valid > m


def test_does_not_fit_reports_zero() -> None:
    cfg = cfg_for("model.name=vit_6.5b14", "stage=wsp", "parallel.zero_stage=0", "parallel.grad_accum_dtype=model")
    plan = plan_layout(cfg, Hardware(gpus=1))
    assert not plan.fits and plan.max_micro_batch() == 0
    assert plan.peak > 16 * 6.5e9  # 16 bytes per parameter before any activation


def test_valid_micro_batches() -> None:
    assert valid_micro_batches(64, 4) == [16, 8, 4, 2, 1]
    assert valid_micro_batches(10, 4) == []


def test_search_ranks_fitting_layouts_by_speed() -> None:
    # grad_accum_dtype=model: ZeRO-0 is a candidate (DeepSpeed has no fp32 accumulation of a bf16 model without ZeRO)
    cfg = cfg_for("model.name=vit_2b14", "stage=mae", "train.global_batch=4096", "parallel.grad_accum_dtype=model")
    rows = search(cfg, Hardware(gpus=16, gpu_mem=24 * GiB))
    fitting = [r for r in rows if r.fits]
    assert fitting and len(fitting) < len(rows)  # ZeRO-0 without TP needs 16 B/parameter + fp32 gradients
    assert all(r.plan.layout.zero_stage == 0 and r.plan.layout.tp == 1 for r in rows if not r.fits)
    speeds = [r.plan.speed.est_images_per_s for r in fitting]
    assert speeds == sorted(speeds, reverse=True)
    for r in fitting:
        assert r.plan.fits and r.plan.layout.micro_batch == r.micro_batch
        assert (4096 // r.plan.dp) % r.micro_batch == 0
        assert r.plan.layout.offload == "none" or r.plan.layout.zero_stage >= 1
        assert r.plan.layout.offload != "all" or r.plan.layout.zero_stage == 3
    fp32_grads = search(cfg_for("model.name=vit_2b14", "stage=mae", "train.global_batch=4096"), Hardware(gpus=16))
    assert {r.plan.layout.zero_stage for r in fp32_grads} == {1, 2, 3}  # the default: no ZeRO-0 candidates


def test_speed_model_counts_recompute_and_tensor_parallel_split() -> None:
    cfg = cfg_for("model.name=vit_l16", "stage=wsp", "train.global_batch=256")
    hw = Hardware(gpus=8)
    base = plan_layout(cfg, hw, candidate(cfg, hw.gpus, 1, 1, False, "none", 8))
    ckpt = plan_layout(cfg, hw, candidate(cfg, hw.gpus, 1, 1, True, "none", 8))
    tp2 = plan_layout(cfg, hw, candidate(cfg, hw.gpus, 1, 2, False, "none", 8))
    assert base.speed.recompute_flops_per_gpu == 0
    assert ckpt.speed.recompute_flops_per_gpu == pytest.approx(base.speed.useful_flops_per_gpu / 3, rel=0.02)
    assert ckpt.speed.est_images_per_s < base.speed.est_images_per_s
    # tp 2 halves the data-parallel size: the same useful FLOPs per GPU, half the gradient volume per rank
    assert tp2.speed.useful_flops_per_gpu == pytest.approx(base.speed.useful_flops_per_gpu, rel=0.01)
    assert tp2.speed.comm_exposed_s > 0


def test_parse_bytes_and_bad_layouts() -> None:
    assert parse_bytes("80GiB") == 80 * GiB
    assert parse_bytes("80GB") == 80 * 10**9
    assert parse_bytes("512 MiB") == 512 << 20
    with pytest.raises(ValueError, match="size"):
        parse_bytes("eighty")
    cfg = cfg_for("model.name=vit_b16")
    with pytest.raises(ConfigError, match="tp"):
        plan_layout(cfg, Hardware(gpus=6), candidate(cfg, 6, 1, 4, False, "none", 8))
    with pytest.raises(ConfigError, match="offload"):
        plan_layout(cfg, Hardware(gpus=4), candidate(cfg, 4, 0, 1, False, "optimizer", 8))


def test_plan_json_is_one_object(capsys: pytest.CaptureFixture[str]) -> None:
    from maws_scale.cli import main

    rc = main(["plan", str(CONFIGS / "vit_2b14_mae_zero3.yaml"), "--gpus", "64", "--json", "--search"])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads(out)
    assert len(out.strip().splitlines()) == 1
    plan = data["plan"]
    assert plan["parameters"]["total"] == 1_917_374_028
    for key in ("params", "grads", "optimizer", "activations", "buffers", "peak"):
        assert plan["bytes_per_gpu"][key] > 0
    assert plan["flops"]["per_step"] == plan["flops"]["per_sample"] * 4096
    assert set(plan["verdict"]) == {"fits", "host_fits", "max_micro_batch", "max_micro_batch_for_global_batch"}
    assert data["best"]["verdict"]["fits"] and len(data["search"]) > 1


def test_offload_moves_states_to_the_host_and_checks_host_memory() -> None:
    cfg = cfg_for(
        "model.name=vit_6.5b14",
        "stage=mae",
        "parallel.zero_stage=3",
        "parallel.offload=all",
        "train.global_batch=8",
        "train.micro_batch=8",
    )
    plain = plan_layout(cfg, Hardware(gpus=1))
    psi = build_inventory(cfg).trainable_numel
    # fp32 master + Adam moments + fp32 gradient part (16 B) and the bf16 parameters (2 B) live on the host
    assert plain.states.host == pytest.approx(18 * psi, rel=0.01)
    assert plain.states.master == plain.states.moments == 0 and plain.fits
    small_host = plan_layout(cfg, Hardware(gpus=1, host_mem=96 * GiB))  # 18 B × 6.47e9 = 108 GiB
    assert not small_host.host_fits and not small_host.fits and small_host.max_micro_batch() == 0
    assert plan_layout(cfg, Hardware(gpus=1, host_mem=128 * GiB)).fits


@pytest.mark.parametrize("name", ["vit_2b14_maws.yaml", "vit_6.5b14_maws.yaml"])
def test_search_works_on_the_shipped_pipeline_configs(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    from maws_scale.cli import main

    # parallel.ds_config pins zero3.json; the search's other stages use their shipped templates
    rc = main(["plan", str(CONFIGS / name), "--gpus", "64", "--search", "--json"])
    data = json.loads(capsys.readouterr().out)
    # ZeRO 1-3 only: these bf16 configs accumulate gradients in fp32, which DeepSpeed does only with ZeRO
    assert {r["layout"]["zero_stage"] for r in data["search"]} == {1, 2, 3}
    assert rc == (0 if data["plan"]["verdict"]["fits"] else 1)


def test_does_not_fit_exits_1_with_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    from maws_scale.cli import main

    argv = ["plan", str(CONFIGS / "vit_2b14_maws.yaml"), "--gpus", "8", "--gpu-mem", "16GiB"]
    assert main([*argv, "parallel.zero_stage=1", "parallel.ds_config=null"]) == 1
    out = capsys.readouterr().out
    assert "does not fit" in out and "hint:" in out and "--search" in out
    assert main([*argv, "parallel.zero_stage=1", "parallel.ds_config=null", "--search"]) == 1
    out = capsys.readouterr().out
    assert "hint:" in out and "parallel.zero_stage=" in out


def test_search_recommends_selective_or_every_k_where_none_does_not_fit_and_full_is_not_needed() -> None:
    """Comm-bound (16 GPUs, 2 nodes): fewer micro-batches per step are faster, so at the per-rank batch of 16 a
    layout that fits without a second micro-batch wins. Memory between selective's peak and no checkpointing's."""
    cfg = cfg_for("model.name=vit_l16", "stage=mae", "train.global_batch=256", "parallel.zero_stage=1")
    plans = {
        m: plan_layout(cfg, Hardware(gpus=16), candidate(cfg, 16, 1, 1, m, "none", 16)) for m in CHECKPOINTING_MODES
    }
    assert plans["full"].peak < plans["selective_op"].peak < plans["none"].peak
    assert plans["every_k:2"].peak < plans["every_k:4"].peak < plans["none"].peak
    gpu_mem = (plans["selective_op"].peak + plans["none"].peak) // 2 + 2 * GiB
    rows = search(cfg, Hardware(gpus=16, gpu_mem=gpu_mem))
    same = [
        r
        for r in rows
        if r.fits and (r.plan.layout.zero_stage, r.plan.layout.tp, r.plan.layout.offload) == (1, 1, "none")
    ]
    assert {r.plan.layout.recompute for r in same} == set(CHECKPOINTING_MODES)  # none fits at micro 8 only
    best = same[0]
    assert best.plan.layout.recompute in ("selective_op", "every_k:4", "every_k:2"), best.plan.layout
    assert best.micro_batch == 16
    by_mode = {r.plan.layout.recompute: r for r in same}
    assert by_mode["none"].micro_batch == 8
    assert by_mode["full"].plan.speed.compute_s > best.plan.speed.compute_s  # fits, but recomputes more


def test_speed_model_charges_each_mode_its_recompute() -> None:
    cfg = cfg_for("model.name=vit_l16", "stage=wsp", "train.global_batch=256")
    hw = Hardware(gpus=8)
    speed = {m: plan_layout(cfg, hw, candidate(cfg, hw.gpus, 1, 1, m, "none", 8)).speed for m in CHECKPOINTING_MODES}
    full = speed["full"].recompute_flops_per_gpu
    assert speed["none"].recompute_flops_per_gpu == speed["selective_op"].recompute_flops_per_gpu == 0
    assert speed["every_k:2"].recompute_flops_per_gpu == pytest.approx(full / 2)  # 12 of 24 blocks
    assert speed["every_k:4"].recompute_flops_per_gpu == pytest.approx(full / 4)
    # selective recomputes no matmul but pays the elementwise traffic: slower than none, faster than full here
    assert speed["none"].compute_s < speed["selective_op"].compute_s < speed["full"].compute_s
    # the planner's block rule is the model's
    act = estimate(cfg, checkpointing="every_k:3")
    assert act.recomputed[0] == sum(recomputed_blocks("every_k:3", 24)) / 24


@pytest.mark.parametrize(("stage", "ckpt"), [("mae", False), ("wsp", True)])
def test_fp8_speeds_up_the_encoder_linears_and_adds_its_workspace(stage: str, ckpt: bool) -> None:
    """parallel.fp8: the encoder blocks' linear FLOPs (×3 fwd+bwd, ×4 with recompute) take 1/1.6 the time; the rest
    of the step, the model states and the saved activations do not change; the FP8 workspace is 4 B per encoder token
    × MLP width per sample plus 4 B × width × MLP width fixed; MFU stays against the bf16 peak."""
    from maws_scale.perf.planner import FP8_MATMUL_SPEEDUP

    # micro-batch 16: FP8's weight gradients need micro-batch × 65 (MAE) or 257 (WSP) tokens to be a multiple of 16
    overrides = ["model.name=vit_2b14", f"stage={stage}", "train.global_batch=128", "train.micro_batch=16"]
    overrides.append(f"parallel.activation_checkpointing={ckpt}")
    hw = Hardware(gpus=8)
    base = plan_layout(cfg_for(*overrides), hw)
    fp8 = plan_layout(cfg_for(*overrides, "parallel.fp8=rowwise"), hw)
    spec = load_config(None, ["model.name=vit_2b14"]).spec
    w, h, depth = spec.width, spec.mlp_hidden, spec.depth
    tokens = base.activation.tokens_encoder
    linear_fwd = depth * 2 * tokens * w * (4 * w + 2 * h)  # qkv, proj, fc1, fc2 per sample
    samples = 128 / 8  # per data-parallel rank (8 GPUs)
    saved_work = samples * linear_fwd * (4 if ckpt else 3) * (1 - 1 / FP8_MATMUL_SPEEDUP)
    expected = base.speed.compute_s - saved_work / (hw.peak_tflops * 1e12 * hw.compute_efficiency)
    assert fp8.speed.compute_s == pytest.approx(expected, rel=1e-9) and fp8.speed.compute_s < base.speed.compute_s
    assert fp8.speed.useful_flops_per_gpu == base.speed.useful_flops_per_gpu  # MFU: same FLOPs, same bf16 peak
    assert fp8.speed.est_mfu == pytest.approx(fp8.speed.useful_flops_per_gpu / (fp8.speed.step_s * 989e12))
    assert fp8.states == base.states
    assert fp8.activations_per_sample - base.activations_per_sample == pytest.approx(4 * tokens * h)
    assert fp8.fp8_fixed == 4 * w * h and base.fp8_fixed == 0
    assert fp8.peak - base.peak >= fp8.fp8_fixed
    assert fp8.as_dict()["bytes_per_gpu"]["fp8_workspace_fixed"] == 4 * w * h


def test_fp8_on_widths_fp8_cannot_use_changes_nothing() -> None:
    overrides = ["model.name=vit_micro_p4", "model.width=40", "model.heads=2", "stage=wsp"]
    base, fp8 = (plan_layout(cfg_for(*overrides, *x), Hardware()) for x in ([], ["parallel.fp8=tensorwise"]))
    assert fp8.speed == base.speed and fp8.peak == base.peak
