"""`maws-scale sweep report`: final metrics from the sweep's MLflow store → tables, power-law fits and plots.

Each sweep point may log several MLflow runs (one per pipeline stage, tagged ``stage``); a point's row holds every
final metric as ``<stage>/<metric>`` (``eval/*`` metrics keep their name), its coordinates, and derived columns:
``params`` (encoder parameters, counted on the meta device), ``compute`` (training FLOPs of the stages that ran:
steps × global batch × per-sample step FLOPs from ``maws_scale.models.flops``), ``samples`` (steps × global batch
of those stages) and ``compute_total`` (``compute`` plus, for a WSP point started from another point's MAE
weights, that MAE run's FLOPs: the arm's whole cost). Rows are grouped by the coordinates other than the seed:
mean ± std (ddof 1) and count. Fits (``report.fits``, kinds in ``maws_scale.experiments.sweep.FitSpec``): a plain power
law, ``E + A·x^-α`` with bootstrap CIs, ``E + A/N^α + B/D^β``, and the IsoFLOP compute-optimal frontier
(``maws_scale.experiments.scaling``). ``report.gain`` adds the MAWS plots: the gain of one arm over another vs a budget,
one line per size, and the arms' curves on shared axes (``maws_scale.experiments.report_gain``).
Outputs (``--out``, default ``<output_dir>/report``): ``runs.csv``, ``summary.csv``, ``summary.md``, ``fits.json``
and PNGs, also logged as artifacts of an MLflow run ``<name>-report``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maws_scale.config import RunConfig
from maws_scale.experiments.plotting import log_axes, new_figure, safe_name
from maws_scale.experiments.powerlaw import PowerLaw, fit_power_law
from maws_scale.experiments.sweep import HASH_TAG, Sweep

STAGE_TAG = "stage"


@dataclass
class Report:
    runs: pd.DataFrame
    summary: pd.DataFrame
    fits: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


# ----- gathering --------------------------------------------------------------------------------------------------
def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _mlflow_runs(sweep: Sweep) -> list[Any]:
    client = _client(sweep.tracking_uri)
    experiment = client.get_experiment_by_name(sweep.spec.name)
    if experiment is None:
        return []
    return client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.sweep = '{sweep.spec.name}'", max_results=50_000
    )


def metric_column(stage: str | None, key: str) -> str:
    """``<stage>/<metric>``: a training run's ``train/loss`` is ``wsp/loss``, ``perf/…`` is ``wsp/perf/…``."""
    key = key.removeprefix("train/")
    if stage is None or key.startswith(("eval/", f"{stage}/")):
        return key
    return f"{stage}/{key}"


def encoder_params(cfg: RunConfig) -> int:
    """Parameters of the encoder (no decoder, no head), counted on the meta device."""
    from maws_scale.models import build_encoder

    model = build_encoder(cfg.spec, device="meta", img_size=cfg.img_size, pool=cfg.model.pool)
    return sum(p.numel() for p in model.parameters())


def training_samples(cfg: RunConfig, stages: list[str]) -> float:
    """Samples the ``stages`` trained on: train.steps × global_batch summed (NaN if steps unset)."""
    total = 0.0
    for stage in stages:
        sc = cfg.for_stage(stage)
        if sc.train.steps is None:
            return math.nan
        total += float(sc.train.steps * sc.train.global_batch)
    return total


def training_flops(cfg: RunConfig, stages: list[str]) -> float:
    """Training FLOPs of ``stages``: train.steps × global_batch × step FLOPs per sample (NaN if steps unset)."""
    from maws_scale.models.flops import step_flops

    total = 0.0
    for stage in stages:
        sc = cfg.for_stage(stage)
        if sc.train.steps is None:
            return math.nan
        per_sample = step_flops(
            sc.spec,
            stage,
            img_size=sc.img_size,
            mask_ratio=sc.mae.mask_ratio if stage == "mae" else None,
            num_classes=sc.wsp.num_classes or 0 if stage == "wsp" else None,
            pool=sc.model.pool if stage == "wsp" else None,
        )
        total += float(per_sample) * sc.train.steps * sc.train.global_batch
    return total


