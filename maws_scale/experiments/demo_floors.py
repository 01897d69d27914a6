"""The demo beside its floors, from one command: untrained (random-init) features, WSP only, and MAE → WSP.

    maws-scale pipeline configs/demo.yaml --floors [KEY=VALUE ...] [--baseline-dir DIR]

Runs what is missing, each arm with the same evaluation and into the demo's MLflow store: the pipeline itself
(finished stages are not run again), the WSP-only baseline (the same config with ``wsp.init=random`` under
``--baseline-dir``, default ``<output_dir>-random``: the README's baseline command) and the untrained encoder (seed
``seed``, in ``<output_dir>/eval-random/``). Then prints one table and writes it to ``<output_dir>/floors.json`` and
``floors.md``. Overrides apply to every arm.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from maws_scale.config import ConfigError, RunConfig, load_config

ARMS = (
    ("untrained", "untrained encoder (random init)"),
    ("wsp_only", "WSP only (no MAE)"),
    ("maws", "MAE → WSP (the demo)"),
)
METRICS = (
    ("eval/linear_top1", "linear probe"),
    ("eval/knn_top1", "kNN"),
    ("eval/fewshot_1_top1", "1-shot"),
    ("eval/fewshot_5_top1", "5-shot"),
    ("eval/fewshot_10_top1", "10-shot"),
)


def arm_configs(config: str, overrides: list[str], baseline_dir: str | None = None) -> dict[str, RunConfig]:
    """The config of each arm: the demo's, and its WSP-only twin (``wsp.init=random``) in ``baseline_dir`` (default
    ``<output_dir>-random``), tracked in the demo's MLflow store: the README's baseline command. ConfigError when
    the config does not evaluate."""
    from maws_scale.track.mlflow import default_uri

    cfg = load_config(config, overrides)
    if not (cfg.eval.enabled and cfg.data.eval_path):
        key = "eval.enabled" if not cfg.eval.enabled else "data.eval_path"
        raise ConfigError(f"{key}: --floors compares evaluations; it needs eval.enabled=true and a data.eval_path")
    baseline_dir = baseline_dir or f"{str(cfg.output_dir).rstrip('/')}-random"
    uri = cfg.tracking.uri or default_uri(cfg.output_dir)
    twin = [f"output_dir={baseline_dir}", f"tracking.uri={uri}"]
    if cfg.tracking.run_name:  # its own parent run in the shared store (the default name is the folder's)
        twin.append(f"tracking.run_name={cfg.tracking.run_name}-wsp-only")
    baseline = load_config(config, [*overrides, "wsp.init=random", *twin])
    return {"untrained": cfg, "wsp_only": baseline, "maws": cfg}


class MissingArm(Exception):
    """An arm has no readable evaluation (e.g. ``eval.enabled=false`` or no ``data.eval_path``)."""


def metrics_file(arm: str, cfg: RunConfig) -> Path:
    return Path(cfg.output_dir) / ("eval-random" if arm == "untrained" else "eval") / "metrics.json"


def run_missing(configs: dict[str, RunConfig]) -> None:
    """Train and evaluate the arms whose metrics are missing (the pipeline skips finished stages)."""
    from maws_scale.train.pipeline import evaluate_untrained, run_pipeline

    for arm in ("maws", "wsp_only"):
        if not metrics_file(arm, configs[arm]).is_file():
            run_pipeline(configs[arm])
    if not metrics_file("untrained", configs["untrained"]).is_file():
        evaluate_untrained(configs["untrained"])


def collect(configs: dict[str, RunConfig]) -> dict[str, dict[str, Any]]:
    """Each arm's evaluation metrics and where they came from; MissingArm naming the file when one is missing."""
    rows = {}
    for arm, _ in ARMS:
        path = metrics_file(arm, configs[arm])
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise MissingArm(f"{path}: no evaluation of the {arm} arm ({err.__class__.__name__})") from None
        rows[arm] = {"metrics": metrics, "source": str(path)}
    return rows


def markdown(rows: dict[str, dict[str, Any]]) -> str:
    """The table as markdown (accuracies in %, frozen features on the clean test images)."""
    head = "| arm | " + " | ".join(label for _, label in METRICS) + " |"
    lines = [head, "|---|" + "---:|" * len(METRICS)]
    for arm, label in ARMS:
        values = [_pct(rows[arm]["metrics"].get(key)) for key, _ in METRICS]
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def show(rows: dict[str, dict[str, Any]], console: Console) -> None:
    table = Table(title="the demo beside its floors (frozen features, clean test images, top-1 %)")
    table.add_column("arm", no_wrap=True)
    for _, label in METRICS:
        table.add_column(label, justify="right")
    for arm, label in ARMS:
        table.add_row(label, *(_pct(rows[arm]["metrics"].get(key)) for key, _ in METRICS))
    console.print(table)


def run_floors(config: str | None, overrides: list[str], baseline_dir: str | None = None) -> dict[str, Any]:
    """Train and evaluate the missing arms, print the table, write ``floors.json`` / ``floors.md`` beside the demo's
    run; → the rows. ConfigError (exit 2) for a bad config, MissingArm when an arm ends without an evaluation."""
    configs = arm_configs(config, overrides, baseline_dir)
    run_missing(configs)
    rows = collect(configs)
    out = Path(configs["maws"].output_dir)
    _write(out / "floors.json", json.dumps(rows, indent=1, sort_keys=True) + "\n")
    _write(out / "floors.md", markdown(rows))
    show(rows, Console())
    Console(stderr=True, highlight=False).print(
        f"the demo beside its floors: {out / 'floors.md'}, {out / 'floors.json'}"
    )
    return rows
