"""Input classes of issue 26 that used to give a traceback, a hang or a silent wrong count: empty data sets, manifest
numbers, shard tables that escape, deep nesting, lone surrogates, builders that merged or dropped without counting,
FIFOs in place of files, and ``data verify`` on a set where nothing decodes."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maws_scale.config import ConfigError, load_config
from maws_scale.data import build_loader
from maws_scale.data.build import build_dataset
from maws_scale.data.shard_table import SHARD_TABLE, write_shard_table
from maws_scale.data.shards import (
    MANIFEST,
    DatasetError,
    Manifest,
    ShardInfo,
    inline_manifest_json,
    load_manifest,
    open_shard,
    shard_name,
    write_shard,
)
from maws_scale.data.sources import FolderSource, JsonlSource, WebDatasetSource
from maws_scale.data.verify import verify_dataset
from maws_scale.train.preflight import check_data


def _png(value: int = 100) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _one_shard(root: Path, images: list[bytes] | None = None) -> ShardInfo:
    root.mkdir(parents=True, exist_ok=True)
    images = images or [_png(i) for i in range(4)]
    stats = write_shard(
        root / shard_name(0), [{"key": f"k{i}", "image": im, "tags": ["a"]} for i, im in enumerate(images)]
    )
    return ShardInfo(shard_name(0), stats["records"], stats["bytes"], stats["sha256"])


def _keys(root: Path) -> list[str]:
    return sorted(k for f in sorted(root.glob("shard-*.arrow")) for k in open_shard(f)["key"].to_pylist())


# ----- an empty data set ---------------------------------------------------------------------------------------------
def test_an_empty_part_is_refused_by_train_eval_and_verify_naming_the_manifest(tmp_path, cfg_for):
    Manifest([], build={"options": {"partition": "0/2"}}).save(tmp_path)  # the empty part of a partitioned build
    assert load_manifest(tmp_path).records == 0
    cfg = cfg_for(tmp_path, f"data.eval_path={tmp_path}")
    for stage in ("mae", "eval"):
        with pytest.raises(ConfigError, match=rf"{tmp_path / MANIFEST} holds no records"):
            build_loader(cfg, stage)
    with pytest.raises(ConfigError, match=r"data.path: .*holds no records"):
        check_data(cfg, "data.path", str(tmp_path))
    report = verify_dataset(tmp_path)
    assert not report["ok"] and "no records" in report["problems"][MANIFEST]


def test_verify_fails_a_set_in_which_no_record_decodes(tmp_path):
    Manifest([_one_shard(tmp_path, [b"junk", b"\x89PNG broken"])]).save(tmp_path)
    report = verify_dataset(tmp_path)
    assert not report["ok"] and "no decodable record" in report["problems"][MANIFEST]
    Manifest([_one_shard(tmp_path / "half", [b"junk", _png()])]).save(tmp_path / "half")
    assert verify_dataset(tmp_path / "half")["ok"]  # one bad record of two: counted, not a failure


# ----- manifest numbers ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["1e999", "-1e999", "1.5", "true", "-3", "4611686018427387904"])
@pytest.mark.parametrize("field", ["schema_version", "shard_count", "records", "bytes"])
def test_a_manifest_number_that_is_not_a_whole_count_is_refused_naming_it(tmp_path, field, value):
    manifest = Manifest([_one_shard(tmp_path)])
    manifest.save(tmp_path)
    raw = manifest.to_json() if field in ("schema_version", "shard_count") else inline_manifest_json(manifest)
    if field in ("records", "bytes"):
        raw["shards"][0][field] = "@@"
    else:
        raw[field] = "@@"
    (tmp_path / MANIFEST).write_text(json.dumps(raw).replace('"@@"', value))
    with pytest.raises(DatasetError, match=rf"{MANIFEST}: malformed manifest .*{field}"):
        load_manifest(tmp_path)
    with pytest.raises(DatasetError):
        verify_dataset(tmp_path)


# ----- shard tables that escape --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("names", "problem"),
    [
        ([shard_name(0), shard_name(0)], "listed twice"),
        (["../outside.arrow"], "inside the data set"),
        (["sub/../../outside.arrow"], "inside the data set"),
        (["/tmp/outside.arrow"], "inside the data set"),
        ([""], "inside the data set"),
    ],
)
def test_a_v2_shard_table_listing_a_shard_twice_or_outside_the_set_is_refused(tmp_path, cfg_for, names, problem):
    info = _one_shard(tmp_path)
    Manifest([info]).save(tmp_path)
    write_shard_table(tmp_path / SHARD_TABLE, [ShardInfo(n, info.records, info.bytes, info.sha256) for n in names])
    raw = json.loads((tmp_path / MANIFEST).read_text())
    (tmp_path / MANIFEST).write_text(json.dumps({**raw, "shard_count": len(names)}))
    changed = "shards.arrow was changed after manifest.json was written"  # caught by its digest, names unread
    with pytest.raises(DatasetError, match=changed):
        load_manifest(tmp_path)
    with pytest.raises(DatasetError, match=changed):
        verify_dataset(tmp_path)
    with pytest.raises(ConfigError, match=changed):
        build_loader(cfg_for(tmp_path), "mae")
    raw.pop("shard_table_sha256", None)  # a manifest saved before digests were recorded: the names are checked
    (tmp_path / MANIFEST).write_text(json.dumps({**raw, "shard_count": len(names)}))
    with pytest.raises(DatasetError, match=problem):
        load_manifest(tmp_path)
    with pytest.raises(ConfigError, match=problem):
        build_loader(cfg_for(tmp_path), "mae")


def test_a_manifest_naming_a_shard_table_outside_the_set_is_refused(tmp_path):
    Manifest([_one_shard(tmp_path / "a")]).save(tmp_path / "a")
    raw = json.loads((tmp_path / "a" / MANIFEST).read_text())
    (tmp_path / "a" / MANIFEST).write_text(json.dumps({**raw, "shard_table": "../b/shards.arrow"}))
    with pytest.raises(DatasetError, match="shard_table"):
        load_manifest(tmp_path / "a")


# ----- deep nesting and lone surrogates: one bad record, skipped and counted -----------------------------------------
DEEP = "[" * 100_000 + "]" * 100_000


def test_a_deeply_nested_jsonl_line_is_one_counted_bad_line(tmp_path, caplog):
    (tmp_path / "a.png").write_bytes(_png())
    lines = ['{"path": "a.png", "key": "good"}', '{"path": "a.png", "key": "deep", "tags": ' + DEEP + "}"]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="maws_scale.data"):
        built = build_dataset(JsonlSource(str(tmp_path / "in.jsonl")), tmp_path / "out", progress=False)
    assert _keys(tmp_path / "out") == ["good"] and built.build["skipped"] == {"bad_jsonl_line": 1}
    assert "in.jsonl:2:" in caplog.text


def test_a_deeply_nested_or_surrogate_caption_file_is_counted_naming_it(tmp_path, caplog):
    cls = tmp_path / "in" / "cat"
    cls.mkdir(parents=True)
    for stem in ("good", "deep", "surrogate"):
        (cls / f"{stem}.png").write_bytes(_png())
    (cls / "good.txt").write_text("a cat\n")
    (cls / "deep.json").write_text('{"captions": ' + DEEP + "}")
    (cls / "surrogate.json").write_text('{"caption": "a \\ud800 cat"}')
    with caplog.at_level(logging.WARNING, logger="maws_scale.data"):
        built = build_dataset(FolderSource(str(tmp_path / "in"), captions=True), tmp_path / "out", progress=False)
    assert built.build["skipped"]["bad_caption_json"] == 1 and built.build["skipped"]["caption_bad_utf8"] == 1
    assert "deep.json" in caplog.text and "surrogate" in caplog.text
    table = open_shard(tmp_path / "out" / shard_name(0))
    captions = dict(zip(table["key"].to_pylist(), table["captions"].to_pylist()))
    assert captions["cat/good"] == ["a cat"]


def test_a_lone_surrogate_in_a_jsonl_caption_is_counted(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    lines = [
        '{"path": "a.png", "key": "k1", "caption": "fine"}',
        '{"path": "a.png", "key": "k2", "caption": "\\ud800"}',
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    built = build_dataset(JsonlSource(str(tmp_path / "in.jsonl"), captions=True), tmp_path / "out", progress=False)
    assert built.build["skipped"].get("caption_bad_utf8") == 1
    assert verify_dataset(tmp_path / "out")["ok"]


# ----- builders that merged or dropped without counting -------------------------------------------------------------
def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_sample_repeated_back_to_back_in_a_tar_is_counted_and_the_first_copy_kept(tmp_path):
    first, second = _png(10), _png(200)
    _tar(
        tmp_path / "in.tar",
        [("s0.png", first), ("s0.json", b'{"tags": ["one"]}'), ("s0.png", second), ("s0.json", b'{"tags": ["two"]}')],
    )
    built = build_dataset(WebDatasetSource(str(tmp_path / "in.tar")), tmp_path / "out", progress=False)
    assert built.records == 1 and built.build["skipped"] == {"duplicate_key": 1}
    table = open_shard(tmp_path / "out" / shard_name(0))
    assert table["tags"].to_pylist() == [["one"]] and table["image"].to_pylist() == [first]


def test_an_image_at_the_root_of_a_class_folder_input_is_counted_and_logged(tmp_path, caplog):
    (tmp_path / "in" / "cat").mkdir(parents=True)
    (tmp_path / "in" / "cat" / "a.png").write_bytes(_png())
    (tmp_path / "in" / "stray.png").write_bytes(_png())
    (tmp_path / "in" / "README").write_text("not an image")
    with caplog.at_level(logging.WARNING, logger="maws_scale.data"):
        built = build_dataset(FolderSource(str(tmp_path / "in")), tmp_path / "out", progress=False)
    assert built.records == 1 and built.build["skipped"] == {"image_outside_class": 1}
    assert "stray.png" in caplog.text


def test_dev_null_is_the_empty_config_but_other_devices_are_refused(tmp_path):
    """``maws-scale plan /dev/null model.name=…`` (docs/bench.md) means "no config": /dev/null reads as empty, never
    blocks; any other device (``/dev/zero`` would read forever) is refused like a FIFO."""
    assert load_config(os.devnull, ["model.name=vit_tiny_p8"]).model.name == "vit_tiny_p8"
    with pytest.raises(ConfigError, match=r"/dev/zero: cannot read config \(not a regular file"):
        load_config("/dev/zero")


# ----- FIFOs: refused, naming them, never waited on ------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_fifo_in_place_of_a_config_shard_or_listed_image_is_refused_not_waited_on(tmp_path, cfg_for):
    os.mkfifo(tmp_path / "config.yaml")
    with pytest.raises(ConfigError, match=r"config.yaml: cannot read config \(a FIFO"):
        load_config(tmp_path / "config.yaml")
    os.mkfifo(tmp_path / "fifo.arrow")
    with pytest.raises(DatasetError, match=r"fifo.arrow: unreadable Arrow shard .*FIFO"):
        open_shard(tmp_path / "fifo.arrow")
    (tmp_path / "a.png").write_bytes(_png())
    os.mkfifo(tmp_path / "b.png")
    lines = ['{"path": "a.png", "key": "a"}', '{"path": "b.png", "key": "b"}']
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    built = build_dataset(JsonlSource(str(tmp_path / "in.jsonl")), tmp_path / "out", progress=False)
    assert built.records == 1 and built.build["skipped"] == {"unreadable_file": 1}
    data = tmp_path / "data"
    Manifest([_one_shard(data)]).save(data)
    (data / shard_name(0)).unlink()
    os.mkfifo(data / shard_name(0))
    assert not verify_dataset(data)["ok"]
    cfg = cfg_for(data, "data.verify_checksums=true", "train.micro_batch=2")
    loader = build_loader(cfg, "eval", path=str(data), infinite=False)
    assert [k for batch in loader for k in batch["keys"]] == [] and loader.error_counts()


# ----- a full disk: the shard's path and the OS error, no partial file -----------------------------------------------
def test_a_shard_that_cannot_be_written_names_its_path_and_the_cause(tmp_path):
    from maws_scale.errors import WriteError

    (tmp_path / f".{shard_name(0)}.tmp").symlink_to("/dev/full")  # every write there fails with ENOSPC
    with pytest.raises(WriteError, match=rf"cannot write shard {tmp_path / shard_name(0)}: .*No space left on device"):
        write_shard(tmp_path / shard_name(0), [{"key": "k", "image": _png(), "tags": []}])
    assert not (tmp_path / shard_name(0)).exists() and not (tmp_path / f".{shard_name(0)}.tmp").exists()


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("labels.json", '{"classes": ' + DEEP + "}"),
        ("vocab.json", '{"tags": ' + DEEP + "}"),
        ("vocab.json", '{"tags": ["a"], "counts": [1e999]}'),
    ],
)
def test_a_deeply_nested_or_overflowing_label_map_or_vocabulary_is_refused_naming_it(tmp_path, name, text):
    from maws_scale.data.labels import load_vocab
    from maws_scale.data.partition import load_label_map

    (tmp_path / name).write_text(text)
    with pytest.raises(DatasetError, match=rf"{name}: malformed"):
        (load_label_map if name == "labels.json" else load_vocab)(tmp_path / name)
