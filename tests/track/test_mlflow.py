"""MLflow tracking: the embedded sqlite store round trip, rank-0-only, and a dead server that must not stop training."""

from __future__ import annotations

import http.server
import os
import threading
import time
import warnings
from pathlib import Path

import pytest

from maws_scale.config import load_config
from maws_scale.parallel.distributed import free_port
from maws_scale.track.mlflow import (
    HTTP_LIMITS,
    MLflowTracker,
    NullTracker,
    TrackingWarning,
    default_uri,
    flatten_params,
    make_tracker,
    save_loss_curve,
)

pytest.importorskip("mlflow")


def test_flatten_params():
    flat = flatten_params({"optim": {"lr": 0.001, "betas": [0.9, 0.95]}, "stage": "mae", "tags": {}})
    assert flat == {"optim.lr": "0.001", "optim.betas": "[0.9, 0.95]", "stage": "mae", "tags": "{}"}


def test_sqlite_store_round_trip(tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = load_config(None, [f"output_dir={tmp_path}", "tracking.experiment=unit", "tracking.run_name=r"])
    tracker = make_tracker(cfg, tmp_path / "mae", is_main=True)
    assert isinstance(tracker, MLflowTracker) and tracker.uri == default_uri(tmp_path)
    tracker.log_params({"optim": {"lr": 0.5}, "derived": {"dp_size": 2}})
    for step in range(1, 6):
        tracker.log_metrics({"loss": 1.0 / step, "lr": 0.1}, step=step)
    curve = save_loss_curve({"loss": [(s, 1.0 / s) for s in range(1, 6)]}, tmp_path / "curve.png")
    tracker.log_artifact(curve)
    tracker.finish()
    client = MlflowClient(default_uri(tmp_path))
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r-mae"
    assert run.data.params["optim.lr"] == "0.5" and run.data.tags["stage"] == "mae"
    tags = run.data.tags  # MLflow's source columns are filled (issue 25)
    assert tags["mlflow.user"] and tags["mlflow.source.name"] and tags["mlflow.source.type"] == "LOCAL"
    assert len(tags["mlflow.source.git.commit"]) == 40 and tags["git.commit"].startswith(
        tags["mlflow.source.git.commit"]
    )
    assert [m.value for m in client.get_metric_history(tracker.run_id, "loss")] == pytest.approx(
        [1.0, 0.5, 1 / 3, 0.25, 0.2]
    )
    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["curve.png"]
    assert (tmp_path / "mlartifacts").is_dir()
    assert (tmp_path / "mae" / "mlflow_run_id").read_text() == tracker.run_id
    # a resumed stage keeps logging into the same run
    again = make_tracker(cfg, tmp_path / "mae", is_main=True)
    again.log_metrics({"loss": 0.1}, step=6)
    again.finish()
    assert again.run_id == tracker.run_id
    assert len(client.get_metric_history(tracker.run_id, "loss")) == 6


def test_only_rank_zero_tracks_and_disabled_is_a_no_op(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    assert isinstance(make_tracker(cfg, tmp_path, is_main=False), NullTracker)
    off = load_config(None, [f"output_dir={tmp_path}", "tracking.enabled=false"])
    assert isinstance(make_tracker(off, tmp_path, is_main=True), NullTracker)
    assert not (tmp_path / "mlflow.db").exists()


def test_a_dead_server_warns_once_and_never_blocks(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker = MLflowTracker(uri, "dead", run_id_file=tmp_path / "id", flush_timeout=10, retry_every=0.5)
        start = time.monotonic()
        for step in range(200):
            tracker.log_metrics({"loss": 1.0, "lr": 0.1}, step=step)  # returns at once: queued
        tracker.log_params({"a": 1})
        queued = time.monotonic() - start
        time.sleep(1.5)  # several retries happen meanwhile
        start = time.monotonic()
        tracker.finish()
        finished = time.monotonic() - start
    assert queued < 1.0
    assert finished < 7.0  # the flush gives up after at most 5 s once the server is known to be down
    assert tracker.failures >= 2 and tracker.run_id is None
    failures = [w for w in caught if issubclass(w.category, TrackingWarning) and "training continues" in str(w.message)]
    assert len(failures) == 1  # warned once, not per record or retry
    assert any("gave up" in str(w.message) for w in caught)


class _HangingServer(http.server.ThreadingHTTPServer):
    """Answers /health, then never answers an MLflow call: a server dying under load."""

    daemon_threads = True


class _HangingHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _hang(self) -> None:
        if self.path.rstrip("/").endswith("/health"):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")
            return
        self.server.release.wait(60)  # type: ignore[attr-defined]

    do_GET = do_POST = _hang


def test_a_hanging_server_is_warned_about_from_the_training_thread_and_costs_no_long_flush(tmp_path, monkeypatch):
    for name in HTTP_LIMITS:
        monkeypatch.delenv(name, raising=False)
    server = _HangingServer(("127.0.0.1", 0), _HangingHandler)
    server.release = threading.Event()  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tracker = MLflowTracker(uri, "hang", run_id_file=tmp_path / "id", flush_timeout=30, stall_warn=1.0)
            assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "10"  # each request bounded (MLflow's default: 120 s)
            start = time.monotonic()
            warned_after = None
            while time.monotonic() - start < 5 and warned_after is None:
                tracker.log_metrics({"loss": 1.0}, step=1)  # the training loop keeps logging
                if any("has not answered" in str(w.message) for w in caught):
                    warned_after = time.monotonic() - start
                time.sleep(0.1)
            start = time.monotonic()
            tracker.finish()
            finished = time.monotonic() - start
    finally:
        server.release.set()  # type: ignore[attr-defined]
        server.shutdown()
    assert warned_after is not None and warned_after < 3  # stall_warn=1 s: warned while training, not at the end
    assert finished < 7  # a hanging server costs the flush at most 5 s, not flush_timeout


def test_metric_names_are_grouped_and_mfu_is_in_percent():
    from maws_scale.track.mlflow import mlflow_metric_names

    named = mlflow_metric_names({"loss": 2.0, "images_per_s": 10.0, "mfu": 0.25, "mfu_measured": 0.5, "eval/x": 1.0})
    assert named == {
        "train/loss": 2.0,
        "perf/images_per_s": 10.0,
        "perf/mfu_pct_datasheet_peak": 25.0,
        "perf/mfu_pct_measured_peak": 50.0,
        "eval/x": 1.0,
    }


def test_a_sweep_store_keeps_its_artifacts_beside_its_db_and_runs_nest_under_a_parent(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from maws_scale.track.mlflow import PARENT_ENV, artifact_location, parent_run

    db = tmp_path / "sweep" / "mlflow.db"
    assert artifact_location(f"sqlite:///{db}") == (tmp_path / "sweep" / "mlartifacts").as_uri()
    assert artifact_location("http://mlflow:5000") is None
    monkeypatch.chdir(tmp_path)  # the working directory must get no ./mlruns
    cfg = load_config(None, [f"output_dir={tmp_path / 'point'}", f"tracking.uri=sqlite:///{db}"])
    parent = make_tracker(cfg, tmp_path / "point", is_main=True, stage="pipeline")
    parent_id = parent.start()
    with parent_run(parent_id):
        child = make_tracker(cfg, tmp_path / "point" / "mae", is_main=True)
        child.log_metrics({"loss": 1.0}, step=1)
        child.finish()
    monkeypatch.setenv(PARENT_ENV, parent_id)  # how a sweep hands its run to a point's process
    other = make_tracker(cfg, tmp_path / "point" / "wsp", is_main=True, stage="wsp")
    other.log_metrics({"loss": 1.0}, step=1)
    other.finish()
    parent.finish()
    client = MlflowClient(f"sqlite:///{db}")
    for run_id in (child.run_id, other.run_id):
        run = client.get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["version.torch"] and run.data.tags["git.commit"]
    assert client.get_experiment(child.experiment_id).artifact_location == (tmp_path / "sweep" / "mlartifacts").as_uri()
    assert not (tmp_path / "mlruns").exists()
    assert f"#/experiments/{child.experiment_id}/runs/{child.run_id}" in child.link()


def test_a_pipeline_parent_gets_its_childrens_params_and_summary_metrics(tmp_path, monkeypatch):
    """Collapsed rows compare (issue 25): stage-prefixed params and last values on the parent; a sweep's parent
    (handed over in the environment, one stage per point) gets none."""
    from mlflow.tracking import MlflowClient

    from maws_scale.track.mlflow import PARENT_ENV, parent_run, summary_metrics

    assert summary_metrics("mae", {"train/loss": 0.5, "perf/images_per_s": 9.0}) == {
        "mae/loss_last": 0.5,
        "mae/images_per_s_last": 9.0,
    }
    cfg = load_config(None, [f"output_dir={tmp_path}", "tracking.system_metrics_s=0", "tracking.run_name=demo"])
    parent = make_tracker(cfg, tmp_path, is_main=True, stage="pipeline")
    parent_id = parent.start()
    with parent_run(parent_id):
        mae = make_tracker(cfg, tmp_path / "mae", is_main=True, stage="mae")
        mae.log_params({"optim": {"lr": 0.001}})
        mae.log_metrics({"train/loss": 2.0}, step=1)
        mae.log_metrics({"train/loss": 1.5}, step=2)
        mae.finish()
        ev = make_tracker(cfg, tmp_path / "eval", is_main=True, stage="eval")
        ev.log_metrics({"eval/linear_top1": 0.75}, step=2)
        ev.finish()
    monkeypatch.setenv(PARENT_ENV, parent_id)
    point = make_tracker(cfg, tmp_path / "wsp", is_main=True, stage="wsp")
    point.log_params({"optim": {"lr": 0.1}})
    point.log_metrics({"train/loss": 3.0}, step=1)
    point.finish()
    parent.finish()
    run = MlflowClient(default_uri(tmp_path)).get_run(parent_id)
    assert run.data.params == {"mae.optim.lr": "0.001"}
    assert run.data.metrics == {"mae/loss_last": 1.5, "eval/linear_top1": 0.75}


def test_runs_get_system_metrics_when_psutil_is_there(tmp_path):
    from mlflow.tracking import MlflowClient

    pytest.importorskip("psutil")
    cfg = load_config(None, [f"output_dir={tmp_path}", "tracking.system_metrics_s=0.2"])
    tracker = make_tracker(cfg, tmp_path / "mae", is_main=True)
    tracker.start()
    deadline = time.monotonic() + 60
    client = MlflowClient(default_uri(tmp_path))
    while time.monotonic() < deadline and not any(
        k.startswith("system/") for k in client.get_run(tracker.run_id).data.metrics
    ):
        time.sleep(0.2)
    tracker.finish()
    metrics = client.get_run(tracker.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics
    off = make_tracker(
        load_config(None, [f"output_dir={tmp_path}", "tracking.system_metrics_s=0"]), tmp_path / "x", True
    )
    off.start()
    time.sleep(0.5)
    off.finish()
    assert not any(k.startswith("system/") for k in client.get_run(off.run_id).data.metrics)


def test_a_moved_or_copied_store_stays_readable_and_writes_into_itself(tmp_path):
    """Issue 25: no absolute artifact paths in use. MLflow 3.17.2 records absolute ``file:`` artifact URIs in a sqlite
    store; runs, params and metrics move with the DB, and :func:`run_artifacts` / the tracker use the store's own
    ``mlartifacts`` folder after a move or a copy."""
    import shutil

    from mlflow.tracking import MlflowClient

    from maws_scale.track.mlflow import run_artifacts, store_artifact_uri

    first = tmp_path / "first" / "demo"
    cfg = load_config(None, [f"output_dir={first}", "tracking.system_metrics_s=0"])
    tracker = make_tracker(cfg, first / "mae", is_main=True)
    tracker.log_params({"optim": {"lr": 0.5}})
    tracker.log_metrics({"loss": 0.25}, step=1)
    (tmp_path / "note.txt").write_text("first")
    tracker.log_artifact(tmp_path / "note.txt")
    tracker.finish()
    moved = tmp_path / "elsewhere" / "demo"
    shutil.move(tmp_path / "first", tmp_path / "elsewhere")
    uri = default_uri(moved)
    run = MlflowClient(uri).search_runs([tracker.experiment_id])[0]
    assert (
        run.info.run_id == tracker.run_id and run.data.params["optim.lr"] == "0.5" and run.data.metrics["loss"] == 0.25
    )
    assert str(first) in run.info.artifact_uri  # what MLflow recorded: the old, absolute place
    assert (
        store_artifact_uri(uri, run.info.artifact_uri)
        == (moved / "mlartifacts" / tracker.run_id / "artifacts").as_uri()
    )
    assert store_artifact_uri("http://mlflow:5000", run.info.artifact_uri) == run.info.artifact_uri
    artifacts = run_artifacts(uri, tracker.run_id)
    assert [a.path for a in artifacts.list_artifacts()] == ["note.txt"]
    assert Path(artifacts.download_artifacts("note.txt", str(tmp_path))).read_text() == "first"
    # a copy resumed in place writes into itself, never into the store it was copied from
    copy = tmp_path / "copy" / "demo"
    shutil.copytree(moved, copy)
    (tmp_path / "note.txt").write_text("copy")
    again = make_tracker(load_config(None, [f"output_dir={copy}", "tracking.system_metrics_s=0"]), copy / "mae", True)
    again.log_artifact(tmp_path / "note.txt", "resumed")
    again.finish()
    assert again.run_id == tracker.run_id
    assert (copy / "mlartifacts" / tracker.run_id / "artifacts" / "resumed" / "note.txt").is_file()
    assert not (moved / "mlartifacts" / tracker.run_id / "artifacts" / "resumed").exists()