def init_flops(cfg: RunConfig, sweep: Sweep) -> float:
    """MAE FLOPs behind a WSP point's init: those of the sweep point whose MAE weights ``wsp.init_from`` names (0
    for a random init or a pipeline, whose MAE stage is in its own ``compute``; NaN for weights from elsewhere)."""
    if cfg.stage != "wsp" or cfg.wsp.init != "mae" or not cfg.wsp.init_from:
        return 0.0
    wanted = Path(cfg.wsp.init_from).resolve()
    for point in sweep.points:
        if point.command == "train" and point.config.stage == "mae" and point.checkpoint().resolve() == wanted:
            return training_flops(point.config, ["mae"])
    return math.nan


def _current_runs(sweep: Sweep, runs: list[Any]) -> tuple[list[Any], set[str]]:
    """The finished runs to report, and the points whose results are stale. A point's runs tagged with its current
    config hash are used; where it has none, its runs of earlier configs are (and the point is stale). Runs from
    before the tag existed count as current when the point's done marker holds its current hash."""
    points = {p.run_id: p for p in sweep.points}
    by_point: dict[str, list[Any]] = {}
    for run in runs:
        run_id = run.data.tags.get("sweep_run")
        if run_id in points and run.info.status == "FINISHED":
            by_point.setdefault(run_id, []).append(run)
    chosen, stale = [], set()
    for run_id, found in by_point.items():
        point = points[run_id]
        untagged_current = point.status() == "done"
        current = [
            r
            for r in found
            if r.data.tags.get(HASH_TAG, point.config_hash if untagged_current else None) == point.config_hash
        ]
        if not current:
            stale.add(run_id)
        chosen += current or found
    return chosen, stale


def gather(sweep: Sweep, runs: list[Any] | None = None) -> pd.DataFrame:
    """One row per finished sweep point found in MLflow: coordinates, final metrics, params, compute (from the
    point's current config), and ``stale``: True where the results come from an earlier config of the point."""
    runs = _mlflow_runs(sweep) if runs is None else runs
    runs, stale = _current_runs(sweep, runs)
    points = {p.run_id: p for p in sweep.points}
    coords = sweep.coordinates()
    rows: dict[str, dict[str, Any]] = {}
    stages: dict[str, list[str]] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):  # a re-run's newer values win
        tags = run.data.tags
        run_id = tags.get("sweep_run")
        row = rows.setdefault(run_id, {"run": run_id, **{c: tags.get(c) for c in coords}, "stale": run_id in stale})
        stage = tags.get(STAGE_TAG)
        if stage in ("mae", "wsp"):
            stages.setdefault(run_id, []).append(stage)
        for key, value in run.data.metrics.items():
            row[metric_column(stage, key)] = value
        row.setdefault("_mlflow", {})[stage or "run"] = run.info.run_id
    for run_id, row in rows.items():
        cfg = points[run_id].config
        row["params"] = float(encoder_params(cfg))
        ran = sorted(set(stages.get(run_id, [])), key=["mae", "wsp"].index)
        row["compute"] = training_flops(cfg, ran)
        row["samples"] = training_samples(cfg, ran)
        row["compute_total"] = row["compute"] + init_flops(cfg, sweep)
    frame = pd.DataFrame(list(rows.values()))
    if not len(frame):
        return frame
    order = {run_id: i for i, run_id in enumerate(points)}  # the sweep's own order (numbers not sorted as text)
    return frame.sort_values("run", key=lambda runs: runs.map(order)).reset_index(drop=True)


