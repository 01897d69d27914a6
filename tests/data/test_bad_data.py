"""Bad data never crashes the loader: every bad record is skipped, counted by reason and logged."""

from __future__ import annotations

import io
import itertools
import logging
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from maws_scale.data import build_loader
from maws_scale.data.labels import Vocabulary
from maws_scale.data.shards import Manifest, ShardInfo, shard_name, write_shard


def _image(fmt: str, seed: int, size: int = 20) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


GOOD_JPEG = _image("JPEG", 0)


def _dataset(directory: Path, shards: list[list[dict]], vocab: list[str] | None = None) -> Path:
    infos = []
    for i, records in enumerate(shards):
        stats = write_shard(directory / shard_name(i), records)
        infos.append(ShardInfo(shard_name(i), stats["records"], stats["bytes"], stats["sha256"]))
    Manifest(infos).save(directory)
    Vocabulary(vocab or ["a", "b", "c"], [1, 1, 1]).save(directory / "vocab.json")
    return directory


def _drain(loader) -> tuple[list[str], int]:
    keys: list[str] = []
    for batch in loader:
        assert batch["images"].shape[1:] == (3, 56, 56)
        keys += batch["keys"]
    return keys, sum(loader.error_counts().values())


record = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["png", "jpeg", "truncated", "garbage", "empty"]),
        "cut": st.floats(0.05, 0.95),
        "garbage": st.binary(min_size=1, max_size=64),
        "tags": st.one_of(st.none(), st.lists(st.sampled_from(["a", "b", "zzz", ""]), max_size=3)),
        "key_ok": st.booleans(),
    }
)


def _materialise(i: int, spec: dict) -> dict:
    kind = spec["kind"]
    if kind in ("png", "jpeg"):
        image = _image(kind.upper(), i)
    elif kind == "truncated":
        image = GOOD_JPEG[: int(len(GOOD_JPEG) * spec["cut"])]
    else:
        image = spec["garbage"] if kind == "garbage" else b""
    return {"key": f"k{i}" if spec["key_ok"] or kind == "png" else "", "image": image, "tags": spec["tags"]}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(record, min_size=1, max_size=24), st.integers(1, 3))
def test_fuzzed_records_are_counted_never_raised(cfg_for, specs, shards):
    records = [_materialise(i, s) for i, s in enumerate(specs)]
    with tempfile.TemporaryDirectory() as tmp:
        root = _dataset(Path(tmp), [records[k::shards] for k in range(min(shards, len(records)))])
        cfg = cfg_for(root, "train.micro_batch=5")
        keys, errors = _drain(build_loader(cfg, "eval", path=str(root), infinite=False))
        assert len(keys) + errors == len(records)  # nothing silently lost
        sure_good = {r["key"] for r, s in zip(records, specs) if s["kind"] == "png"}
        sure_bad = sum(1 for r, s in zip(records, specs) if s["kind"] == "empty" or not r["key"])
        assert sure_good <= set(keys) and errors >= sure_bad
        wsp = build_loader(cfg, "wsp", infinite=False)
        wsp_keys, _ = _drain(wsp)
        counts = wsp.error_counts()
        assert set(wsp_keys) <= set(keys)
        tagged_good = {r["key"] for r in records if r["key"] in keys and set(r["tags"] or []) & {"a", "b"}}
        assert set(wsp_keys) == tagged_good
        assert counts.get("no_known_tag", 0) == len(set(keys) - tagged_good)


def test_bad_shards_are_skipped_with_their_records_counted(tmp_path, cfg_for, caplog):
    good = [{"key": f"g{i}", "image": GOOD_JPEG, "tags": ["a"]} for i in range(10)]
    root = _dataset(tmp_path, [good[:5], good[5:], good[:3], good[:2]])
    # shard 1: same size, scrambled bytes (unreadable); shard 2: deleted; shard 3: truncated
    path = tmp_path / shard_name(1)
    path.write_bytes(bytes(reversed(path.read_bytes())))
    (tmp_path / shard_name(2)).unlink()
    path = tmp_path / shard_name(3)
    path.write_bytes(path.read_bytes()[:-100])
    for workers in (0, 2):  # counts come back from worker processes too
        with caplog.at_level(logging.ERROR, logger="maws_scale.data"):
            loader = build_loader(cfg_for(root, f"data.num_workers={workers}"), "mae", infinite=False)
            keys, _ = _drain(loader)
        assert set(keys) == {f"g{i}" for i in range(5)}
        assert loader.error_counts() == {"unreadable_shard": 8, "size_mismatch": 2}
    assert shard_name(1) in caplog.text and shard_name(2) in caplog.text  # logged (in-process run)


