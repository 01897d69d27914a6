"""MLflow tracking on rank 0 (a no-op elsewhere) that never stops training.

Every MLflow call runs on one background thread fed by a queue, so a slow or dead tracking server costs the training
loop nothing: the first failure is warned about once, records are buffered (bounded; the oldest are dropped when
full) and retried, and whatever is still undelivered at the end is reported and given up after a timeout. Each HTTP
request is bounded (``MLFLOW_HTTP_REQUEST_TIMEOUT`` 10 s, 2 retries unless set in the environment), and a request
that hangs longer than ``stall_warn`` (30 s) is warned about from the training thread, so a dying server is
reported within a minute and costs the final flush 5 s, not 30.

Default store: ``sqlite:///<output_dir>/mlflow.db`` with artifacts in ``<output_dir>/mlartifacts`` (the old
``./mlruns`` file store raises in MLflow 3.17); any other ``sqlite:///`` store keeps its artifacts beside its DB file.
``tracking.uri`` (or ``--tracking-uri``) points at a server instead.

Runs are linked: a pipeline opens a parent run (:func:`parent_run`) and its stage / eval runs are nested under it; a
sweep passes its own parent run to each point's process in ``MAWS_SCALE_PARENT_RUN``. Every run is tagged with the
git commit, package versions and the training set's manifest id and record count (:func:`provenance_tags`). Metrics
go to MLflow with prefixes (``train/``, ``perf/``; ``eval/`` is the evaluation's own) so the charts group.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from maws_scale.config import ConfigError, RunConfig

log = logging.getLogger("maws_scale.track")

MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_LENGTH = 6000
RUN_ID_FILE = "mlflow_run_id"
PARENT_ENV = "MAWS_SCALE_PARENT_RUN"
PARENT_TAG = "mlflow.parentRunId"
PACKAGES = ("torch", "deepspeed", "megatron-core", "triton", "mlflow", "maws-scale")
PERF_METRICS = (
    "images_per_s",
    "tokens_per_s",
    "tflops_per_device",
    "peak_mem_gib",
    "measured_peak_tflops",
    "data_wait_pct",
    "eta_s",
)
_STOP = object()
HTTP_LIMITS = {  # MLflow's defaults (120 s, 7 retries with backoff) keep a dying server's request alive for minutes
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


_parent: list[str] = []


@contextlib.contextmanager
def parent_run(run_id: str | None) -> Iterator[None]:
    """Nest the runs :func:`make_tracker` creates inside this block under MLflow run ``run_id``."""
    if run_id:
        _parent.append(run_id)
    try:
        yield
    finally:
        if run_id:
            _parent.pop()


def current_parent() -> str | None:
    """The run new runs nest under: the innermost :func:`parent_run`, else ``$MAWS_SCALE_PARENT_RUN`` (sweeps)."""
    return _parent[-1] if _parent else (os.environ.get(PARENT_ENV) or None)


def mlflow_metric_names(metrics: Mapping[str, float]) -> dict[str, float]:
    """Training-loop names → grouped MLflow names: ``loss`` → ``train/loss``, ``images_per_s`` → ``perf/…``, MFU
    (a fraction) → ``perf/mfu_pct_datasheet_peak`` / ``perf/mfu_pct_measured_peak`` in percent."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if "/" in key:
            out[key] = value
        elif key == "mfu":
            out["perf/mfu_pct_datasheet_peak"] = 100.0 * value
        elif key == "mfu_measured":
            out["perf/mfu_pct_measured_peak"] = 100.0 * value
        elif key in PERF_METRICS:
            out[f"perf/{key}"] = value
        else:
            out[f"train/{key}"] = value
    return out