# ----- tables -----------------------------------------------------------------------------------------------------
def group_keys(sweep: Sweep) -> list[str]:
    """The coordinates a group shares: ``report.group_by``, or every coordinate but the seed."""
    spec = sweep.spec.report
    if spec.group_by is not None:
        return list(spec.group_by)
    return [c for c in sweep.coordinates() if c != spec.seed_key]


def summarize(runs: pd.DataFrame, keys: list[str], metrics: list[str]) -> pd.DataFrame:
    """Mean, std (ddof 1; 0 for a single seed) and count of each metric per group of ``keys``."""
    metrics = [m for m in metrics if m in runs.columns]
    if not keys:
        runs = runs.assign(_all="all")
        keys = ["_all"]
    grouped = runs.groupby(keys, sort=False, dropna=False)
    out = grouped.size().rename("n").to_frame()
    if "stale" in runs.columns:
        out["stale"] = grouped["stale"].sum().astype(int)
    for m in metrics:
        out[f"{m} mean"] = grouped[m].mean()
        out[f"{m} std"] = grouped[m].std(ddof=1).fillna(0.0)
    return out.reset_index()


def markdown(summary: pd.DataFrame, keys: list[str], metrics: list[str], digits: int = 2) -> str:
    """A markdown table with ``mean ± std`` cells."""
    metrics = [m for m in metrics if f"{m} mean" in summary.columns]
    flag = "stale" in summary.columns and bool(summary["stale"].sum())
    head = [*keys, "n", *(["stale"] if flag else []), *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in summary.iterrows():
        cells = [str(row[k]) for k in keys] + [str(int(row["n"]))]
        if flag:
            cells.append(f"⚠ {int(row['stale'])}" if row["stale"] else "")
        for m in metrics:
            mean, std = row[f"{m} mean"], row[f"{m} std"]
            cells.append("–" if pd.isna(mean) else _fmt(mean, std, int(row["n"]), digits))
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "\n⚠ stale: runs whose results come from an earlier config of their point (re-run the sweep to refresh).\n"
        if flag
        else ""
    )
    return "\n".join(lines) + "\n" + note


def _fmt(mean: float, std: float, n: int, digits: int) -> str:
    """``mean ± std``; a single run has no spread: its value alone."""
    if abs(mean) >= 1e5 or (0 < abs(mean) < 1e-3):
        return f"{mean:.3g}" if n < 2 else f"{mean:.3g} ± {std:.2g}"
    return f"{mean:.{digits}f}" if n < 2 else f"{mean:.{digits}f} ± {std:.{digits}f}"


# ----- fits and plots ---------------------------------------------------------------------------------------------
def fit_and_plot(runs: pd.DataFrame, x: str, y: str, group_by: list[str], out: Path) -> tuple[list[dict], Path]:
    """Fit ``y = a x^b`` (per group of ``group_by``) on the runs; plot points and fits in log-log."""
    missing = [c for c in (x, y, *group_by) if c not in runs.columns]
    if missing:
        raise ValueError(f"fit {y} vs {x}: no column '{missing[0]}' (known: {', '.join(map(str, runs.columns))})")
    figure = new_figure()
    axes = figure.add_subplot(1, 1, 1)
    results = []
    groups = runs.groupby(group_by, sort=False) if group_by else [("all", runs)]
    for name, part in groups:
        label = name if isinstance(name, str) else ", ".join(map(str, np.atleast_1d(name)))
        law: PowerLaw = fit_power_law(part[x].to_numpy(float), part[y].to_numpy(float))
        results.append({"x": x, "y": y, "kind": "power", "group": label, **law.to_json(), "text": law.describe(x, y)})
        axes.scatter(part[x], part[y], s=18, alpha=0.7, label=f"{label}: b={law.b:+.3f}")
        grid = np.geomspace(part[x].min(), part[x].max(), 50)
        axes.plot(grid, law(grid), linewidth=1.2)
    log_axes(axes)  # labelled ticks also when the data spans less than a decade
    axes.set_xlabel(x)
    axes.set_ylabel(y)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = out / f"fit_{safe_name(y)}_vs_{safe_name(x)}.png"
    figure.savefig(path)
    return results, path


