"""Every stage's inputs are checked before the first step: a run never trains and then fails on its config."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from maws_scale.cli import main
from maws_scale.config import ConfigError, load_config
from maws_scale.parallel.distributed import resolve_backend
from maws_scale.train.preflight import preflight


def _config(tmp_path, mosaics, *overrides):
    return load_config(
        None,
        [
            "model.name=vit_micro_p4",
            f"output_dir={tmp_path / 'run'}",
            f"data.path={mosaics / 'train'}",
            f"data.eval_path={mosaics / 'test'}",
            *overrides,
        ],
    )


def test_a_world_size_the_launcher_did_not_make_is_refused(tmp_path, mosaics):
    with pytest.raises(ConfigError, match=r"parallel.world_size=4, but this run was launched with 1 process"):
        preflight([_config(tmp_path, mosaics, "parallel.world_size=4")], world_size=1)
    preflight([_config(tmp_path, mosaics, "parallel.world_size=1")], world_size=1)


@pytest.mark.parametrize("key", ["output_dir", "checkpoint.dir"])
def test_unwritable_directories_are_refused_before_training(tmp_path, mosaics, key):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cfg = _config(tmp_path, mosaics, f"{key}={blocker / 'sub'}")
    with pytest.raises(ConfigError, match=rf"{key}: cannot write to {blocker / 'sub'} \(Not a directory\)"):
        preflight([cfg], world_size=1)


def test_missing_data_eval_set_and_vocab_are_refused(tmp_path, mosaics):
    with pytest.raises(ConfigError, match=r"data.path: .*no manifest"):
        preflight([_config(tmp_path, mosaics, f"data.path={tmp_path / 'none'}")], world_size=1)
    cfg = _config(tmp_path, mosaics, f"data.eval_path={tmp_path / 'none'}")
    with pytest.raises(ConfigError, match=r"data.eval_path: .*no manifest"):
        preflight([cfg], world_size=1, evaluate=cfg)
    (tmp_path / "vocab.json").write_text(json.dumps({"tags": [], "counts": []}))
    wsp = _config(tmp_path, mosaics, "stage=wsp", f"wsp.vocab={tmp_path / 'vocab.json'}")
    with pytest.raises(ConfigError, match=r"wsp.vocab: .*holds no tags"):
        preflight([wsp], world_size=1)


def test_more_few_shots_than_a_class_has_records_are_refused_before_training(tmp_path, mosaics):
    cfg = _config(tmp_path, mosaics, "eval.few_shot=[1, 100000]")
    with pytest.raises(ConfigError, match=r"eval.few_shot: 100000 shots per class, but class \d+ of data.eval_path"):
        preflight([cfg], world_size=1, evaluate=cfg)
    preflight([cfg], world_size=1, evaluate=_config(tmp_path, mosaics, "eval.few_shot=[1]"))


def test_triton_kernels_where_they_cannot_run_are_refused(tmp_path, mosaics, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr("kernels.dispatch.triton_available", lambda device=None: False)
    with pytest.raises(ConfigError, match=r"model.kernels=triton: .*cannot run on cpu"):
        preflight([_config(tmp_path, mosaics, "model.kernels=triton")], world_size=1, device=torch.device("cpu"))


def test_nccl_without_a_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"parallel.backend=nccl needs CUDA"):
        resolve_backend("nccl")


def test_pipeline_with_a_missing_eval_set_trains_nothing(world, mosaics, tmp_path, capsys):
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "model": {"name": "vit_micro_p4"},
        "data": {"path": str(mosaics / "train"), "eval_path": str(tmp_path / "missing"), "num_workers": 0},
        "train": {"global_batch": 8, "micro_batch": 8, "steps": 2},
        "parallel": {"zero_stage": 0, "precision": "fp32"},
        "optim": {"impl": "torch"},
        "tracking": {"enabled": False},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["pipeline", str(path)]) == 2
    assert "data.eval_path" in capsys.readouterr().err
    assert not (tmp_path / "run" / "mae" / "metrics.jsonl").exists()  # refused before the first MAE step


def test_a_world_size_mismatch_stops_train_before_the_first_step(world, mosaics, tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "vit_micro_p4"}, "data": {"path": str(mosaics / "train")}}))
    args = ["train", str(path), "tracking.enabled=false", "parallel.world_size=4"]
    assert main([*args, "--output-dir", str(tmp_path / "run")]) == 2
    assert "parallel.world_size=4" in capsys.readouterr().err
    assert not (tmp_path / "run" / "mae").exists()


def test_fp8_where_it_cannot_run_is_refused(tmp_path, mosaics):
    cfg = _config(tmp_path, mosaics, "parallel.fp8=rowwise")
    with pytest.raises(ConfigError, match=r"parallel\.fp8=rowwise: FP8 matmuls need a CUDA GPU .* on cpu"):
        preflight([cfg], world_size=1, device=torch.device("cpu"))
    preflight([_config(tmp_path, mosaics, "parallel.fp8=rowwise", "parallel.fp8_emulate=true")], world_size=1)


def test_pipeline_with_fp8_in_its_second_stage_on_a_cpu_trains_nothing(world, mosaics, tmp_path, capsys):
    """The WSP stage's FP8 is checked before the MAE stage's first step, not when WSP starts."""
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "model": {"name": "vit_micro_p4"},
        "data": {"path": str(mosaics / "train"), "num_workers": 0},
        "train": {"global_batch": 16, "micro_batch": 16, "steps": 2},  # 16 × 17 tokens: FP8's shape rule holds
        "parallel": {"zero_stage": 0, "precision": "fp32"},
        "optim": {"impl": "torch"},
        "tracking": {"enabled": False},
        "eval": {"enabled": False},
        "stages": {"mae": {}, "wsp": {"parallel.fp8": "tensorwise"}},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["pipeline", str(path)]) == 2
    assert "parallel.fp8=tensorwise: FP8 matmuls need a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "run" / "mae" / "metrics.jsonl").exists()
