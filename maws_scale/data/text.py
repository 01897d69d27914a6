"""Captions and the tokenizer of an image-text data set.

Captions live in the shards' ``captions`` column (list<string>, one or several per image). At build time every
caption is checked: bad UTF-8, empty (after stripping) and over-long (> ``MAX_CAPTION_CHARS``) captions are dropped
and counted by reason (``caption_bad_utf8``, ``caption_empty``, ``caption_too_long``); a record left without any
caption is skipped (``no_caption``). Nothing here raises on bad text.

The tokenizer is trained once, offline, on the data set's own captions with the ``tokenizers`` library (byte-level
BPE, NFKC + lower-case) and stored beside the shards as ``tokenizer.json``; its vocab size, context length and
special-token ids go into ``manifest.json`` under ``text``. Nothing is downloaded at run time.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maws_scale.config import is_utf8
from maws_scale.data.shards import DatasetError, load_manifest, open_shard, sha256_file
from maws_scale.errors import write_atomic

log = logging.getLogger("maws_scale.data")

MAX_CAPTION_CHARS = 1000
TOKENIZER = "tokenizer.json"
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


# ----- captions at build time -------------------------------------------------------------------------------------
def decode_caption_bytes(data: bytes, where: str, skipped: Counter) -> str | None:
    """UTF-8 text of a caption file/member, or None (counted as ``caption_bad_utf8``, logged)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        skipped["caption_bad_utf8"] += 1
        log.warning("%s: caption is not UTF-8 (%s), dropped", where, err.reason)
        return None


def clean_captions(
    captions: Iterable[Any], where: str, skipped: Counter, max_chars: int = MAX_CAPTION_CHARS
) -> list[str]:
    """The usable captions of one record: stripped, non-empty, at most ``max_chars``; the rest counted."""
    out: list[str] = []
    for caption in captions:
        if isinstance(caption, bytes):
            caption = decode_caption_bytes(caption, where, skipped)
            if caption is None:
                continue
        if not isinstance(caption, str):
            skipped["caption_not_text"] += 1
            log.warning("%s: caption %r is not text, dropped", where, caption)
            continue
        if not is_utf8(caption):  # a lone surrogate ("\ud800" in JSON) cannot be stored
            skipped["caption_bad_utf8"] += 1
            log.warning("%s: caption holds a lone surrogate (not UTF-8), dropped", where)
            continue
        text = " ".join(caption.split())
        if not text:
            skipped["caption_empty"] += 1
            continue
        if len(text) > max_chars:
            skipped["caption_too_long"] += 1
            log.warning("%s: caption of %d characters (> %d), dropped", where, len(text), max_chars)
            continue
        out.append(text)
    return out


def captions_from_text(text: str) -> list[str]:
    """A ``.txt`` caption file or member: one caption per non-empty line."""
    return [line for line in text.splitlines() if line.strip()] or [text]


def captions_from_json(meta: Any) -> list[Any]:
    """``{"caption": "..."}`` or ``{"captions": [...]}`` (both may be present); anything else: no captions."""
    if not isinstance(meta, dict):
        return []
    found: list[Any] = []
    if "caption" in meta:
        found.append(meta["caption"])
    if isinstance(meta.get("captions"), list):
        found.extend(meta["captions"])
    return found


# ----- tokenizer --------------------------------------------------------------------------------------------------
def iter_captions(directory: str | os.PathLike) -> Iterator[str]:
    """Every caption of a built data set, shard by shard."""
    manifest = load_manifest(directory)
    for shard in manifest.shards:
        table = open_shard(Path(directory) / shard.file)
        if "captions" not in table.column_names:
            raise DatasetError(f"{Path(directory) / shard.file}: no 'captions' column (build with --captions)")
        for chunk in table["captions"].chunks:
            for caption in chunk.flatten().to_pylist():
                if caption:
                    yield caption