@functools.lru_cache(maxsize=1)
def _code_tags() -> dict[str, str]:
    tags: dict[str, str] = {}
    for package in PACKAGES:
        try:
            tags[f"version.{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            tags[f"version.{package}"] = "absent"
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        tags["git.commit"] = commit + ("-dirty" if dirty else "")
        tags["mlflow.source.git.commit"] = commit  # MLflow's own column: the UI links the run to its commit
    except (OSError, subprocess.SubprocessError):
        tags["git.commit"] = "unknown"
    return tags


def source_tags() -> dict[str, str]:
    """MLflow's system tags a run started from Python would get: who ran it and which command (``mlflow.user``,
    ``mlflow.source.name``, ``mlflow.source.type``; the git commit is in :func:`_code_tags`)."""
    import getpass

    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name (a container's uid without a passwd entry)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    command = " ".join(["maws-scale", *sys.argv[1:3]]) if sys.argv and "maws" in " ".join(sys.argv[:3]) else "python"
    return {"mlflow.user": user, "mlflow.source.name": command, "mlflow.source.type": "LOCAL"}


def provenance_tags(cfg: RunConfig) -> dict[str, str]:
    """Git commit, package versions, and the training set's manifest id and record count (where it has one)."""
    tags = {**_code_tags(), **source_tags()}
    if cfg.data.path and not cfg.data.synthetic:
        try:
            from maws_scale.data.shards import load_manifest

            manifest = load_manifest(cfg.data.path)
            tags.update({"data.manifest_id": manifest.fingerprint(), "data.records": str(manifest.records)})
        except Exception as err:  # a missing / bad manifest is the loader's error to report, not the tracker's
            tags["data.manifest_id"] = f"unreadable ({type(err).__name__})"
    return tags


def artifact_location(uri: str, output_dir: str | Path | None = None) -> str | None:
    """Where a new experiment keeps artifacts: beside a ``sqlite:///`` DB (``<db dir>/mlartifacts``), never the
    working directory's ``./mlruns``; a server decides for itself (None)."""
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
    elif output_dir is not None and "://" not in uri:
        folder = Path(output_dir)
    else:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return (folder / "mlartifacts").resolve().as_uri()


def store_artifact_uri(tracking_uri: str, artifact_uri: str) -> str:
    """Where a run's artifacts are in a store as it is now, moved or copied included.

    MLflow 3.17.2 records local artifact locations as absolute ``file:`` URIs (``create_experiment`` resolves them
    against the working directory, ``create_run`` appends ``<run id>/artifacts``), so a moved or copied sqlite store
    still names its old folder. A run whose recorded artifacts lie in an ``mlartifacts`` folder
    (``…/mlartifacts/<run id>/artifacts``, see :func:`artifact_location`) of a ``sqlite:///`` store
    is mapped to the ``mlartifacts`` folder beside the store's DB as it is now; anything else is returned as it is."""
    if not tracking_uri.startswith("sqlite:///") or not artifact_uri.startswith("file:"):
        return artifact_uri
    import urllib.parse
    import urllib.request

    parts = Path(urllib.request.url2pathname(urllib.parse.urlsplit(artifact_uri).path)).parts
    if "mlartifacts" not in parts:
        return artifact_uri
    tail = parts[len(parts) - parts[::-1].index("mlartifacts") :]
    if len(tail) < 2 or tail[1] != "artifacts":
        return artifact_uri
    folder = Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts"
    return folder.joinpath(*tail).as_uri()


def run_artifacts(tracking_uri: str, run_id: str):
    """The artifact repository of run ``run_id`` in the store as it is now (:func:`store_artifact_uri`): its
    ``list_artifacts()``, ``download_artifacts(path)`` and ``log_artifact(file, artifact_path)`` work in a moved or
    copied store (MLflow's own client methods follow the recorded, old path)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.tracking import MlflowClient

    recorded = MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.artifact_uri
    return get_artifact_repository(store_artifact_uri(tracking_uri, recorded), tracking_uri=tracking_uri)


def runs_link(uri: str, experiment_id: str | None, run_id: str | None = None) -> str:
    """How to open the training view: MLflow 3's UI starts in GenAI mode, so give the runs page directly."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}" if run_id else f"#/experiments/{experiment_id}/runs"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {uri}  then open http://127.0.0.1:5000/{page}"


class TrackingWarning(UserWarning):
    """The tracking server could not be reached; training goes on."""


class NullTracker:
    """The tracker of every rank but 0, and of runs with ``tracking.enabled=false``."""

    run_id: str | None = None

    def start(self, timeout: float = 30.0) -> str | None:
        """Create the run now; → its id."""
        return None

    def link(self) -> str | None:
        """The runs page of this run."""
        return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record run parameters."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record metrics at ``step``."""

    def log_tags(self, tags: Mapping[str, str]) -> None:
        """Set run tags (values measured at run time: they may change between attempts, params may not)."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a local file."""

    def finish(self, status: str = "FINISHED") -> None:
        """Close the run."""


def summary_metrics(stage: str, last: Mapping[str, float]) -> dict[str, float]:
    """A child run's last metric values under the names its parent shows: an evaluation's own ``eval/…`` names as
    they are, a training stage's ``train/loss`` → ``<stage>/loss_last``, ``perf/images_per_s`` →
    ``<stage>/images_per_s_last``."""
    if stage.startswith("eval"):
        return dict(last)
    return {f"{stage}/{key.rsplit('/', 1)[-1]}_last": value for key, value in last.items()}


def default_uri(output_dir: str | Path) -> str:
    """The embedded store of a run: ``sqlite:///<output_dir>/mlflow.db``."""
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → ``{"optim.lr": "0.001", ...}`` with values cut to MLflow's length limit."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            flat[name] = text[:MAX_PARAM_LENGTH]
    return flat


class MLflowTracker:
    """One MLflow run, written from a background thread (see the module docstring)."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        artifact_location: str | None = None,
        run_id_file: str | Path | None = None,
        flush_timeout: float = 30.0,
        retry_every: float = 20.0,
        max_buffer: int = 200_000,
        stall_warn: float = 30.0,
        summary_parent: tuple[str, str] | None = None,
        system_metrics_s: float = 0.0,
    ) -> None:
        try:
            import mlflow  # noqa: F401  (fail here, on the main thread, with a clear message)
        except ImportError:
            raise ConfigError(
                "tracking.enabled: MLflow is not installed (pip install 'maws-scale[track]'), or set "
                "tracking.enabled=false"
            ) from None
        self.uri = uri
        self.experiment = experiment
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.artifact_location = artifact_location
        self.run_id_file = Path(run_id_file) if run_id_file else None
        self.flush_timeout = flush_timeout
        self.retry_every = retry_every
        self.stall_warn = stall_warn
        self.summary_parent = summary_parent  # (parent run id, stage): where this run's params/last metrics also go
        self.system_metrics_s = system_metrics_s
        self._monitor = None
        self._last: dict[str, tuple[float, int]] = {}  # metric -> (last value, its step), for the parent's summary
        self._busy_since: float | None = None  # when the delivery in progress started (None: idle)
        self._remote = uri.startswith(("http://", "https://"))
        if self._remote:
            for name, value in HTTP_LIMITS.items():
                os.environ.setdefault(name, value)
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.dropped = 0
        self.failures = 0
        self._queue: queue.Queue = queue.Queue()
        self._pending: deque = deque(maxlen=max_buffer)
        self._healthy = True
        self._warned = False
        self._started = threading.Event()
        self._client = None
        self._thread = threading.Thread(target=self._work, name="mlflow-tracker", daemon=True)
        self._thread.start()

    # ----- main-thread API (never blocks on the server) -----------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        self._check_stalled()
        flat = flatten_params(params)
        self._queue.put(("params", flat))
        if self.summary_parent is not None:
            parent, stage = self.summary_parent
            self._queue.put(("parent_params", (parent, {f"{stage}.{k}": v for k, v in flat.items()})))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._check_stalled()
        stamp = int(time.time() * 1000)
        values = {k: float(v) for k, v in metrics.items() if v is not None}
        self._queue.put(("metrics", (values, step, stamp)))
        for key, value in values.items():
            if step >= self._last.get(key, (0.0, step))[1]:
                self._last[key] = (value, step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._check_stalled()
        self._queue.put(("artifact", (str(path), artifact_path)))

    def log_tags(self, tags: Mapping[str, str]) -> None:
        self._queue.put(("tags", {k: str(v)[:MAX_PARAM_LENGTH] for k, v in tags.items()}))

    def start(self, timeout: float = 180.0) -> str | None:
        """Create the run now and return its id: None when the store failed (at once) or did not answer within
        ``timeout`` seconds (a new sqlite store creates its tables first: ~20 s, more on a loaded machine)."""
        self._queue.put(("tags", {}))
        self._started.wait(timeout)
        return self.run_id

    def link(self) -> str | None:
        """The runs page of this run (after it was created), see :func:`runs_link`."""
        return runs_link(self.uri, self.experiment_id, self.run_id) if self.run_id else None

    def finish(self, status: str = "FINISHED") -> None:
        """Flush (up to ``flush_timeout`` seconds, 5 s if the server is down or hanging) and close the run. A finished
        run with a summary parent gives it its last metric values (:func:`summary_metrics`)."""
        if self.summary_parent is not None and status == "FINISHED" and self._last:
            parent, stage = self.summary_parent
            last = {k: v for k, (v, _) in self._last.items()}
            step = max(step for _, step in self._last.values())
            self._queue.put(("parent_metrics", (parent, summary_metrics(stage, last), step)))
        self._queue.put((_STOP, status))
        healthy = self._healthy and self._stalled_for() < self.stall_warn
        self._thread.join(self.flush_timeout if healthy else min(self.flush_timeout, 5.0))
        if self._thread.is_alive():
            left = self._queue.qsize() + len(self._pending)
            self._warn(f"gave up on {left} tracking records after the flush timeout; the run's metrics are incomplete")
        if self.dropped:
            self._warn(f"dropped {self.dropped} tracking records while the server was unreachable")

    def _stalled_for(self) -> float:
        since = self._busy_since
        return 0.0 if since is None or not self._remote else time.monotonic() - since

    def _check_stalled(self) -> None:
        """Warn (once, from the training thread) when a delivery has hung for ``stall_warn`` seconds."""
        stalled = self._stalled_for()
        if stalled >= self.stall_warn and not self._warned:
            self._warned = True
            self._warn(
                f"the tracking server has not answered for {stalled:.0f} s; training continues, records are buffered "
                "and retried"
            )

    # ----- background thread --------------------------------------------------------------------------------------
    def _warn(self, message: str) -> None:
        warnings.warn(f"MLflow ({self.uri}): {message}", TrackingWarning, stacklevel=3)
        log.warning("MLflow (%s): %s", self.uri, message)

    def _work(self) -> None:
        stopping: str | None = None
        next_try = 0.0
        while True:
            timeout = None if stopping is None and self._healthy else 0.2
            try:
                item = self._queue.get(timeout=timeout)
                if item[0] is _STOP:
                    stopping = item[1]
                else:
                    if len(self._pending) == self._pending.maxlen:
                        self.dropped += 1
                    self._pending.append(item)
                while True:  # take everything already queued, to batch it
                    item = self._queue.get_nowait()
                    if item[0] is _STOP:
                        stopping = item[1]
                        continue
                    if len(self._pending) == self._pending.maxlen:
                        self.dropped += 1
                    self._pending.append(item)
            except queue.Empty:
                pass
            if time.monotonic() < next_try:
                continue
            try:
                self._busy_since = time.monotonic()
                self._deliver()
                if stopping is not None:
                    self._stop_monitor()
                    self._client.set_terminated(self.run_id, status=stopping)
                    return
                if not self._healthy:
                    log.warning("MLflow (%s): reachable again; buffered records delivered", self.uri)
                self._healthy = True
                self._busy_since = None
            except Exception as err:  # any failure of the server or the network: buffer and keep going
                self._started.set()  # start() stops waiting: the run does not exist (yet)
                self.failures += 1
                self._healthy = False
                next_try = time.monotonic() + self.retry_every
                self._busy_since = None
                if not self._warned:
                    self._warned = True
                    self._warn(
                        f"tracking failed ({type(err).__name__}: {str(err)[:300]}); training continues, "
                        f"records are buffered and retried every {self.retry_every:.0f} s"
                    )

    def _probe(self) -> None:
        """Fail fast on an unreachable server (MLflow's own client retries for minutes before it gives up)."""
        if not self.uri.startswith(("http://", "https://")):
            return
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.uri.rstrip("/") + "/health", timeout=5):
                pass
        except urllib.error.HTTPError:
            pass  # the server answers (a proxy may not route /health): let MLflow's calls decide
        except OSError as err:
            raise ConnectionError(f"cannot reach {self.uri}: {err}") from None

    def _ensure_run(self) -> None:
        if not self._healthy or self.run_id is None:
            self._probe()
        if self.run_id is not None:
            return
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=self.uri)
        experiment = self._client.get_experiment_by_name(self.experiment)
        if experiment is None:
            experiment_id = self._client.create_experiment(self.experiment, artifact_location=self.artifact_location)
        else:
            experiment_id = experiment.experiment_id
        self.experiment_id = experiment_id
        previous = self._previous_run_id()
        if previous is not None:
            self._client.update_run(previous, status="RUNNING")
            self.run_id = previous
        else:
            run = self._client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
            self.run_id = run.info.run_id
            if self.run_id_file is not None:
                self.run_id_file.parent.mkdir(parents=True, exist_ok=True)
                self.run_id_file.write_text(self.run_id)
        self._start_monitor(resume=previous is not None)
        self._started.set()

    def _start_monitor(self, resume: bool) -> None:
        """MLflow's own system metrics (``system/cpu_utilization_percentage``, ``system/system_memory_usage_megabytes``,
        ``system/gpu_*`` with pynvml) every ``system_metrics_s`` seconds; skipped without psutil."""
        if self.system_metrics_s <= 0:
            return
        try:
            import psutil  # noqa: F401  (MLflow's CPU/memory monitor needs it)
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError:
            log.info("MLflow: psutil is not installed; no system/ metrics")
            return
        self._monitor = SystemMetricsMonitor(
            self.run_id, sampling_interval=self.system_metrics_s, resume_logging=resume, tracking_uri=self.uri
        )
        self._monitor.start()

    def _stop_monitor(self) -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None

    def _previous_run_id(self) -> str | None:
        """The run of an interrupted attempt of this stage (resumed training continues the same MLflow run)."""
        if self.run_id_file is None or not self.run_id_file.exists():
            return None
        run_id = self.run_id_file.read_text().strip()
        try:
            self._client.get_run(run_id)
        except Exception:
            return None
        return run_id

    def _deliver(self) -> None:
        from mlflow.entities import Metric, RunTag

        self._ensure_run()
        while self._pending:
            kind, payload = self._pending[0]
            if kind == "params":
                self._log_params(self.run_id, payload)
                self._pending.popleft()
            elif kind == "parent_params":
                self._log_params(*payload)
                self._pending.popleft()
            elif kind == "parent_metrics":
                parent, values, step = payload
                stamp = int(time.time() * 1000)
                self._client.log_batch(parent, metrics=[Metric(k, v, stamp, step) for k, v in values.items()])
                self._pending.popleft()
            elif kind == "tags":
                if payload:
                    self._client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in payload.items()])
                self._pending.popleft()
            elif kind == "metrics":
                batch: list = []
                taken = 0
                for kind_i, payload_i in self._pending:
                    if kind_i != "metrics" or (taken and len(batch) + len(payload_i[0]) > MAX_METRICS_PER_BATCH):
                        break
                    values, step, stamp = payload_i
                    batch.extend(Metric(k, v, stamp, step) for k, v in values.items())
                    taken += 1
                self._client.log_batch(self.run_id, metrics=batch)
                for _ in range(taken):
                    self._pending.popleft()
            else:
                path, artifact_path = payload
                if Path(path).exists():
                    run_artifacts(self.uri, self.run_id).log_artifact(path, artifact_path)
                else:
                    log.warning("MLflow: artifact %s vanished before upload; skipped", path)
                self._pending.popleft()

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        """Log params in batches; a value MLflow refuses to change (a re-run) is warned about, never retried forever
        (that would hold back every metric queued behind it)."""
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        items = list(params.items())
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            chunk = [Param(k, v) for k, v in items[i : i + MAX_PARAMS_PER_BATCH]]
            try:
                self._client.log_batch(run_id, params=chunk)
            except MlflowException as err:
                if err.error_code != "INVALID_PARAMETER_VALUE":
                    raise
                self._warn(f"run {run_id} keeps its earlier params ({str(err)[:300]})")


