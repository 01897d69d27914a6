"""The text tower of the image-text stages (clip, mae_clip, lit): its shape, and the checks of it.

:func:`check_clip` is pure (RunConfig's validator runs it). :func:`check_clip_data` compares the tower with the
tokenizer stored with the training data (``data.path``'s manifest), so a tower that cannot embed the tokenizer's
ids, or a context longer than its position table, is refused, with the key named, before the first step
(``train/preflight.py``). :func:`text_shape` is what the model and the synthetic loader build on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from maws_scale.models.text_registry import TextSpec, get_text_spec

if TYPE_CHECKING:
    from maws_scale.config import RunConfig

CLIP_STAGES = ("clip", "mae_clip", "lit")
SYNTHETIC_VOCAB = 4096  # a tower without a vocabulary of its own and no tokenizer (synthetic data)


def text_spec(cfg: RunConfig) -> TextSpec:
    """The registry shape of ``clip.text_model`` (ValueError naming the key)."""
    try:
        return get_text_spec(cfg.clip.text_model)
    except KeyError as err:
        raise ValueError(f"clip.text_model: {err.args[0]}") from None


def tokenizer_shape(cfg: RunConfig) -> tuple[int, int, str] | None:
    """(vocab size, context length, manifest path) of ``data.path``'s tokenizer; None without a built data set."""
    if cfg.data.synthetic or not cfg.data.path or not (Path(cfg.data.path) / "manifest.json").is_file():
        return None
    from maws_scale.data.shards import DatasetError
    from maws_scale.data.text import TextInfo

    try:
        info = TextInfo.of(cfg.data.path)
    except DatasetError as err:
        raise ValueError(f"data.path: {err}") from None
    return info.vocab_size, info.context_length, str(Path(cfg.data.path) / "manifest.json")


def tower_vocab(cfg: RunConfig, tokenizer_vocab: int | None = None) -> int | None:
    """The text tower's vocabulary: ``clip.text_vocab``, else the tower's own, else the tokenizer's."""
    return cfg.clip.text_vocab or text_spec(cfg).vocab_size or tokenizer_vocab


def text_shape(cfg: RunConfig) -> tuple[int, int]:
    """(vocab size, position-table length) of the text tower of ``cfg`` (ConfigError naming the key)."""
    from maws_scale.config import ConfigError

    try:
        spec, shape = text_spec(cfg), tokenizer_shape(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    vocab = tower_vocab(cfg, shape[0] if shape else None) or SYNTHETIC_VOCAB
    return vocab, cfg.clip.context_length or spec.context_length


def check_clip(cfg: RunConfig) -> None:
    """Raise ValueError naming the key when an image-text stage cannot run as configured (reads no file)."""
    if cfg.stage not in CLIP_STAGES:
        return
    spec = text_spec(cfg)
    if spec.width % spec.heads:
        raise ValueError(f"clip.text_model: width {spec.width} is not divisible by {spec.heads} heads")
    if cfg.parallel.tp != 1:
        raise ValueError(f"parallel.tp={cfg.parallel.tp}: stage {cfg.stage} runs with tp=1 (data parallel + ZeRO)")


def check_clip_data(cfg: RunConfig) -> None:
    """Raise ValueError naming the key when the text tower cannot read the tokenizer of ``data.path``."""
    if cfg.stage not in CLIP_STAGES:
        return
    table = cfg.clip.context_length or text_spec(cfg).context_length
    shape = tokenizer_shape(cfg)
    if shape is None:
        return
    vocab, context, where = shape
    tower = tower_vocab(cfg, vocab)
    if tower < vocab:
        key = "clip.text_vocab" if cfg.clip.text_vocab else "clip.text_model"
        raise ValueError(
            f"{key}: the text tower embeds {tower} token ids but the tokenizer of {where} has {vocab}; "
            "use a tower with a larger vocabulary or leave clip.text_vocab unset"
        )
    if context > table:
        key = "clip.context_length" if cfg.clip.context_length else "clip.text_model"
        raise ValueError(
            f"{key}: captions are tokenized to {context} tokens ({where}) but the position table holds {table}; "
            f"set clip.context_length >= {context} or retrain the tokenizer with a shorter --context-length"
        )