def bar_plot(summary: pd.DataFrame, keys: list[str], metric: str, out: Path) -> Path:
    """Mean ± std of ``metric`` per group."""
    figure = new_figure(max(5.0, 0.9 * len(summary) + 2), 3.8)
    axes = figure.add_subplot(1, 1, 1)
    labels = [", ".join(str(r[k]) for k in keys) for _, r in summary.iterrows()] if keys else ["all"]
    means, stds = summary[f"{metric} mean"].to_numpy(float), summary[f"{metric} std"].to_numpy(float)
    axes.bar(range(len(means)), means, yerr=stds, capsize=4, color="#4c72b0", alpha=0.85)
    axes.set_xticks(range(len(means)), labels, rotation=25, ha="right", fontsize=8)
    axes.set_ylabel(metric)
    low = float(np.nanmin(means - stds)) if len(means) else 0.0
    high = float(np.nanmax(means + stds)) if len(means) else 1.0
    axes.set_ylim(max(0.0, low - 0.15 * (high - low + 1e-9)), high + 0.1 * (high - low + 1e-9))
    axes.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    path = out / f"bar_{safe_name(metric)}.png"
    figure.savefig(path)
    return path


def histories(sweep: Sweep, runs: pd.DataFrame, metric: str) -> list[pd.Series | None]:
    """Per row, the step → value history of ``<stage>/<metric>`` (None where that stage did not run)."""
    stage, _, key = metric.partition("/")
    client = _client(sweep.tracking_uri)
    out: list[pd.Series | None] = []
    for ids in runs["_mlflow"]:
        history = []
        if stage in ids:  # training metrics are logged as train/<key> (older runs: <key>)
            history = client.get_metric_history(ids[stage], f"train/{key}")
            history = history or client.get_metric_history(ids[stage], key)
        out.append(pd.Series({m.step: m.value for m in history}).sort_index() if history else None)
    return out


def curve_plot(
    runs: pd.DataFrame, series: list[pd.Series | None], keys: list[str], metric: str, out: Path, smooth: int = 1
) -> Path:
    """History of ``<stage>/<metric>`` (rolling mean over ``smooth`` steps) averaged over seeds per group, ± std."""
    stage, _, key = metric.partition("/")
    figure = new_figure(6.5, 4.0)
    axes = figure.add_subplot(1, 1, 1)
    runs = runs.assign(_series=series)
    groups = runs.groupby(keys, sort=False, dropna=False) if keys else [("all", runs)]
    for name, part in groups:
        found = [s.rolling(smooth, min_periods=1).mean() for s in part["_series"] if s is not None]
        if not found:
            continue
        table = pd.concat(found, axis=1).sort_index().dropna()
        steps, mean, std = table.index.to_numpy(), table.mean(axis=1).to_numpy(), table.std(axis=1, ddof=1)
        label = name if isinstance(name, str) else ", ".join(map(str, np.atleast_1d(name)))
        axes.plot(steps, mean, linewidth=1.3, label=f"{label} (n={table.shape[1]})")
        if table.shape[1] > 1:
            axes.fill_between(steps, mean - std.to_numpy(), mean + std.to_numpy(), alpha=0.2)
    axes.set_xlabel(f"{stage} step")
    axes.set_ylabel(key + (f" (rolling mean of {smooth})" if smooth > 1 else ""))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = out / f"curve_{safe_name(metric)}.png"
    figure.savefig(path)
    return path


