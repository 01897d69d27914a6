"""Checkpoint manager: atomic saves, keep-last-k, resume discovery, RNG capture, consolidation files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from maws_scale.config import ConfigError
from maws_scale.parallel.consolidate import consolidate_checkpoint
from maws_scale.parallel.ds_checkpoint import save_engine
from maws_scale.train.checkpoint import (
    MARKER,
    CheckpointManager,
    load_rank_state,
    load_trainer_state,
    read_checkpoint,
    rng_state,
    set_rng_state,
    tag_for,
)


class FakeEngine:
    """Writes what DeepSpeed's save_checkpoint writes for ZeRO-0 (and the script it drops beside the tag)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at
        self.weight = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        assert save_latest is False
        folder = Path(save_dir) / tag
        folder.mkdir(parents=True)
        (Path(save_dir) / "zero_to_fp32.py").write_text("# script\n")
        torch.save({"module": {"w": self.weight}, **client_state}, folder / "mp_rank_00_model_states.pt")
        if self.fail_at is not None and tag == tag_for(self.fail_at):
            raise KeyboardInterrupt("killed while writing")


def writer(engine: FakeEngine, trainer_state: dict):
    """What the trainer passes to ``CheckpointManager.save``: the engine's files, through parallel/."""
    return lambda parent, tag: save_engine(engine, parent, tag, trainer_state)


def save(manager: CheckpointManager, engine: FakeEngine, step: int) -> Path:
    meta = {"stage": "mae", "world_size": 1, "dp_size": 1, "zero_stage": 0, "precision": "fp32"}
    state = {"step": step, "loader": {"consumed": 8 * step}}
    return manager.save(writer(engine, state), step, state, {"loader": step}, meta)


def test_save_is_complete_and_readable(tmp_path):
    manager = CheckpointManager(tmp_path / "ckpt", keep_last=3)
    path = save(manager, FakeEngine(), 5)
    assert path == tmp_path / "ckpt" / "step_00000005"
    assert json.loads((path / MARKER).read_text())["step"] == 5
    info = read_checkpoint(path)
    assert (info.step, info.dp_size, info.meta["zero_stage"]) == (5, 1, 0)
    assert load_trainer_state(info) == {"step": 5, "loader": {"consumed": 40}}
    assert load_rank_state(info, 0)["loader"] == 5
    assert load_rank_state(info, 1) is None  # written by one rank only
    client = torch.load(path / "mp_rank_00_model_states.pt", weights_only=False)
    assert client["trainer"]["step"] == 5 and "universal_checkpoint_info" in client
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_00000005"]  # no temp dirs left


def test_a_killed_save_leaves_the_previous_checkpoint_as_latest(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=3)
    save(manager, FakeEngine(), 2)
    with pytest.raises(KeyboardInterrupt):
        save(manager, FakeEngine(fail_at=4), 4)
    assert not (tmp_path / "step_00000004").exists()
    assert manager.resolve("auto").step == 2
    save(manager, FakeEngine(), 6)  # the next save sweeps the half-written one away
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000002", "step_00000006"]


def test_keep_last_k_and_auto_picks_the_newest_complete(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (1, 2, 3, 10):
        save(manager, FakeEngine(), step)
    assert [c.step for c in manager.complete()] == [3, 10]
    (tmp_path / "step_00000020").mkdir()  # a directory without the marker is not a checkpoint
    (tmp_path / "step_00000020" / "mp_rank_00_model_states.pt").write_bytes(b"partial")
    assert manager.resolve("auto").step == 10
    assert manager.resolve(None) is None
    assert manager.resolve(str(tmp_path / "step_00000003")).step == 3
    with pytest.raises(ConfigError, match=r"checkpoint.resume: .*not a complete checkpoint"):
        manager.resolve(str(tmp_path / "step_00000020"))


def test_auto_on_an_empty_directory_starts_fresh(tmp_path):
    assert CheckpointManager(tmp_path / "none").resolve("auto") is None


def test_saving_the_same_step_again_replaces_it(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=3)
    save(manager, FakeEngine(), 4)
    engine = FakeEngine()
    engine.weight = engine.weight + 1
    save(manager, engine, 4)
    state = torch.load(tmp_path / "step_00000004" / "mp_rank_00_model_states.pt", weights_only=False)
    assert torch.equal(state["module"]["w"], engine.weight)


def test_rng_state_round_trip():
    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_consolidate_zero0_writes_fp32_with_a_sidecar(tmp_path):
    manager = CheckpointManager(tmp_path / "ckpt")
    info = read_checkpoint(save(manager, FakeEngine(), 3))
    out = consolidate_checkpoint(info, tmp_path / "consolidated.pt", {"stage": "mae"})
    state = torch.load(out, weights_only=True)
    assert state["w"].dtype == torch.float32 and torch.equal(state["w"], torch.arange(6.0).reshape(2, 3))
    meta = json.loads(out.with_suffix(".json").read_text())
    assert (meta["stage"], meta["step"], meta["parameters"]) == ("mae", 3, 6)
    assert not list(tmp_path.glob(".*tmp"))


def test_consolidate_zero0_mixed_precision_takes_the_fp32_masters(tmp_path):
    class MixedPrecisionEngine(FakeEngine):
        master = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=torch.float32)

        def save_checkpoint(self, save_dir, tag, client_state, save_latest):
            folder = Path(save_dir) / tag
            folder.mkdir(parents=True)
            module = {"w": self.master.bfloat16(), "frozen": torch.ones(2)}
            optimizer = {"fp32_groups": [[self.master]]}
            torch.save(
                {"module": module, "optimizer": optimizer, **client_state}, folder / "mp_rank_00_model_states.pt"
            )

    manager = CheckpointManager(tmp_path / "ckpt")
    meta = {"stage": "mae", "zero_stage": 0, "precision": "bf16"}
    state = {"step": 1, "param_group_names": [["w"]]}
    path = manager.save(writer(MixedPrecisionEngine(), state), 1, state, {}, meta)
    state = torch.load(consolidate_checkpoint(read_checkpoint(path), tmp_path / "c.pt"), weights_only=True)
    assert torch.equal(state["w"], MixedPrecisionEngine.master)  # not the bf16-rounded module copy
    assert torch.equal(state["frozen"], torch.ones(2))


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: (p / "mp_rank_00_model_states.pt").write_bytes(b"truncated"),
        lambda p: (p / "rank_00000.pt").unlink(),
        lambda p: (p / "trainer_state.pt").write_bytes(b"\0" * (p / "trainer_state.pt").stat().st_size),
    ],
)
def test_auto_resume_passes_over_a_damaged_complete_checkpoint_with_a_warning(tmp_path, caplog, damage):
    manager = CheckpointManager(tmp_path, keep_last=3)
    save(manager, FakeEngine(), 2)
    damage(save(manager, FakeEngine(), 4))
    with caplog.at_level("WARNING", logger="maws_scale.train"):
        assert manager.resolve("auto").step == 2
    assert "step_00000004 is damaged" in caplog.text and "falling back" in caplog.text
    with pytest.raises(ConfigError, match=r"checkpoint.resume: .*step_00000004 is damaged"):
        manager.resolve(str(tmp_path / "step_00000004"))


