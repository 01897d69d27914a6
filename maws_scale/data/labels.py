"""Hashtag vocabulary: count tags over a data set (streaming), keep the frequent ones, map tags to soft targets.

``vocab.json`` holds ``{"tags": [...], "counts": [...], "min_count": m, "top_k": k, "records": n,
"records_without_known_tag": z, "dataset": fingerprint}``. Class ids are positions in ``tags`` (most frequent
first, ties broken alphabetically). A record's WSP target gives each of its *distinct* known tags 1/n; records
with no known tag are skipped for WSP (and kept for MAE).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from maws_scale.data.shards import DatasetError, load_manifest, open_shard, write_json_atomic

VOCAB = "vocab.json"


@dataclass
class Vocabulary:
    tags: list[str]
    counts: list[int]

    def __post_init__(self) -> None:
        self._value_set = pa.array(self.tags, type=pa.string())
        self.index = {tag: i for i, tag in enumerate(self.tags)}

    def __len__(self) -> int:
        return len(self.tags)

    def ids(self, tags: pa.ListArray | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        """(row, class id) pairs of every known tag in a list<string> column; batch-level, no Python loop."""
        if isinstance(tags, pa.ChunkedArray):
            tags = tags.combine_chunks()
        tags = tags.fill_null(pa.scalar([], type=tags.type)) if tags.null_count else tags
        rows = pc.list_parent_indices(tags).to_numpy(zero_copy_only=False)
        ids = pc.index_in(pc.list_flatten(tags), value_set=self._value_set)
        known = ids.is_valid().to_numpy(zero_copy_only=False)
        return rows[known].astype(np.int64), ids.to_numpy(zero_copy_only=False)[known].astype(np.int64)

    def soft_targets(self, tags: pa.ListArray | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        """(float32 (B, K) soft multi-hot targets, bool (B,) has-a-known-tag) for a list<string> column."""
        n = len(tags)
        rows, ids = self.ids(tags)
        hot = np.zeros((n, len(self)), dtype=np.float32)
        hot[rows, ids] = 1.0  # repeated tags count once
        per_row = hot.sum(axis=1)
        known = per_row > 0
        hot[known] /= per_row[known, None]
        return hot, known

    def multi_hot(self, tags: pa.ListArray | pa.ChunkedArray) -> np.ndarray:
        """float32 (B, K) 0/1 multi-hot (e.g. clean labels for evaluation)."""
        rows, ids = self.ids(tags)
        hot = np.zeros((len(tags), len(self)), dtype=np.float32)
        hot[rows, ids] = 1.0
        return hot

    def save(self, path: str | os.PathLike, **extra: object) -> None:
        write_json_atomic(path, {"tags": self.tags, "counts": self.counts, **extra})


def load_vocab(path: str | os.PathLike) -> Vocabulary:
    """Read a vocab.json; raise DatasetError naming the file (and the command that builds it) if missing or bad."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"{path}: vocabulary not found; build it with `maws-scale data vocab {path.parent} --min-count 1` "
            "(or set wsp.vocab)"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        tags = [str(t) for t in raw["tags"]]
        counts = [int(c) for c in raw.get("counts", [0] * len(tags))]
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as err:
        raise DatasetError(f"{path}: malformed vocabulary ({type(err).__name__}: {err})") from None
    if not tags:
        raise DatasetError(f"{path}: the vocabulary holds no tags; rebuild it with a lower --min-count")
    if len(set(tags)) != len(tags):
        raise DatasetError(f"{path}: duplicate tags in the vocabulary")
    return Vocabulary(tags, counts)


def _units(directory: str | os.PathLike, workers: int) -> list[list[str]]:
    """The map units of a data set: the shards of each part of a merged build, else about 4 chunks per worker."""
    files = [shard.file for shard in load_manifest(directory).shards]
    by_part: dict[str, list[str]] = {}
    for file in files:
        by_part.setdefault(str(Path(file).parent), []).append(file)
    if len(by_part) > 1:
        return list(by_part.values())
    size = max(1, -(-len(files) // (4 * max(1, workers))))
    return [files[i : i + size] for i in range(0, len(files), size)]


def _tag_column(directory: str, file: str) -> pa.ChunkedArray:
    table = open_shard(Path(directory) / file)
    if "tags" not in table.column_names:
        raise DatasetError(f"{Path(directory) / file}: no 'tags' column")
    return table["tags"]


def _count_unit(directory: str, files: list[str]) -> tuple[Counter, int]:
    """Map step: tag counts (once per record) and records over some shards (only the tags column is read)."""
    counts: Counter = Counter()
    records = 0
    for file in files:
        for chunk in _tag_column(directory, file).chunks:
            records += len(chunk)
            flat = pc.list_flatten(chunk)
            # count each tag once per record, as the targets do
            pairs = pa.table({"row": pc.list_parent_indices(chunk), "tag": flat})
            unique = pairs.group_by(["row", "tag"]).aggregate([])
            for item in pc.value_counts(unique["tag"]).to_pylist():
                if item["values"] is not None:
                    counts[item["values"]] += item["counts"]
    return counts, records


def _without_unit(directory: str, files: list[str], vocab: Vocabulary) -> int:
    """Records without a known tag over some shards."""
    without = 0
    for file in files:
        for chunk in _tag_column(directory, file).chunks:
            rows, _ = vocab.ids(chunk)
            without += len(chunk) - len(np.unique(rows))
    return without


def _map(function, directory: str | os.PathLike, units: list[list[str]], workers: int, *extra: object) -> list:
    if workers <= 1 or len(units) <= 1:
        return [function(str(directory), unit, *extra) for unit in units]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(function, str(directory), unit, *extra) for unit in units]
        return [future.result() for future in futures]


def count_tags(directory: str | os.PathLike, workers: int = 1) -> tuple[Counter, int]:
    """Count tags over every shard of a data set, map-reduce: per part (or chunk of shards) counts in ``workers``
    processes, summed; return (counts, records)."""
    return _reduce(_map(_count_unit, directory, _units(directory, workers), workers))


def _reduce(results: list[tuple[Counter, int]]) -> tuple[Counter, int]:
    counts: Counter = Counter()
    for part_counts, _ in results:
        counts.update(part_counts)
    return counts, sum(records for _, records in results)


def build_vocab(
    directory: str | os.PathLike,
    min_count: int | None = None,
    top_k: int | None = None,
    output: str | os.PathLike | None = None,
    workers: int = 1,
) -> tuple[Vocabulary, dict[str, int]]:
    """Keep tags with count >= min_count and/or the top_k most frequent; write vocab.json; return (vocab, stats)."""
    if min_count is None and top_k is None:
        raise ValueError("give --min-count M or --top K")
    units = _units(directory, workers)
    counts, records = _reduce(_map(_count_unit, directory, units, workers))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if min_count is not None:
        ranked = [(t, c) for t, c in ranked if c >= min_count]
    if top_k is not None:
        ranked = ranked[:top_k]
    if not ranked:
        raise DatasetError(f"{directory}: no tag passes min_count={min_count} top_k={top_k} ({len(counts)} tags seen)")
    vocab = Vocabulary([t for t, _ in ranked], [c for _, c in ranked])
    # second map over the tags column only: which records keep a known tag depends on the vocabulary just chosen
    without = sum(_map(_without_unit, directory, units, workers, vocab))
    stats = {"records": records, "records_without_known_tag": without, "tags_seen": len(counts)}
    target = Path(output) if output else Path(directory) / VOCAB
    vocab.save(target, min_count=min_count, top_k=top_k, dataset=load_manifest(directory).fingerprint(), **stats)
    return vocab, stats
