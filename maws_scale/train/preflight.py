"""Checks made before the first training step, so a run never trains for hours and then fails on its inputs.

``preflight(cfgs, world_size)`` raises :class:`~maws_scale.config.ConfigError` naming the key when a stage of the
run could not finish: a ``parallel.world_size`` the launcher did not make, ``model.kernels=triton`` where Triton
cannot run, ``parallel.fp8`` where FP8 cannot run (or torchao is missing), an output or checkpoint directory that
cannot be written, a data set, evaluation set or WSP vocabulary that is missing or malformed, a text tower that
cannot read the data set's tokenizer.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from maws_scale.config import ConfigError, RunConfig


def preflight(
    cfgs: Sequence[RunConfig],
    world_size: int,
    evaluate: RunConfig | None = None,
    data: bool = True,
    device: torch.device | None = None,
) -> None:
    """Check every stage config in ``cfgs`` (and the evaluation config ``evaluate``) before anything trains;
    ``data=False`` skips the data checks (a trainer given its own loader)."""
    for cfg in cfgs:
        check_world(cfg, world_size)
        check_kernels(cfg, device)
        check_fp8(cfg, device)
        check_writable("output_dir", Path(cfg.output_dir))
        if cfg.checkpoint.dir:
            check_writable("checkpoint.dir", Path(cfg.checkpoint.dir))
        if data and not cfg.data.synthetic:
            check_data(cfg, "data.path", cfg.data.path)
            if cfg.stage == "wsp":
                check_vocab(cfg)
            check_text_tower(cfg)
    if evaluate is not None and evaluate.eval.enabled and evaluate.data.eval_path and not evaluate.data.synthetic:
        check_data(evaluate, "data.eval_path", evaluate.data.eval_path)
        if evaluate.eval.train_path:
            check_data(evaluate, "eval.train_path", evaluate.eval.train_path)
        check_shots(evaluate)


def check_world(cfg: RunConfig, world_size: int) -> None:
    """``parallel.world_size``, when set, must be the number of processes the launcher started."""
    want = cfg.parallel.world_size
    if want is not None and want != world_size:
        raise ConfigError(
            f"parallel.world_size={want}, but this run was launched with {world_size} process(es); launch "
            f"{want} (e.g. `maws-scale launch` or torchrun --nproc_per_node {want}) or unset parallel.world_size"
        )


def check_kernels(cfg: RunConfig, device: torch.device | None) -> None:
    """``model.kernels=triton`` insists on the fused kernels: they must be able to run on this device."""
    if cfg.model.kernels != "triton":
        return
    from maws_scale.kernels.dispatch import triton_available

    if not triton_available(device):
        where = device or ("cuda" if torch.cuda.is_available() else "cpu")
        raise ConfigError(
            f"model.kernels=triton: the fused Triton kernels cannot run on {where} (they need triton and a CUDA GPU, "
            "or TRITON_INTERPRET=1 on CPU); use model.kernels=auto or torch"
        )


def check_fp8(cfg: RunConfig, device: torch.device | None) -> None:
    """``parallel.fp8`` needs torchao and a device with FP8 matmuls (or ``parallel.fp8_emulate``)."""
    if cfg.parallel.fp8 == "none":
        return
    from maws_scale.parallel.fp8 import float8_config, fp8_unsupported

    where = device if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reason = fp8_unsupported(where, cfg.parallel.fp8_emulate)
    if reason is not None:
        raise ConfigError(f"parallel.fp8={cfg.parallel.fp8}: {reason}; set parallel.fp8=none")
    float8_config(cfg.parallel.fp8, cfg.parallel.fp8_emulate)  # ConfigError when torchao is missing


def check_writable(key: str, directory: Path) -> None:
    """Create ``directory`` if needed and write a probe file in it; raise ConfigError naming ``key`` otherwise."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-probe-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(f"{key}: cannot write to {directory} ({reason})") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: cannot write to {directory} (permission denied)")


def check_data(cfg: RunConfig, key: str, path: str | None) -> None:
    """The data set at ``path`` exists and has a well-formed manifest."""
    from maws_scale.data.shards import MANIFEST, DatasetError, load_manifest

    if not path:
        raise ConfigError(f"{key}: not set; point it at a directory built by `maws-scale data build`")
    try:
        manifest = load_manifest(path)
    except DatasetError as err:
        raise ConfigError(f"{key}: {err}") from None
    if manifest.records == 0:
        raise ConfigError(f"{key}: {Path(path) / MANIFEST} holds no records (the empty part of a partitioned build?)")


def check_shots(cfg: RunConfig) -> None:
    """``eval.few_shot`` asks no more shots than the smallest class of the probe-train set has records (the whole
    set is counted: the 80 % probe split of ``data.eval_path`` is checked again when the features are drawn)."""
    from collections import Counter

    from maws_scale.data.shards import DatasetError, load_manifest, open_shard

    if not cfg.eval.few_shot:
        return
    key, path = (
        ("eval.train_path", cfg.eval.train_path) if cfg.eval.train_path else ("data.eval_path", cfg.data.eval_path)
    )
    counts: Counter = Counter()
    try:
        for shard in load_manifest(path).shards:
            table = open_shard(Path(path) / shard.file)
            if "label" not in table.column_names:
                return  # not a labeled set: the evaluation names that itself
            counts.update(label for label in table["label"].to_pylist() if label is not None)
    except DatasetError:
        return  # a damaged shard: the loader skips and counts it
    if counts and max(cfg.eval.few_shot) > min(counts.values()):
        label, fewest = min(counts.items(), key=lambda item: item[1])
        raise ConfigError(
            f"eval.few_shot: {max(cfg.eval.few_shot)} shots per class, but class {label} of {key} has only {fewest} "
            "records"
        )


def check_text_tower(cfg: RunConfig) -> None:
    """The image-text stages: the text tower against the tokenizer stored with ``data.path`` (read from disk)."""
    from maws_scale.clip_checks import check_clip_data

    try:
        check_clip_data(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_vocab(cfg: RunConfig) -> None:
    """A WSP stage's vocabulary exists and holds tags."""
    from maws_scale.data.labels import VOCAB, load_vocab
    from maws_scale.data.shards import DatasetError

    path = Path(cfg.wsp.vocab) if cfg.wsp.vocab else Path(cfg.data.path or ".") / VOCAB
    try:
        load_vocab(path)
    except DatasetError as err:
        raise ConfigError(f"wsp.vocab: {err}") from None