def train_tokenizer(directory: str | os.PathLike, vocab_size: int, context_length: int) -> dict[str, Any]:
    """Train a byte-level BPE tokenizer on the data set's captions, save ``tokenizer.json`` beside the shards and
    record it in the manifest's ``text`` entry; return that entry."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"--vocab-size {vocab_size}: a byte-level BPE needs at least {256 + len(SPECIAL_TOKENS)}")
    if context_length < 3:
        raise ValueError(f"--context-length {context_length}: needs room for <bos>, one token and <eos>")
    directory = Path(directory)
    manifest = load_manifest(directory)
    count = 0

    def counted() -> Iterator[str]:
        nonlocal count
        for caption in iter_captions(directory):
            count += 1
            yield caption

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(counted(), trainer=trainer)
    if count == 0:
        raise DatasetError(f"{directory}: no captions to train a tokenizer on")
    for token, expected in zip(SPECIAL_TOKENS, (PAD_ID, BOS_ID, EOS_ID)):
        if tokenizer.token_to_id(token) != expected:
            raise RuntimeError(f"tokenizer: {token} got id {tokenizer.token_to_id(token)}, expected {expected}")
    path = directory / TOKENIZER
    write_atomic(path, lambda tmp: tokenizer.save(str(tmp)), "tokenizer")
    manifest.text = {
        "tokenizer": TOKENIZER,
        "kind": "byte-level BPE (tokenizers), NFKC + lowercase",
        "sha256": sha256_file(path),
        "vocab_size": tokenizer.get_vocab_size(),
        "context_length": context_length,
        "pad_id": PAD_ID,
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        "captions": count,
    }
    manifest.save(directory)
    return manifest.text


@dataclass
class TextInfo:
    """The manifest's ``text`` entry of a data set (what the config check and the loader need)."""

    path: str
    vocab_size: int
    context_length: int

    @classmethod
    def of(cls, directory: str | os.PathLike) -> TextInfo:
        """Read ``<directory>/manifest.json``'s ``text``; raise DatasetError when the set has no tokenizer."""
        manifest = load_manifest(directory)
        text = manifest.text
        if not text:
            raise DatasetError(
                f"{Path(directory) / 'manifest.json'}: no tokenizer; train one with "
                f"`maws-scale data tokenizer {directory} --vocab-size N --context-length L`"
            )
        path = Path(directory) / str(text["tokenizer"])
        try:
            digest = sha256_file(path) if "sha256" in text else None
        except OSError as err:
            raise DatasetError(f"{path}: cannot read the tokenizer ({err.strerror})") from None
        if digest is not None and digest != text["sha256"]:  # another tokenizer would index out of the embedding
            raise DatasetError(
                f"{path}: sha256 differs from the one in {Path(directory) / 'manifest.json'}: the tokenizer was "
                f"replaced after it was trained; retrain it with `maws-scale data tokenizer {directory} ...`"
            )
        return cls(str(path), int(text["vocab_size"]), int(text["context_length"]))


class CaptionEncoder:
    """Captions → fixed-length token ids ``<bos> … <eos> <pad>…`` (int64, (B, context)); long captions are cut so
    that ``<eos>`` always ends the sequence. Special-token text in a caption (``<pad>``) is encoded as plain text.
    Loads ``tokenizer.json`` lazily (picklable for loader workers)."""

    def __init__(self, path: str, context_length: int) -> None:
        self.path, self.context_length = path, context_length
        self._tokenizer: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "context_length": self.context_length, "_tokenizer": None}

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            try:
                self._tokenizer = Tokenizer.from_file(self.path)
            except Exception as err:  # tokenizers raises its own Exception type on a bad file
                raise DatasetError(f"{self.path}: cannot load the tokenizer ({err})") from None
            self._tokenizer.encode_special_tokens = True  # "<pad>" typed in a caption is text, not the pad id
        return self._tokenizer

    def __call__(self, captions: list[str]) -> np.ndarray:
        out = np.full((len(captions), self.context_length), PAD_ID, dtype=np.int64)
        body = self.context_length - 2
        for i, encoding in enumerate(self.tokenizer.encode_batch(list(captions), add_special_tokens=False)):
            ids = [BOS_ID, *encoding.ids[:body], EOS_ID]
            out[i, : len(ids)] = ids
        return out


def pick_captions(captions: list[list[str] | None], positions: np.ndarray, seed: int, train: bool) -> list[str | None]:
    """One caption per record: for training a random one from (seed, global position) — the same on any DP layout
    — for evaluation the first. None where a record has no caption."""
    out: list[str | None] = []
    for caps, position in zip(captions, positions.tolist()):
        if not caps:
            out.append(None)
        elif not train or len(caps) == 1:
            out.append(caps[0])
        else:
            out.append(caps[int(np.random.default_rng([seed, position, 7]).integers(len(caps)))])
    return out
