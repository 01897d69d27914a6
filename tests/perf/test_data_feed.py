"""The data-feed check: `bench --data` (measured loader rate vs the planner's step rate), `plan --data-rate`, and
the training loop's one-time data-wait warning."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from maws_scale.cli import main as cli_main
from maws_scale.config import load_config
from maws_scale.data.build import build_dataset
from maws_scale.data.samples import photo_jpegs
from maws_scale.data.sources import FolderSource
from maws_scale.perf.data_feed import FeedCheck, planned_gpu_rate
from maws_scale.track.throughput import data_wait_advice
from maws_scale.train.loop import Trainer

VIT_B_SWEEP_POINT = [
    "model.name=vit_b16",
    "parallel.zero_stage=1",
    "parallel.ds_config=null",
    "parallel.activation_checkpointing=false",
]


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("feed_src")
    for i, (data, _) in enumerate(photo_jpegs(24, seed=2, sides=(256, 400))):
        (root / f"c{i % 2}").mkdir(exist_ok=True)
        (root / f"c{i % 2}" / f"{i:03d}.jpg").write_bytes(data)
    out = tmp_path_factory.mktemp("feed_set")
    build_dataset(FolderSource(str(root)), out, progress=False)
    return out


def test_workers_needed_and_the_verdicts():
    check = FeedCheck(286, 4200, 64, cores_per_node=112, gpus_per_node=8, num_workers=10)
    assert check.workers_per_gpu == 15 and check.cores_per_gpu == 14 and check.data_bound
    line = check.line()
    assert "15 workers per GPU" in line and "14 cores per GPU" in line and "DATA-BOUND" in line
    assert "--resize" in line and "--encoding raw" in line and "data.decode=gpu" in line
    short = FeedCheck(286, 2800, 64, 112, 8, num_workers=4)
    assert not short.data_bound and "set it to 10" in short.line()
    assert "OK" in FeedCheck(600, 150, 64, 112, 8, num_workers=10).line()


def test_bench_data_prints_the_line_for_the_2b_config_and_a_vit_b_sweep_point(photo_set: Path, capsys):
    common = [f"data.path={photo_set}", "train.micro_batch=8", "data.shuffle_buffer=16", "model.img_size=112"]
    for extra in ([], VIT_B_SWEEP_POINT):
        code = cli_main(["bench", "--data", "configs/vit_2b14_maws.yaml", *common, *extra, "--data-batches", "3",
                         "--cores-per-node", "112", "--json"])  # fmt: skip
        assert code == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        cfg = load_config("configs/vit_2b14_maws.yaml", [*common, *extra]).resolved()
        assert out["loader"]["images"] == 24 and out["loader"]["img_size"] == 112
        assert out["feed"]["gpu_img_per_s"] == pytest.approx(planned_gpu_rate(cfg, 64, 8))
        rate = out["feed"]["worker_img_per_s"]
        assert rate > 0 and out["feed"]["workers_per_gpu"] == max(1, -(-out["feed"]["gpu_img_per_s"] // rate))
        assert "workers per GPU" in out["line"] or "worker per GPU" in out["line"]


def test_plan_shows_the_line_for_a_given_rate(capsys):
    args = ["plan", "configs/vit_2b14_maws.yaml", *VIT_B_SWEEP_POINT, "--gpus", "64", "--cores-per-node", "112"]
    assert cli_main([*args, "--data-rate", "286", "--json"]) == 0
    feed = json.loads(capsys.readouterr().out)["data_feed"]
    assert feed["worker_img_per_s"] == 286 and feed["cores_per_gpu"] == 14
    assert cli_main([*args, "--data-rate", "286"]) == 0
    assert "data feed:" in capsys.readouterr().out
    assert cli_main([*args, "--data-rate", "0"]) == 2


def test_data_wait_advice_threshold():
    assert data_wait_advice(10.0, 4) is None
    text = data_wait_advice(35.0, 4)
    assert "35%" in text and "data.num_workers=4" in text and "data.decode=gpu" in text
    assert "data.decode=gpu" not in data_wait_advice(35.0, 4, decode="gpu")


def _window(trainer: SimpleNamespace, wait_s: float, length_s: float = 0.02) -> dict[str, float]:
    """One logging window of the real Trainer._timing with ``wait_s`` of it spent waiting for data."""
    trainer._last_log = None if trainer._last_log is None else time.perf_counter() - length_s
    trainer.data_wait = wait_s
    return Trainer._timing(trainer)


def test_the_loop_warns_once_when_a_window_waits_over_10_percent(caplog):
    cfg = load_config(None, ["data.num_workers=3"])
    trainer = SimpleNamespace(
        cfg=cfg, info=SimpleNamespace(is_main=True), step=10, _start_step=0, total_steps=100,
        _clock=time.perf_counter() - 1.0, _last_log=None, data_wait=0.0, _warned_data_wait=False,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="maws_scale.train"):
        _window(trainer, 0.9)  # the first window holds the loader's start-up: no warning
        assert not caplog.records
        assert _window(trainer, 0.001)["data_wait_pct"] < 10 and not caplog.records
        assert _window(trainer, 0.01)["data_wait_pct"] > 10
        assert _window(trainer, 0.01)["data_wait_pct"] > 10
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "data.num_workers=3" in warnings[0] and "--resize" in warnings[0]


def test_bench_decode_runs_the_gpu_path_on_cpu(tmp_path: Path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_decode", Path("benchmarks/bench_decode.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "decode.json"
    argv = ["--device", "cpu", "--images", "24", "--batch", "8", "--batches", "2", "--repeats", "1", "--size", "64"]
    argv += ["--sides", "96,160"]
    assert module.main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["rows"]) == {"decode=cpu (PIL, draft)", "decode=gpu on cpu"}
    assert all(row["images"] == 16 for row in result["rows"].values())
    assert "not a GPU figure" in result["decoder"] or result["decoder"] == "torchvision.io.decode_jpeg"
