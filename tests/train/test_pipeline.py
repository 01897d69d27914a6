"""`maws-scale pipeline` / `maws-scale train` end to end on a tiny model and real mosaics (one process, in-process)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from maws_scale.cli import main
from maws_scale.parallel.distributed import free_port

pytest.importorskip("mlflow")

STEP_METRICS = {"loss", "lr", "grad_norm"}
PERIODIC = {
    "images_per_s",
    "tokens_per_s",
    "tflops_per_device",
    "mfu_measured",
    "peak_mem_gib",
    "skipped_steps",
    "bad_records",
}


def write_config(tmp_path: Path, mosaics: Path, **extra) -> Path:
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "model": {"name": "vit_micro_p4"},
        "data": {
            "path": str(mosaics / "train"),
            "eval_path": str(mosaics / "test"),
            "num_workers": 0,
            "shuffle_buffer": 64,
        },
        "train": {"global_batch": 16, "micro_batch": 8, "steps": 3, "log_every": 2},
        "parallel": {"zero_stage": 1, "precision": "fp32"},
        "optim": {"impl": "torch", "lr": 1e-3},
        "eval": {"max_train": 100, "few_shot": [1], "seeds": 1},
        "tracking": {"experiment": "pipeline-test", "run_name": "tiny"},
        "stages": {"mae": {"train.steps": 4}, "wsp": {"train.steps": 3}},
        **extra,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_pipeline_runs_both_stages_tracks_them_and_restarts_without_rerunning(world, mosaics, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    config = write_config(tmp_path, mosaics)
    assert main(["pipeline", str(config)]) == 0
    out = tmp_path / "run"
    for stage, steps in (("mae", 4), ("wsp", 3)):
        assert (out / stage / "consolidated.pt").is_file()
        records = [json.loads(x) for x in (out / stage / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == list(range(1, steps + 1))
    handoff = json.loads((out / "wsp" / "handoff.json").read_text())
    assert handoff["init"] == "mae" and handoff["from"] == str(out / "mae" / "consolidated.pt")
    assert "pos_embed" in handoff["loaded"] and "decoder_pred.weight" in handoff["dropped"]

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = {
        r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("pipeline-test").experiment_id])
    }
    assert set(runs) == {"tiny-mae", "tiny-wsp"}
    for name, run in runs.items():
        assert run.info.status == "FINISHED"
        assert set(run.data.metrics) >= STEP_METRICS | PERIODIC, name
        assert run.data.params["derived.dp_size"] == "1" and "optim.lr" in run.data.params
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "ds_config.json", "loss_curve.png", "consolidated.json"} <= artifacts, name
        assert len(client.get_metric_history(run.info.run_id, "loss")) >= 3
    assert "handoff.json" in {a.path for a in client.list_artifacts(runs["tiny-wsp"].info.run_id)}
    assert any(k.startswith("eval/") for k in runs["tiny-wsp"].data.metrics)  # evaluation went to the WSP run
    ds = json.loads((out / "mae" / "ds_config.json").read_text())
    assert ds["gradient_clipping"] == 0.0 and ds["zero_optimization"]["stage"] == 1

    capsys.readouterr()
    assert main(["pipeline", str(config), "eval.enabled=false"]) == 0  # finished stages are not run again
    assert capsys.readouterr().err.count("already finished") == 2
    assert len(client.search_runs([runs["tiny-mae"].info.experiment_id])) == 2


def test_train_one_stage_from_random_init_and_config_errors(world, mosaics, tmp_path, capsys):
    config = write_config(tmp_path, mosaics, tracking={"enabled": False})
    assert main(["train", str(config), "stage=wsp", "wsp.init=random", "--output-dir", str(tmp_path / "w")]) == 0
    assert json.loads((tmp_path / "w" / "wsp" / "handoff.json").read_text()) == {"init": "random"}
    assert (tmp_path / "w" / "wsp" / "consolidated.pt").is_file()
    assert main(["train", str(config), "stage=wsp"]) == 2
    assert "wsp.init_from" in capsys.readouterr().err


def test_pipeline_from_random_init_runs_no_mae_stage(world, mosaics, tmp_path, capsys):
    config = write_config(tmp_path, mosaics, tracking={"enabled": False}, eval={"enabled": False})
    assert main(["pipeline", str(config), "wsp.init=random"]) == 0
    out = tmp_path / "run"
    assert not (out / "mae").exists()
    assert (out / "wsp" / "consolidated.pt").is_file()
    assert "the MAE stage is not run" in capsys.readouterr().err


def test_a_crashed_stage_resumes_with_the_resume_flag(world, mosaics, tmp_path):
    config = write_config(tmp_path, mosaics, tracking={"enabled": False})
    first = ["train", str(config), "stage=mae", "checkpoint.every=2", "train.steps=4"]
    assert main([*first, "train.steps=2"]) == 0  # "crashed" after its step-2 checkpoint: ask for 4 steps next
    ckpt = tmp_path / "run" / "mae" / "checkpoints"
    assert [p.name for p in ckpt.glob("step_*")] == ["step_00000002"]
    (tmp_path / "run" / "mae" / "consolidated.pt").unlink()
    assert main([*first, "--resume", "auto"]) == 0
    records = [json.loads(x) for x in (tmp_path / "run" / "mae" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # continued at step 3, not from scratch


@pytest.mark.dist
def test_deepspeed_launcher_runs_the_cli(mosaics, tmp_path):
    import os
    import subprocess

    config = write_config(tmp_path, mosaics, tracking={"enabled": False})
    launcher = Path(sys.executable).with_name("deepspeed")
    if not launcher.exists():
        pytest.skip("deepspeed launcher script not installed next to this python")
    cmd = [
        str(launcher),
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        "--module",
        "maws_scale.cli",
        "train",
        str(config),
        "parallel.zero_stage=2",
        "train.steps=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    meta = json.loads((tmp_path / "run" / "mae" / "checkpoints" / "step_00000002" / "complete").read_text())
    assert (meta["world_size"], meta["dp_size"], meta["zero_stage"]) == (2, 2, 2)
    assert (tmp_path / "run" / "mae" / "consolidated.pt").is_file()


def test_evaluation_runs_on_the_training_device(monkeypatch, tmp_path):
    import torch

    import maws_scale.eval as eval_module
    from maws_scale.config import load_config
    from maws_scale.parallel.distributed import DistInfo
    from maws_scale.train import pipeline

    calls = []
    monkeypatch.setattr(eval_module, "evaluate_checkpoint", lambda cfg, w, tracker, device: calls.append(device) or {})
    cfg = load_config(None, ["tracking.enabled=false", f"output_dir={tmp_path}", f"data.eval_path={tmp_path}"])
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert pipeline._evaluate(cfg, tmp_path / "w.pt", info) == {}
    assert calls == [info.device]
