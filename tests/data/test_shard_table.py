"""The memory-mapped shard table: same contents as the inline list, small pickles, fingerprint and records cached."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest

from maws_scale.data.order import GlobalOrder
from maws_scale.data.shard_table import SHARD_TABLE, ShardTable
from maws_scale.data.shards import DatasetError, Manifest, ShardInfo, load_manifest


def _infos(n: int) -> list[ShardInfo]:
    return [
        ShardInfo(f"shard-{i:05d}.arrow", 100 + i, 1000 * (i + 1), hashlib.sha256(str(i).encode()).hexdigest())
        for i in range(n)
    ]


def test_saved_manifest_maps_its_shards_and_reads_back_equal(tmp_path):
    infos = _infos(50)
    infos[3].skipped = {"unreadable_image": 2}
    Manifest(infos, build={"source": "test"}).save(tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert "shards" not in raw and raw["shard_table"] == SHARD_TABLE and raw["shard_count"] == 50
    manifest = load_manifest(tmp_path)
    assert isinstance(manifest.shards, ShardTable)
    assert list(manifest.shards) == infos and manifest.shards[-1] == infos[-1] and manifest.shards[1:3] == infos[1:3]
    assert manifest.records == sum(s.records for s in infos) and manifest.bytes == sum(s.bytes for s in infos)
    assert manifest.record_counts().tolist() == [s.records for s in infos]
    # the fingerprint keeps its definition (vocab.json and loader states written before still match)
    old = hashlib.sha256("".join(s.sha256 for s in infos).encode()).hexdigest()[:16]
    assert manifest.fingerprint() == raw["fingerprint"] == Manifest(infos).fingerprint() == old
    with pytest.raises(IndexError):
        manifest.shards[50]


def test_fingerprint_is_read_once_not_rehashed(tmp_path, monkeypatch):
    Manifest(_infos(10)).save(tmp_path)
    manifest = load_manifest(tmp_path)
    monkeypatch.setattr(ShardTable, "sha256_all", lambda self: pytest.fail("re-hashed the shard checksums"))
    assert manifest.fingerprint() == manifest.fingerprint()


def test_table_pickles_as_its_path(tmp_path):
    Manifest(_infos(20_000)).save(tmp_path)
    manifest = load_manifest(tmp_path)
    payload = pickle.dumps(manifest)
    assert len(payload) < 2_000  # the inline list of 20k ShardInfo pickles to megabytes
    again = pickle.loads(payload)
    assert again.shards[12_345] == manifest.shards[12_345] and again.fingerprint() == manifest.fingerprint()
    order = GlobalOrder(manifest.record_counts(), seed=1, shuffle=True)
    copy = pickle.loads(pickle.dumps(order))
    positions = np.arange(0, order.size, order.size // 300)
    assert all((a == b).all() for a, b in zip(copy.locate(positions), order.locate(positions)))


def test_inline_manifests_of_earlier_builds_still_load(tmp_path):
    infos = _infos(3)
    raw = {"schema_version": 1, "format": "arrow-ipc-file", "shards": [vars(s) for s in infos], "build": {}}
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    manifest = load_manifest(tmp_path)
    assert list(manifest.shards) == infos and manifest.records == 303


def test_a_table_that_disagrees_with_the_manifest_is_named(tmp_path):
    Manifest(_infos(4)).save(tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**raw, "shard_count": 5}))
    with pytest.raises(DatasetError, match=r"manifest\.json: malformed manifest .*shard_count 5"):
        load_manifest(tmp_path)
    (tmp_path / SHARD_TABLE).write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"shards\.arrow: unreadable shard table"):
        load_manifest(tmp_path)
