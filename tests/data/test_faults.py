"""Data faults that used to break a run: a stream with no usable record, a shard with corrupted Arrow buffers,
manifests the loader and ``data verify`` disagreed about."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from PIL import Image

from maws_scale.config import ConfigError
from maws_scale.data import build_loader
from maws_scale.data.labels import Vocabulary
from maws_scale.data.shards import (
    DatasetError,
    Manifest,
    ShardInfo,
    inline_manifest_json,
    load_manifest,
    sha256_file,
    shard_name,
    write_shard,
)
from maws_scale.data.stream import DataStallError
from maws_scale.data.verify import verify_dataset


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _dataset(directory: Path, shards: list[list[dict]], vocab: list[str] | None = None) -> Path:
    infos = []
    for i, records in enumerate(shards):
        stats = write_shard(directory / shard_name(i), records)
        infos.append(ShardInfo(shard_name(i), stats["records"], stats["bytes"], stats["sha256"]))
    Manifest(infos).save(directory)
    Vocabulary(vocab or ["a", "b"], [1, 1]).save(directory / "vocab.json")
    return directory


def _records(n: int, tags: list[str] | None = None, prefix: str = "r") -> list[dict]:
    return [{"key": f"{prefix}{i:04d}", "image": _jpeg(i), "tags": tags or ["a"]} for i in range(n)]


# ----- 1. a stream with no usable record stops, naming the reasons and the path --------------------------------------
def test_every_shard_missing_stops_with_the_reason_instead_of_spinning(tmp_path, cfg_for):
    root = _dataset(tmp_path, [_records(20), _records(20, prefix="s")])
    for i in range(2):
        (tmp_path / shard_name(i)).unlink()
    loader = build_loader(cfg_for(root), "mae", infinite=True)
    stall = rf"{tmp_path}.*no usable record in the last 4\d records.*unreadable_shard"
    with pytest.raises(DataStallError, match=stall):
        next(iter(loader))


def test_a_vocabulary_whose_tags_never_occur_stops_wsp_with_the_reason(tmp_path, cfg_for, caplog):
    root = _dataset(tmp_path, [_records(30, tags=["x"])], vocab=["a", "b"])
    loader = build_loader(cfg_for(root), "wsp", infinite=True)
    with (
        caplog.at_level(logging.WARNING, logger="maws_scale.data"),
        pytest.raises(DataStallError, match=r"no_known_tag 3\d.*vocabulary"),
    ):
        next(iter(loader))
    assert "without a tag of the vocabulary" in caplog.text  # warned, not only logged at debug level


def test_a_stall_also_stops_through_worker_processes(tmp_path, cfg_for):
    root = _dataset(tmp_path, [_records(16)])
    (tmp_path / shard_name(0)).unlink()
    loader = build_loader(cfg_for(root, "data.num_workers=2"), "mae", infinite=True)
    with pytest.raises(DataStallError, match="unreadable_shard"):
        next(iter(loader))


def test_long_bad_stretches_with_usable_records_do_not_stop_the_stream(tmp_path, cfg_for):
    bad = [{"key": f"b{i}", "image": b"junk", "tags": ["a"]} for i in range(40)]
    root = _dataset(tmp_path, [bad, _records(8)])
    loader = build_loader(cfg_for(root), "mae", infinite=True)
    batches = list(itertools.islice(loader, 20))  # several epochs: bad batches in between, never 48 in a row
    assert len(batches) == 20 and loader.error_counts()["corrupt_image"] >= 40


# ----- 2. corrupted Arrow buffers: the shard is skipped and named, never a crash --------------------------------------
def _corrupt_key_offsets(path: Path) -> None:
    batch = ipc.open_file(pa.memory_map(str(path))).get_batch(0)
    offsets = bytes(batch.column(0).buffers()[1])[:64]
    data = bytearray(path.read_bytes())
    start = data.find(offsets)
    assert start > 0
    for i in range(64):
        data[start + i] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupted_key_offsets_skip_the_shard_by_name(tmp_path, cfg_for, caplog, workers):
    root = _dataset(tmp_path, [_records(40), _records(40, prefix="s")])
    _corrupt_key_offsets(tmp_path / shard_name(0))
    loader = build_loader(cfg_for(root, f"data.num_workers={workers}"), "eval", path=str(root), infinite=False)
    with caplog.at_level(logging.ERROR, logger="maws_scale.data"):
        keys = [k for batch in loader for k in batch["keys"]]
    assert sorted(keys) == [f"s{i:04d}" for i in range(40)]
    assert loader.error_counts() == {"unreadable_shard": 40}
    if workers == 0:
        assert f"{shard_name(0)}" in caplog.text and "unreadable_shard" in caplog.text


def test_verify_reports_a_corrupted_shard_instead_of_crashing(tmp_path):
    root = _dataset(tmp_path, [_records(40)])
    _corrupt_key_offsets(tmp_path / shard_name(0))
    manifest = load_manifest(root)
    shards = list(manifest.shards)  # a loaded manifest's shard table is read-only
    shards[0] = dataclasses.replace(shards[0], sha256=sha256_file(tmp_path / shard_name(0)))
    dataclasses.replace(manifest, shards=shards).save(root)  # a checksum that matches the damage: only the Arrow
    # validation can tell
    summary = verify_dataset(root)
    assert not summary["ok"] and "unreadable" in summary["problems"][shard_name(0)]


# ----- 5. verify and the loader agree; bad manifests are refused ----------------------------------------------------
def _edit_manifest(root: Path, edit) -> None:
    """Rewrite the manifest in its inline form (the shard list in manifest.json, as earlier builds wrote it, which
    still loads) with ``edit`` applied to that list."""
    raw = inline_manifest_json(load_manifest(root))
    edit(raw)
    (root / "manifest.json").write_text(json.dumps(raw))


def test_verify_fails_a_shard_whose_size_differs_from_the_manifest(tmp_path, cfg_for):
    root = _dataset(tmp_path, [_records(8)])
    _edit_manifest(root, lambda raw: raw["shards"][0].update(bytes=raw["shards"][0]["bytes"] + 1))
    summary = verify_dataset(root)
    assert not summary["ok"] and "size" in summary["problems"][shard_name(0)]
    loader = build_loader(cfg_for(root), "eval", path=str(root), infinite=False)
    assert list(loader) == [] and loader.error_counts() == {"size_mismatch": 8}  # the loader agrees


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda raw: raw.update(shards=[]), "no shards"),
        (lambda raw: raw["shards"].append(dict(raw["shards"][0])), "listed twice"),
        (lambda raw: raw["shards"][0].update(records=0), "records"),
        (lambda raw: raw["shards"][0].update(records=-5), "records"),
        (lambda raw: raw["shards"][0].update(bytes=-1), "bytes"),
        (lambda raw: raw["shards"][0].update(file="../elsewhere.arrow"), "file"),
    ],
)
def test_bad_manifests_are_refused_by_verify_and_the_loader(tmp_path, cfg_for, edit, message):
    root = _dataset(tmp_path, [_records(8)])
    _edit_manifest(root, edit)
    with pytest.raises(DatasetError, match=rf"manifest.json.*{message}"):
        load_manifest(root)
    with pytest.raises(DatasetError, match=message):
        verify_dataset(root)
    with pytest.raises(ConfigError, match=rf"data.path: .*{message}"):
        build_loader(cfg_for(root), "mae")
