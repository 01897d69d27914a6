"""`maws-scale bench` on CPU with a tiny model: the JSON has every field, numbers are finite and positive (no timed
assertions), results reach MLflow and the JSON file, the baseline runs beside, torchrun ranks are aggregated."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from dist_support import run_torchrun

TINY = ["model.name=vit_micro_p4", "train.global_batch=8", "train.micro_batch=4", "optim.impl=torch"]
POSITIVE = [
    "step_s",
    "images_per_s",
    "tokens_per_s",
    "flops_per_sample",
    "tflops_per_device",
    "peak_tflops_measured",
    "mfu_measured_peak",
    "peak_mem_bytes",
    "peak_rss_bytes",
    "planner_peak_bytes",
]


def check_summary(s: dict, world: int, stage: str) -> None:
    for key in POSITIVE:
        assert isinstance(s[key], (int, float)) and math.isfinite(s[key]) and s[key] > 0, (key, s[key])
    assert math.isfinite(s["planner_error_pct"])
    assert s["stage"] == stage and s["world_size"] == world and len(s["step_s_per_rank"]) == world
    assert set(s["phases_s"]) == {"forward", "backward", "optimizer", "other"}
    assert all(v >= 0 for v in s["phases_s"].values()) and s["phases_s"]["backward"] > 0
    assert s["comm_s"] >= 0
    assert s["memory_method"].startswith("tensor storages")
    for key in ("params", "grads", "optimizer"):
        assert s["model_states_measured"][key] > 0 and s["model_states_predicted"][key] > 0
    assert s["images_per_s"] == pytest.approx(s["global_batch"] / s["step_s"])


def test_bench_cli_mae_with_baseline_and_mlflow(world, tmp_path: Path, capsys, monkeypatch) -> None:
    from maws_scale.cli import main
    from maws_scale.perf.baseline import PlainLoop
    from maws_scale.train.loop import Trainer

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "result.json"
    calls: list[str] = []
    ours, plain = Trainer.train_step, PlainLoop.step
    monkeypatch.setattr(Trainer, "train_step", lambda self, b: calls.append("A") or ours(self, b))
    monkeypatch.setattr(PlainLoop, "step", lambda self: calls.append("B") or plain(self))
    rc = main(
        [
            "bench",
            "/dev/null",
            *TINY,
            "stage=mae",
            "parallel.zero_stage=1",
            f"output_dir={tmp_path / 'run'}",
            "--steps",
            "2",
            "--warmup",
            "3",
            "--baseline",
            "--peak-tflops",
            "1.0",
            "--json",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(printed[-1])
    assert summary == json.loads(out.read_text())
    check_summary(summary, 1, "mae")
    assert summary["peak_tflops_datasheet"] == 1.0 and summary["mfu"] == pytest.approx(summary["tflops_per_device"])
    base = summary["baseline"]
    for key in ("images_per_s", "speedup", "speedup_cpu_time", "cpu_s"):
        assert math.isfinite(base[key]) and base[key] > 0, key
    assert base["model_class"] == "maws_scale.models.mae.MaskedAutoencoder"  # the model we train
    assert base["optimizer"] == "torch.optim.adamw.AdamW"
    assert base["micro_batch"] == 4 and len(base["step_s_list"]) == 2 == len(summary["step_s_list"])
    # 3 passes of ours (a first step, the profiled step, the observed step), then warm-up 3 + 2 timed, ABBA
    assert "".join(calls) == "AAA" + "ABBAABBAAB"
    assert summary["warmup"] == 3 and summary["load_average"]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'run' / 'bench' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["maws-scale"], output_format="list")
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    assert metrics["bench/images_per_s"] == pytest.approx(summary["images_per_s"])
    assert metrics["bench/speedup_vs_baseline"] == pytest.approx(base["speedup"])
    assert runs[0].data.tags["kind"] == "bench"


def test_bench_wsp_profile_trace(world, tmp_path: Path) -> None:
    from maws_scale.config import load_config
    from maws_scale.perf.profile import BenchOptions, run_bench

    cfg = load_config(
        None,
        [
            *TINY,
            "stage=wsp",
            "wsp.num_classes=50",
            "parallel.zero_stage=3",
            "tracking.enabled=false",
            f"output_dir={tmp_path}",
        ],
    )
    trace = tmp_path / "trace"
    summary = run_bench(cfg, BenchOptions(steps=2, warmup=1, profile_dir=str(trace)), world)
    check_summary(summary, 1, "wsp")
    assert summary["mfu"] is None and summary["peak_tflops_datasheet"] is None  # a CPU has no datasheet peak
    assert json.loads((trace / "trace_rank0.json").read_text())["traceEvents"]
    assert (tmp_path / "bench" / "bench.json").is_file()


@pytest.mark.dist
def test_bench_two_ranks_aggregates_on_rank0(tmp_path: Path) -> None:
    out = tmp_path / "two.json"
    args = [
        "bench",
        "/dev/null",
        *TINY,
        "stage=mae",
        "parallel.zero_stage=3",
        "tracking.enabled=false",
        f"output_dir={tmp_path}",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--out",
        str(out),
    ]
    run_torchrun(Path(__file__).with_name("cli_entry.py"), 2, args, timeout=240, cwd=tmp_path)
    summary = json.loads(out.read_text())
    check_summary(summary, 2, "mae")
    assert summary["dp"] == 2 and summary["comm_s"] > 0
    assert summary["model_states_measured"]["optimizer"] == pytest.approx(
        summary["model_states_predicted"]["optimizer"], rel=0.1
    )