def test_checksum_mismatch_is_caught_when_verifying_checksums(tmp_path, cfg_for):
    records = [{"key": f"g{i}", "image": _image("PNG", i), "tags": ["a"]} for i in range(6)]
    root = _dataset(tmp_path, [records[:3], records[3:]])
    data = bytearray((tmp_path / shard_name(0)).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit inside the image bytes
    (tmp_path / shard_name(0)).write_bytes(bytes(data))
    loader = build_loader(cfg_for(root, "data.verify_checksums=true"), "eval", path=str(root), infinite=False)
    keys, _ = _drain(loader)
    assert keys == ["g3", "g4", "g5"] and loader.error_counts() == {"checksum_mismatch": 3}


def test_wrong_schema_shard_is_skipped_and_castable_types_are_accepted(tmp_path, cfg_for):
    good = [{"key": f"g{i}", "image": GOOD_JPEG, "tags": ["a"]} for i in range(4)]
    root = _dataset(tmp_path, [good])
    wrong = pa.table({"key": ["w0", "w1"], "image": [1, 2], "tags": [["a"], ["b"]]})  # image as int64
    castable = pa.table(
        {
            "key": ["c0"],
            "image": pa.array([GOOD_JPEG], pa.large_binary()),
            "tags": pa.array([[7]], pa.list_(pa.int64())),
        }
    )
    infos = []
    for i, table in ((1, wrong), (2, castable)):
        with pa.OSFile(str(tmp_path / shard_name(i)), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        infos.append(ShardInfo(shard_name(i), table.num_rows, (tmp_path / shard_name(i)).stat().st_size, ""))
    stats = write_shard(tmp_path / "again.arrow", good)
    Manifest([ShardInfo(shard_name(0), 4, stats["bytes"], stats["sha256"]), *infos]).save(root)
    loader = build_loader(cfg_for(root), "eval", path=str(root), infinite=False)
    keys, _ = _drain(loader)
    assert sorted(keys) == ["c0", "g0", "g1", "g2", "g3"]
    assert loader.error_counts() == {"bad_schema": 2}


def test_training_batches_keep_their_shape_and_counts_cross_worker_processes(tmp_path, cfg_for):
    records = [{"key": f"r{i}", "image": GOOD_JPEG if i % 3 else b"\xff\xd8garbage", "tags": ["a"]} for i in range(60)]
    root = _dataset(tmp_path, [records[:30], records[30:]])
    loader = build_loader(cfg_for(root, "data.num_workers=2"), "mae", infinite=False)
    batches = list(loader)
    assert all(len(b["keys"]) == 8 for b in batches[:-1])  # invalid samples replaced by valid repeats
    assert all(int(k[1:]) % 3 for b in batches for k in b["keys"])
    assert loader.error_counts() == {"corrupt_image": 20}
    assert loader.state_dict()["errors"] == {"corrupt_image": 20}


def test_all_bad_batch_is_skipped_but_consumed_and_logged(tmp_path, cfg_for, caplog):
    records = [{"key": f"r{i}", "image": b"junk" if i < 8 else GOOD_JPEG, "tags": ["a"]} for i in range(16)]
    root = _dataset(tmp_path, [records])
    loader = build_loader(cfg_for(root), "eval", path=str(root), infinite=False)
    with caplog.at_level(logging.WARNING, logger="maws_scale.data"):
        batches = list(itertools.islice(loader, 1))
    assert "'r3' of shard-00000.arrow: corrupt_image" in caplog.text
    assert batches[0]["keys"] == [f"r{i}" for i in range(8, 16)]
    assert loader.state_dict()["consumed"] == 16 and loader.error_counts() == {"corrupt_image": 8}