def save_loss_curve(history: Mapping[str, list[tuple[int, float]]], path: str | Path, title: str = "") -> Path:
    """Plot each series of ``history`` (name -> [(step, value)]) against the step into a PNG (Agg, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for name, points in history.items():
        if not points:
            continue
        steps, values = zip(*points)
        window = max(1, len(values) // 20)
        if window > 1:  # raw values faint, a moving average on top
            line = axes.plot(steps, values, linewidth=0.8, alpha=0.35)[0]
            smooth = [
                sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1))
                for i in range(len(values))
            ]
            axes.plot(steps, smooth, color=line.get_color(), label=f"{name} (mean of {window})", linewidth=1.6)
        else:
            axes.plot(steps, values, label=name, linewidth=1.2)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def make_tracker(
    cfg: RunConfig, stage_dir: str | Path, is_main: bool, stage: str | None = None
) -> MLflowTracker | NullTracker:
    """The run's tracker: MLflow on rank 0 when ``tracking.enabled``, else a no-op. ``stage`` names the run (default
    ``cfg.stage``; ``"pipeline"`` for a pipeline's parent, ``"eval"``); it nests under :func:`current_parent`."""
    if not is_main or not cfg.tracking.enabled:
        return NullTracker()
    out = Path(cfg.output_dir)
    uri = cfg.tracking.uri or default_uri(out)
    stage = stage or cfg.stage
    base = cfg.tracking.run_name or out.name
    tags = {"stage": stage, "model": cfg.model_label, **provenance_tags(cfg), **cfg.tracking.tags}
    parent = current_parent()
    if parent:
        tags[PARENT_TAG] = parent
    # a pipeline's parent (one child per stage) gets its children's params and last metrics, so collapsed rows
    # compare; a sweep's parent does not (its points are runs of the same stage with different params)
    summary_parent = (_parent[-1], stage) if _parent and stage != "pipeline" else None
    return MLflowTracker(
        uri=uri,
        experiment=cfg.tracking.experiment,
        run_name=f"{base}-{stage}" if stage != "pipeline" else base,
        tags=tags,
        artifact_location=artifact_location(uri, out),
        run_id_file=Path(stage_dir) / RUN_ID_FILE,
        summary_parent=summary_parent,
        system_metrics_s=0.0 if stage == "pipeline" else cfg.tracking.system_metrics_s,  # its stages sample
    )
