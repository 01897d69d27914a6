"""One stage directory holds one run: a re-run with the same config resumes it, another config is refused.

``<output_dir>/<stage>/config.yaml`` records the config a stage directory was trained with. Before a stage starts
(``maws-scale train``) or is skipped as finished (``maws-scale pipeline``), the new config is compared with it on the
keys that change what is trained; run mechanics (logging, tracking, evaluation, data workers, checkpoint cadence, the
world size of an elastic resume, the attention / kernel implementation) may differ. A difference is refused with the
keys named, so finished weights, checkpoints, metrics and the MLflow run of one config are never mixed with another's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from maws_scale.config import ConfigError, RunConfig

RECORD = "config.yaml"
# keys that may change between attempts of one run (dotted; a key or any key under it)
MECHANICS = (
    "stages",
    "output_dir",
    "tracking",
    "eval",
    "checkpoint.resume",
    "checkpoint.every",
    "checkpoint.keep_last",
    "data.num_workers",
    "data.verify_checksums",
    "data.eval_path",
    "train.log_every",
    "train.micro_batch",
    "train.grad_accum",
    "parallel.world_size",
    "parallel.backend",
    "parallel.activation_checkpointing",
    "model.attention",
    "model.kernels",
)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key != "tags":
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _defining(flat: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flat.items() if not any(k == m or k.startswith(f"{m}.") for m in MECHANICS)}


def fingerprint(cfg: RunConfig) -> dict[str, Any]:
    """The flat keys of ``cfg`` that define what a stage trains (everything but :data:`MECHANICS`)."""
    return _defining(_flat(cfg.model_dump(mode="json")))


def config_hash(cfg: RunConfig) -> str:
    """A short hash of :func:`fingerprint`: equal for attempts that may resume one another."""
    return hashlib.sha256(json.dumps(fingerprint(cfg), sort_keys=True).encode()).hexdigest()[:16]


def recorded(stage_dir: str | Path) -> dict[str, Any] | None:
    """The defining keys of the config a stage directory was trained with (None: no record)."""
    path = Path(stage_dir) / RECORD
    if not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: the recorded config is not valid YAML ({err}); move the folder away") from None
    return _defining(_flat(raw))


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for each defining key that differs (keys absent from the record are new defaults)."""
    return [f"{k}: {json.dumps(old[k])} -> {json.dumps(new.get(k))}" for k in sorted(old) if old[k] != new.get(k)]


def check_stage_dir(cfg: RunConfig, stage_dir: str | Path, has_results: bool) -> bool:
    """Whether ``stage_dir`` already holds this config's run; raise ConfigError when it holds another config's.

    ``has_results``: the directory holds checkpoints or consolidated weights. Such a directory without a record
    (written by an older version) is refused too, as nothing says which config made it.
    """
    old = recorded(stage_dir)
    if old is None:
        if has_results:
            raise ConfigError(
                f"output_dir: {stage_dir} holds checkpoints or weights but no {RECORD} saying which config made them; "
                "choose another output_dir (or move that folder away)"
            )
        return False
    diff = differences(old, fingerprint(cfg))
    if diff:
        shown = "; ".join(diff[:8]) + (f"; … ({len(diff)} keys in all)" if len(diff) > 8 else "")
        raise ConfigError(
            f"output_dir: {stage_dir} holds a run of another config ({shown}). Re-running there would mix the two: "
            f"give this config its own output_dir=… (or --output-dir), or move {stage_dir} away"
        )
    return True


def trim_metrics(path: str | Path, step: int) -> None:
    """Keep the records of ``metrics.jsonl`` up to ``step`` (where this attempt starts); drop the rest."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a crash
    path.write_text("".join(kept))
