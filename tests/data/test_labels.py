"""Vocabulary: streaming counts, min-count / top-K, soft multi-hot targets, records without a known tag."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from maws_scale.data.build import build_dataset
from maws_scale.data.labels import Vocabulary, build_vocab, count_tags, load_vocab
from maws_scale.data.shards import DatasetError


class ListSource:
    """A source over in-memory records (tests only)."""

    name = "list"

    def __init__(self, records, per_shard=2):
        self.items = records
        self.per_shard = per_shard

    def describe(self):
        return {"n": len(self.items)}

    def plan(self, shard_size):
        from collections import Counter

        return [
            list(range(i, min(i + self.per_shard, len(self.items)))) for i in range(0, len(self.items), self.per_shard)
        ], Counter()

    def records(self, task, skipped):
        for i in task:
            yield {"key": f"r{i}", "image": b"x", **self.items[i]}


@pytest.fixture
def tagged(tmp_path):
    records = [
        {"tags": ["#dog", "#dog", "#park"]},
        {"tags": ["#dog"]},
        {"tags": ["#cat", "#dog"]},
        {"tags": []},
        {"tags": None},
        {"tags": ["#rare"]},
        {"tags": ["#park", "#cat"]},
    ]
    build_dataset(ListSource(records), tmp_path, progress=False)
    return tmp_path


def test_counts_are_per_record_and_streamed_over_shards(tagged):
    counts, records = count_tags(tagged)
    assert records == 7
    assert counts == {"#dog": 3, "#park": 2, "#cat": 2, "#rare": 1}


def test_min_count_and_top_k(tagged):
    vocab, stats = build_vocab(tagged, min_count=2)
    assert vocab.tags == ["#dog", "#cat", "#park"]  # by count, ties alphabetical
    assert stats["records_without_known_tag"] == 3  # [], None, ["#rare"]
    saved = json.loads((tagged / "vocab.json").read_text())
    assert saved["tags"] == vocab.tags and saved["counts"] == [3, 2, 2] and saved["min_count"] == 2
    top, _ = build_vocab(tagged, top_k=1, output=tagged / "top.json")
    assert top.tags == ["#dog"] and load_vocab(tagged / "top.json").tags == ["#dog"]
    with pytest.raises(DatasetError, match="no tag passes"):
        build_vocab(tagged, min_count=10)
    with pytest.raises(ValueError, match="--min-count"):
        build_vocab(tagged)


def test_soft_targets():
    vocab = Vocabulary(["a", "b", "c"], [3, 2, 1])
    tags = pa.array([["a", "b", "a"], ["zzz"], [], None, ["c", "zzz"]], type=pa.list_(pa.string()))
    targets, known = vocab.soft_targets(tags)
    assert known.tolist() == [True, False, False, False, True]
    np.testing.assert_allclose(targets, [[0.5, 0.5, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 1]])
    assert vocab.multi_hot(tags)[0].tolist() == [1, 1, 0]


def test_bad_vocab_files_are_named(tmp_path):
    with pytest.raises(DatasetError, match=r"missing\.json.*maws-scale data vocab"):
        load_vocab(tmp_path / "missing.json")
    (tmp_path / "v.json").write_text('{"tags": ["a", "a"]}')
    with pytest.raises(DatasetError, match="duplicate"):
        load_vocab(tmp_path / "v.json")
    (tmp_path / "w.json").write_text("[1, 2")
    with pytest.raises(DatasetError, match=r"w\.json: malformed"):
        load_vocab(tmp_path / "w.json")
