"""One data-parallel rank: DeepSpeed's ZeRO-1/2 gradient reduction and fp32 master copy skipped, bit for bit the
same training as DeepSpeed's own step (parallel/thin_step.py)."""

from __future__ import annotations

import types
import warnings

import pytest
import torch

from maws_scale.config import load_config
from maws_scale.models import build_mae
from maws_scale.parallel import engine as engine_module
from maws_scale.parallel.engine import BlockInfo, build_ds_config, initialize_engine
from maws_scale.parallel.thin_step import share_fp32_master, skip_one_rank_reduction


def cfg_for(*overrides: str):
    return load_config(
        None, ["model.name=vit_micro_p4", "train.global_batch=4", "train.micro_batch=2", "optim.impl=torch", *overrides]
    )


def build_engine(cfg, thin: bool, monkeypatch: pytest.MonkeyPatch, **zero_settings):
    torch.manual_seed(0)
    model = build_mae("vit_micro_p4")
    ds = build_ds_config(cfg, 1, 2, BlockInfo.from_model(model))
    ds["zero_optimization"].update(zero_settings)
    with monkeypatch.context() as patch:
        if not thin:
            patch.setattr(engine_module, "thin_zero_step", lambda engine: [])
        engine, guard = initialize_engine(model, cfg, ds)
    engine.guard = guard
    calls = {"allreduce_bucket": 0}
    reduce = engine.optimizer.allreduce_bucket

    def counted(*args, **kwargs):
        calls["allreduce_bucket"] += 1
        return reduce(*args, **kwargs)

    engine.optimizer.allreduce_bucket = counted
    return engine, calls


def train(engine, steps: int, dtype: torch.dtype) -> list[float]:
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(2)  # the MAE's masks
    losses = []
    for _ in range(steps):
        for _ in range(2):  # two micro-batches per optimizer step
            size = engine.module.img_size
            images = torch.randn(2, 3, size, size, generator=generator).to(dtype)
            loss, _, _ = engine(images)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
    return losses


