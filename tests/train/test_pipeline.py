"""`maws-scale pipeline` / `maws-scale train` end to end on a tiny model and real mosaics (one process, in-process)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from maws_scale.cli import main
from maws_scale.parallel.distributed import free_port

pytest.importorskip("mlflow")

STEP_METRICS = {"train/loss", "train/lr", "train/grad_norm"}
PERIODIC = {
    "perf/images_per_s",
    "perf/tokens_per_s",
    "perf/tflops_per_device",
    "perf/mfu_pct_measured_peak",
    "perf/peak_mem_gib",
    "perf/measured_peak_tflops",
    "train/skipped_steps",
    "train/bad_records",
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
    assert set(runs) == {"tiny", "tiny-mae", "tiny-wsp", "tiny-eval"}  # the pipeline's run and its stages
    parent = runs.pop("tiny")
    assert parent.info.status == "FINISHED"
    for name, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id, name
        assert run.data.tags["data.records"] == "512" and run.data.tags["version.torch"], name
    for name in ("tiny-mae", "tiny-wsp"):
        run = runs[name]
        assert set(run.data.metrics) >= STEP_METRICS | PERIODIC, name
        assert run.data.params["derived.dp_size"] == "1" and "optim.lr" in run.data.params
        assert "derived.measured_peak_tflops" not in run.data.params  # measured: a metric, not a param
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "ds_config.json", "loss_curve.png", "consolidated.json"} <= artifacts, name
        assert len(client.get_metric_history(run.info.run_id, "train/loss")) >= 3
    assert runs["tiny-wsp"].data.tags["num_classes"] == "10"
    assert "handoff.json" in {a.path for a in client.list_artifacts(runs["tiny-wsp"].info.run_id)}
    assert any(k.startswith("eval/") for k in runs["tiny-eval"].data.metrics)  # evaluation: its own child run
    # issue 25: the parent row compares: its children's stage-prefixed params and summary metrics
    for stage in ("mae", "wsp"):
        child = runs[f"tiny-{stage}"].data
        assert parent.data.params[f"{stage}.optim.lr"] == child.params["optim.lr"]
        assert parent.data.metrics[f"{stage}/loss_last"] == child.metrics["train/loss"]
    assert parent.data.metrics["eval/linear_top1"] == runs["tiny-eval"].data.metrics["eval/linear_top1"]
    ds = json.loads((out / "mae" / "ds_config.json").read_text())
    assert ds["gradient_clipping"] == 0.0 and ds["zero_optimization"]["stage"] == 1

    capsys.readouterr()
    assert main(["pipeline", str(config), "eval.enabled=false"]) == 0  # finished stages are not run again
    assert capsys.readouterr().err.count("already finished") == 2
    assert len(client.search_runs([runs["tiny-mae"].info.experiment_id])) == 4  # the same parent run, re-used

    # issue 25: the same config again is a no-op, for the evaluation and for `train` of a finished stage
    eval_history = len(client.get_metric_history(runs["tiny-eval"].info.run_id, "eval/linear_top1"))
    wsp_run = client.get_run(runs["tiny-wsp"].info.run_id)
    assert main(["pipeline", str(config)]) == 0
    assert "[eval] already done" in capsys.readouterr().err
    assert len(client.get_metric_history(runs["tiny-eval"].info.run_id, "eval/linear_top1")) == eval_history
    init = f"wsp.init_from={out / 'mae' / 'consolidated.pt'}"
    assert main(["train", str(config), "stage=wsp", init]) == 0
    assert "[wsp] already finished with this config" in capsys.readouterr().err
    again = client.get_run(runs["tiny-wsp"].info.run_id)
    assert again.info.end_time == wsp_run.info.end_time and again.data.metrics == wsp_run.data.metrics
    assert main(["train", str(config), "stage=wsp", init, "optim.lr=0.5"]) == 2  # another config: refused


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
    first = ["train", str(config), "stage=mae", "checkpoint.every=2", "checkpoint.keep_last=5", "train.steps=4"]
    assert main(first) == 0
    stage = tmp_path / "run" / "mae"
    shutil.rmtree(stage / "checkpoints" / "step_00000004")  # "crashed" after its step-2 checkpoint
    (stage / "consolidated.pt").unlink()
    assert main([*first, "--resume", "auto"]) == 0
    records = [json.loads(x) for x in (stage / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # continued at step 3, not from scratch; no repeated steps


def test_a_rerun_resumes_its_own_run_and_refuses_another_config(world, mosaics, tmp_path, capsys):
    config = write_config(tmp_path, mosaics, tracking={"enabled": False})
    argv = ["train", str(config), "stage=wsp", "wsp.init=random", "train.steps=2"]
    assert main(argv) == 0
    weights = tmp_path / "run" / "wsp" / "consolidated.pt"
    before = weights.read_bytes()
    console = capsys.readouterr().err  # the start-up summary, then ETA and data wait on every log line
    assert "vit_micro_p4: 0.0" in console and "world 1 = dp 1 × tp 1" in console and "2 steps" in console
    assert "data wait" in console and "ETA 00:00:00" in console
    assert main([*argv, "optim.lr=0.002", "train.log_every=1"]) == 2  # another config: refused, nothing touched
    err = capsys.readouterr().err
    assert "optim.lr: 0.001 -> 0.002" in err and "output_dir" in err and "train.log_every" not in err
    assert weights.read_bytes() == before
    assert main([*argv, "train.log_every=1"]) == 0  # the same config (log cadence aside), finished: a no-op
    assert "[wsp] already finished with this config" in capsys.readouterr().err
    assert weights.read_bytes() == before
    assert [p.name for p in (tmp_path / "run" / "wsp" / "checkpoints").iterdir()] == ["step_00000002"]
    records = [json.loads(x) for x in (tmp_path / "run" / "wsp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]  # not restarted at step 0


def test_pipeline_refuses_a_finished_stage_of_another_config(world, mosaics, tmp_path, capsys):
    config = write_config(tmp_path, mosaics, tracking={"enabled": False}, eval={"enabled": False})
    assert main(["pipeline", str(config), "wsp.init=random"]) == 0
    capsys.readouterr()
    assert main(["pipeline", str(config), "wsp.init=random", "stages.wsp.train.steps=5"]) == 2
    assert "train.steps: 3 -> 5" in capsys.readouterr().err  # not skipped as finished, nor evaluated


def test_a_failed_stage_closes_its_mlflow_run_and_a_rerun_continues_it(world, mosaics, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from maws_scale.train.loop import Trainer

    config = write_config(tmp_path, mosaics)
    argv = ["train", str(config), "stage=mae", "checkpoint.every=2", "train.steps=4"]
    real_step = Trainer.train_step

    def crash_at_step_3(self, batches):
        if self.step == 2:
            raise RuntimeError("node lost")
        return real_step(self, batches)

    monkeypatch.setattr(Trainer, "train_step", crash_at_step_3)
    with pytest.raises(RuntimeError, match="node lost"):
        main(argv)
    client = MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("pipeline-test").experiment_id
    (run,) = client.search_runs([experiment])
    assert run.info.status == "FAILED"  # never left RUNNING
    assert "derived.measured_peak_tflops" not in run.data.params and "device" in run.data.tags
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert main(argv) == 0
    (run,) = client.search_runs([experiment])  # the same MLflow run, continued
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4]


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
    fake = lambda cfg, w, tracker, device, shard: calls.append((device, shard)) or {}  # noqa: E731
    monkeypatch.setattr(eval_module, "evaluate_checkpoint", fake)
    cfg = load_config(None, ["tracking.enabled=false", f"output_dir={tmp_path}", f"data.eval_path={tmp_path}"])
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert pipeline._evaluate(cfg, tmp_path / "w.pt", info) == {}
    assert calls == [(info.device, (0, 1))]


def test_pipeline_floors_puts_the_demo_beside_its_floors_from_one_command(world, mosaics, tmp_path, capsys):
    """Issue 25 §4: `pipeline --floors` trains the WSP-only baseline beside the pipeline, evaluates the untrained
    encoder, all in the pipeline's MLflow store with the same evaluation, and prints/writes one table; a re-run
    trains and evaluates nothing."""
    from mlflow.tracking import MlflowClient

    config = write_config(tmp_path, mosaics)
    assert main(["pipeline", str(config), "--floors"]) == 0
    out, baseline = tmp_path / "run", tmp_path / "run-random"
    assert (out / "mae").is_dir() and not (baseline / "mae").exists()  # the baseline is WSP from random init
    assert json.loads((baseline / "wsp" / "handoff.json").read_text()) == {"init": "random"}
    assert not (baseline / "mlflow.db").exists()  # tracked in the pipeline's store
    rows = json.loads((out / "floors.json").read_text())
    assert set(rows) == {"untrained", "wsp_only", "maws"}
    sources = {arm: row["source"] for arm, row in rows.items()}
    assert sources == {
        "untrained": str(out / "eval-random" / "metrics.json"),
        "wsp_only": str(baseline / "eval" / "metrics.json"),
        "maws": str(out / "eval" / "metrics.json"),
    }
    for arm, row in rows.items():
        assert row["metrics"] == json.loads(Path(row["source"]).read_text()), arm
        assert 0 <= row["metrics"]["eval/linear_top1"] <= 100 and row["metrics"]["eval/num_probe_train"] == 100
    table = (out / "floors.md").read_text().splitlines()
    assert len(table) == 5 and table[2].startswith("| untrained encoder") and table[4].startswith("| MAE → WSP")
    assert f"{rows['maws']['metrics']['eval/linear_top1']:.1f}" in table[4]
    assert "the demo beside its floors" in capsys.readouterr().out

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    names = {
        r.info.run_name for r in client.search_runs([client.get_experiment_by_name("pipeline-test").experiment_id])
    }
    assert names == {"tiny", "tiny-mae", "tiny-wsp", "tiny-eval", "tiny-eval-random"} | {
        "tiny-wsp-only",
        "tiny-wsp-only-wsp",
        "tiny-wsp-only-eval",
    }

    stamps = {p: p.stat().st_mtime_ns for p in out.parent.rglob("*.pt")}
    evals = {p: p.stat().st_mtime_ns for p in out.parent.rglob("metrics.json")}
    assert main(["pipeline", str(config), "--floors"]) == 0  # everything is there: only collected again
    assert {p: p.stat().st_mtime_ns for p in out.parent.rglob("*.pt")} == stamps
    assert {p: p.stat().st_mtime_ns for p in out.parent.rglob("metrics.json")} == evals


def test_pipeline_floors_refuses_a_config_that_does_not_evaluate_before_training(world, mosaics, tmp_path, capsys):
    config = write_config(tmp_path, mosaics, tracking={"enabled": False})
    for bad in ("eval.enabled=false", "data.eval_path=null"):
        assert main(["pipeline", str(config), "--floors", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and bad.split("=")[0] in err and "--floors" in err, err
    assert not (tmp_path / "run").exists()