# ----- the report -------------------------------------------------------------------------------------------------
def build_report(sweep: Sweep, out: Path | None = None, runs: list[Any] | None = None) -> Report:
    """Gather, tabulate, fit and plot; write everything under ``out``."""
    spec = sweep.spec.report
    out = out or sweep.output_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    table = gather(sweep, runs)
    if table.empty:
        raise ValueError(f"sweep {sweep.spec.name}: no finished runs in {sweep.tracking_uri}")
    keys = group_keys(sweep)
    curves = {metric: histories(sweep, table, metric) for metric in spec.curves}
    for metric, series in curves.items():  # the last steps' mean: a less noisy final value than the last batch
        if spec.tail > 0:
            table[f"{metric} last{spec.tail}"] = [
                s.iloc[-spec.tail :].mean() if s is not None else np.nan for s in series
            ]
    metric_cols = [c for c in table.columns if c not in ("run", "_mlflow", "stale", *sweep.coordinates())]
    metrics = spec.metrics or metric_cols
    derived = ("params", "compute", "samples", "compute_total")
    summary = summarize(table, keys, [*metrics, *(c for c in derived if c not in metrics)])
    report = Report(table, summary)
    table.drop(columns=["_mlflow"]).to_csv(out / "runs.csv", index=False, float_format="%.6g")
    summary.to_csv(out / "summary.csv", index=False, float_format="%.6g")
    (out / "summary.md").write_text(markdown(summary, keys, metrics))
    report.files += [out / "runs.csv", out / "summary.csv", out / "summary.md"]
    for fit in spec.fits:
        if fit.kind == "power":
            results, path = fit_and_plot(table, fit.x, fit.y, fit.group_by, out)
        else:
            from maws_scale.experiments.report_scaling import scaling_fit_and_plot

            results, path = scaling_fit_and_plot(table, fit, out)
        report.fits += results
        report.files.append(path)
    if spec.fits:
        (out / "fits.json").write_text(json.dumps(report.fits, indent=1))
        report.files.append(out / "fits.json")
    for metric in spec.bars:
        if f"{metric} mean" in summary.columns:
            report.files.append(bar_plot(summary, keys, metric, out))
    for metric, series in curves.items():
        report.files.append(curve_plot(table, series, keys, metric, out, spec.smooth))
    if spec.gain is not None:
        from maws_scale.experiments.report_gain import gain_report

        curve = spec.gain.curve
        series = None if curve is None else curves.get(curve) or histories(sweep, table, curve)
        report.files += gain_report(table, series, spec.gain, out, spec.smooth)
    return report


def log_report(sweep: Sweep, report: Report) -> str:
    """Log the report's files as artifacts of the MLflow run ``<name>-report`` (reused on re-runs)."""
    from maws_scale.track.mlflow import artifact_location, run_artifacts

    client = _client(sweep.tracking_uri)
    experiment = client.get_experiment_by_name(sweep.spec.name)
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(sweep.spec.name, artifact_location=artifact_location(sweep.tracking_uri))
    )
    found = client.search_runs([experiment_id], filter_string=f"tags.sweep_report = '{sweep.spec.name}'")
    parent = client.search_runs([experiment_id], filter_string=f"tags.sweep_parent = '{sweep.spec.name}'")
    tags = {"sweep_report": sweep.spec.name}
    if parent:  # the report nests under the sweep's own run
        tags["mlflow.parentRunId"] = parent[0].info.run_id
    if found:
        run_id = found[0].info.run_id
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
    else:
        run_id = client.create_run(experiment_id, run_name=f"{sweep.spec.name}-report", tags=tags).info.run_id
    artifacts = run_artifacts(sweep.tracking_uri, run_id)  # the store's own folder, also when it was moved
    for path in report.files:
        artifacts.log_artifact(str(path), "report")
    for fit in report.fits:
        name = safe_name(f"fit/{fit['y']}_vs_{fit['x']}/{fit['group']}")
        for key, metric in (("b", "exponent"), ("alpha", "alpha"), ("beta", "beta"), ("E", "E"), ("r2", "r2")):
            if isinstance(fit.get(key), (int, float)):
                client.log_metric(run_id, f"{name}/{metric}", float(fit[key]))
    client.set_terminated(run_id)
    return run_id