@pytest.mark.parametrize(
    "zero_stage, precision",
    [(1, "fp32"), (2, "fp32"), (1, "bf16")],
    ids=["zero1-fp32", "zero2-fp32", "zero1-bf16-model-dtype-reduction"],
)
def test_thinned_step_trains_bit_for_bit_like_deepspeeds(world, monkeypatch, zero_stage, precision):
    extra = ["parallel.comm_dtype=bf16", "parallel.grad_accum_dtype=model"] if precision == "bf16" else []
    cfg = cfg_for(f"parallel.zero_stage={zero_stage}", f"parallel.precision={precision}", *extra)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    ours, our_calls = build_engine(cfg, True, monkeypatch)
    theirs, their_calls = build_engine(cfg, False, monkeypatch)
    assert train(ours, 3, dtype) == train(theirs, 3, dtype)
    for (name, a), b in zip(ours.module.state_dict().items(), theirs.module.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert their_calls["allreduce_bucket"] > 0  # DeepSpeed's step reduces over the one rank ...
    assert our_calls["allreduce_bucket"] == 0 and ours.optimizer.one_rank_buckets_skipped > 0  # ... ours does not
    for master in ours.optimizer.single_partition_of_fp32_groups:  # the optimizer steps the model's own storage
        storage = master.untyped_storage().data_ptr()
        shares = any(p.untyped_storage().data_ptr() == storage for p in ours.module.parameters())
        assert shares == (precision == "fp32")  # a bf16 model keeps its fp32 master


def test_the_reduction_runs_where_it_is_not_the_identity(world, monkeypatch):
    """bf16 gradients reduced in fp32 (the default): the round trip rounds, so DeepSpeed's reduction runs."""
    cfg = cfg_for("parallel.zero_stage=1", "parallel.precision=bf16", "parallel.grad_accum_dtype=model")
    engine, calls = build_engine(cfg, True, monkeypatch)
    train(engine, 1, torch.bfloat16)
    assert calls["allreduce_bucket"] > 0 and engine.optimizer.one_rank_buckets_skipped == 0


def test_the_cuda_setting_overlap_comm_keeps_deepspeeds_reduction(world, monkeypatch):
    """``overlap_comm`` (what CUDA runs get, here forced on CPU): the reduction's side-stream bookkeeping stays
    DeepSpeed's, bit for bit the same as without thin_step."""
    cfg = cfg_for("parallel.zero_stage=2", "parallel.precision=fp32")
    ours, our_calls = build_engine(cfg, True, monkeypatch, overlap_comm=True, contiguous_gradients=False)
    theirs, _ = build_engine(cfg, False, monkeypatch, overlap_comm=True, contiguous_gradients=False)
    assert ours.optimizer.overlap_comm
    assert train(ours, 2, torch.float32) == train(theirs, 2, torch.float32)
    assert our_calls["allreduce_bucket"] > 0 and ours.optimizer.one_rank_buckets_skipped == 0


def test_a_shared_master_checkpoint_resumes_exactly_and_loads_into_deepspeeds_step(world, monkeypatch, tmp_path):
    cfg = cfg_for("parallel.zero_stage=2", "parallel.precision=fp32")
    straight, _ = build_engine(cfg, True, monkeypatch)
    train(straight, 1, torch.float32)
    straight.save_checkpoint(str(tmp_path), tag="one")
    expected = train(straight, 2, torch.float32)
    for thin in (True, False):
        resumed, _ = build_engine(cfg, thin, monkeypatch)
        resumed.load_checkpoint(str(tmp_path), tag="one")
        assert train(resumed, 2, torch.float32) == expected, f"thin={thin}"
        for (name, a), b in zip(resumed.module.state_dict().items(), straight.module.state_dict().values()):
            assert torch.equal(a, b), name


def test_a_universal_checkpoint_loads_into_the_shared_master(world, monkeypatch, tmp_path):
    """The resume onto another data-parallel size goes through DeepSpeed's universal checkpoint, which writes each
    parameter's master fragment through its link (``_hp_mapping``): relinked onto the shared storage, the model sees
    it."""
    from maws_scale.parallel.engine import repair_optimizer_after_load
    from maws_scale.train.checkpoint import _client_state, _convert_to_universal

    cfg = cfg_for("parallel.zero_stage=2", "parallel.precision=fp32")
    straight, _ = build_engine(cfg, True, monkeypatch)
    train(straight, 1, torch.float32)
    straight.save_checkpoint(str(tmp_path / "ckpt"), tag="one", client_state=_client_state({}))
    _convert_to_universal(tmp_path / "ckpt" / "one", tmp_path / "universal" / "one")
    expected = train(straight, 2, torch.float32)
    results = []
    for thin in (True, False):
        resumed, _ = build_engine(cfg, thin, monkeypatch)
        resumed._config.load_universal_checkpoint = True
        resumed.load_checkpoint(str(tmp_path / "universal"), tag="one", load_lr_scheduler_states=False)
        repair_optimizer_after_load(resumed, resumed.guard)
        results.append(train(resumed, 2, torch.float32))
    assert results[0] == results[1]  # the shared master loads what DeepSpeed's own step loads
    assert results[0] == pytest.approx(expected, rel=1e-6)  # and continues the run


def test_multi_rank_and_zero3_engines_are_left_alone():
    for world_size, stage in ((2, 1), (2, 2), (1, 3)):
        engine = types.SimpleNamespace(dp_world_size=world_size, zero_optimization_stage=lambda s=stage: s)
        assert skip_one_rank_reduction(engine) is None and share_fp32_master(engine) is None


def test_the_default_bf16_zero1_optimizer_is_left_alone_without_a_warning(world, monkeypatch):
    """bf16 accumulating in fp32 (the default, the demo's): ZeRO-1 runs DeepSpeed's BF16_Optimizer, not ours to thin."""
    cfg = cfg_for("parallel.zero_stage=1", "parallel.precision=bf16")
    torch.manual_seed(0)
    model = build_mae("vit_micro_p4")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        engine, _ = initialize_engine(model, cfg, build_ds_config(cfg, 1, 2, BlockInfo.from_model(model)))
    assert type(engine.optimizer).__name__ == "BF16_Optimizer"
    assert skip_one_rank_reduction(engine) is None and share_fp32_master(engine) is None


def test_another_deepspeed_keeps_its_step_with_a_warning():
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    class OtherZeroOptimizer(DeepSpeedZeroOptimizer):
        def allreduce_and_copy(self, small_bucket, dtype, rank=None):  # not the 0.19.8 signature
            raise AssertionError("not called")

    optimizer = object.__new__(OtherZeroOptimizer)  # no __init__: none of 0.19.8's attributes either
    engine = types.SimpleNamespace(dp_world_size=1, zero_optimization_stage=lambda: 1, optimizer=optimizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert skip_one_rank_reduction(engine) is None
        assert share_fp32_master(engine) is None
    messages = [str(w.message) for w in caught]
    assert any("keeps DeepSpeed's gradient reduction" in m for m in messages)
    assert any("separate fp32 master copy" in m for m in messages)