def test_pruning_keeps_the_newest_healthy_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.mark_healthy(save(manager, FakeEngine(), 1))
    for step in (2, 3):
        save(manager, FakeEngine(), step)  # never confirmed healthy (saved right before a divergence)
    assert [c.step for c in manager.complete()] == [1, 3]
    assert manager.latest_healthy().step == 1 and manager.latest().step == 3


def test_non_finite_weights_are_never_written_as_consolidated(tmp_path):
    engine = FakeEngine()
    engine.weight = torch.tensor([[1.0, float("inf")], [float("nan"), 0.0]])
    info = read_checkpoint(save(CheckpointManager(tmp_path / "ckpt"), engine, 1))
    with pytest.raises(RuntimeError, match=r"consolidated.pt: not written: 1 of 1 tensors hold non-finite"):
        consolidate_checkpoint(info, tmp_path / "consolidated.pt")
    assert not list(tmp_path.glob("*consolidated*"))


def test_keep_last_never_deletes_the_checkpoint_just_saved(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1)
    for step in (2, 4, 6):
        save(manager, FakeEngine(), step)
    save(manager, FakeEngine(), 3)  # a run restarted from an older point: 4 and 6 belong to the abandoned attempt
    assert [c.step for c in manager.complete()] == [3]
    assert manager.resolve("auto").step == 3


def test_bf16_zero3_run_consolidates_its_fp32_masters(world, tmp_path):
    """Before: bf16 ZeRO-3 (fp32 accumulation) trained, then failed at consolidation, reading its bf16 partition
    files as BF16_Optimizer (ZeRO-1) shards and looking for a model-states file ZeRO-3 does not write."""
    from maws_scale.config import load_config
    from maws_scale.train.loop import Trainer

    overrides = ["model.name=vit_micro_p4", "data.synthetic=true", "data.num_workers=0", "optim.impl=torch"]
    overrides += ["tracking.enabled=false", "eval.enabled=false", "train.global_batch=4", "train.micro_batch=4"]
    overrides += ["train.steps=2", "parallel.precision=bf16", "parallel.zero_stage=3", f"output_dir={tmp_path}"]
    trainer = Trainer(load_config(None, overrides), world)
    result = trainer.run()
    state = torch.load(result.consolidated, map_location="cpu", weights_only=True)
    assert state and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in state.values())
    import deepspeed

    params = dict(trainer.engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        for name, param in params.items():  # the bf16 weights are the fp32 masters rounded
            torch.testing.assert_close(state[name].to(torch.bfloat16), param.detach().cpu(), rtol=0, atol=0, msg=name)


def test_pruning_deletes_the_copies_derived_from_a_checkpoint(tmp_path):
    """A copy parallel/ derives from a checkpoint (``.<kind>/<tag>``, e.g. a conversion for another DP size) goes
    with the checkpoint; one of a checkpoint still kept stays."""
    manager = CheckpointManager(tmp_path, keep_last=1)
    for step in (1, 2):
        save(manager, FakeEngine(), step)
        (tmp_path / ".derived" / tag_for(step)).mkdir(parents=True)
    save(manager, FakeEngine(), 3)
    assert sorted(p.name for p in (tmp_path / ".derived").iterdir()) == []
    (tmp_path / ".derived" / tag_for(3)).mkdir()
    save(manager, FakeEngine(), 4)
    assert not (tmp_path / ".derived" / tag_for(3)).exists() and (tmp_path / tag_for(4)).is_dir()


def test_consolidation_reads_what_is_on_disk_not_what_the_marker_says(tmp_path):
    """Before: the marker's ``zero_stage`` picked the reader, so a ZeRO-0 folder marked 2 went to zero_to_fp32."""
    manager = CheckpointManager(tmp_path / "ckpt")
    state = {"step": 1}
    meta = {"stage": "mae", "world_size": 1, "dp_size": 1, "zero_stage": 2, "precision": "fp32"}
    path = manager.save(writer(FakeEngine(), state), 1, state, {}, meta)
    out = torch.load(consolidate_checkpoint(read_checkpoint(path), tmp_path / "c.pt"), weights_only=True)
    assert torch.equal(out["w"], torch.arange(6.0).reshape(2, 3))
