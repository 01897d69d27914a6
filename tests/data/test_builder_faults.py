"""One bad input never aborts a build: it becomes a counted bad record naming its file/line (issue items 4 and 6)."""

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

from maws_scale.data.build import build_dataset
from maws_scale.data.decode import decode_batch
from maws_scale.data.shards import DatasetError, open_shard
from maws_scale.data.sources import FolderSource, JsonlSource, WebDatasetSource
from maws_scale.data.verify import verify_dataset


def _png(value: int = 100) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _keys(root: Path) -> list[str]:
    return sorted(k for f in sorted(root.glob("shard-*.arrow")) for k in open_shard(f)["key"].to_pylist())


def _build(source, out: Path):
    return build_dataset(source, out, progress=False)


def test_jsonl_bad_values_and_bytes_are_counted_with_their_line(tmp_path, caplog):
    (tmp_path / "a.png").write_bytes(_png())
    lines = [
        json.dumps({"path": "a.png", "tags": ["ok"], "key": "good"}).encode(),
        json.dumps({"path": "a.png", "label": True, "key": "bool"}).encode(),
        json.dumps({"path": "a.png", "label": 2**70, "key": "huge"}).encode(),
        b'{"path": "a.png", "tags": ["\\ud800"], "key": "surrogate-tag"}',
        b'{"path": "a.png", "key": "\\udfff"}',
        b'{"path": "a.png", "key": "latin1-\xe9"}',  # one non-UTF-8 byte
        b"[1, 2]",
    ]
    manifest = tmp_path / "in.jsonl"
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level(logging.WARNING, logger="maws_scale.data"):
        built = _build(JsonlSource(str(manifest)), tmp_path / "out")
    assert _keys(tmp_path / "out") == ["good"]
    assert built.build["skipped"] == {"bad_jsonl_line": 6}
    for number in range(2, 8):
        assert f"in.jsonl:{number}:" in caplog.text


def test_folder_file_names_that_are_not_utf8_and_duplicate_stems_are_counted(tmp_path, caplog):
    cls = tmp_path / "in" / "cat"
    cls.mkdir(parents=True)
    (cls / "a.png").write_bytes(_png())
    (cls / "a.jpg").write_bytes(_png())  # same stem: the same key
    os.makedirs(os.fsencode(cls), exist_ok=True)
    with open(os.fsencode(cls) + b"/bad-\xff.png", "wb") as handle:
        handle.write(_png())
    with caplog.at_level(logging.WARNING, logger="maws_scale.data"):
        built = _build(FolderSource(str(tmp_path / "in")), tmp_path / "out")
    assert _keys(tmp_path / "out") == ["cat/a"]
    assert built.build["skipped"] == {"duplicate_key": 1, "bad_record": 1}
    assert "bad-\\udcff.png" in caplog.text or "bad-\\xff.png" in caplog.text


def _tar(path: Path, members: list[tuple[str | bytes, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name if isinstance(name, str) else name.decode("utf-8", "surrogateescape"))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("meta", [b'{"tags": 5}', b'{"tags": null}', b'{"tags": "notalist"}', b'{"tags": {"a": 1}}'])
def test_webdataset_tags_that_are_not_a_list_are_bad_records(tmp_path, meta):
    tar = _tar(
        tmp_path / "in.tar",
        [("good.png", _png()), ("good.json", b'{"tags": ["a"]}'), ("x.png", _png()), ("x.json", meta)],
    )
    built = _build(WebDatasetSource(str(tar)), tmp_path / "out")
    assert _keys(tmp_path / "out") == ["good"]
    assert built.build["skipped"] == {"bad_metadata": 1}


def test_webdataset_member_names_that_are_not_utf8_are_bad_records(tmp_path):
    tar = _tar(tmp_path / "in.tar", [("good.png", _png()), (b"bad-\xff.png", _png())])
    built = _build(WebDatasetSource(str(tar)), tmp_path / "out")
    assert _keys(tmp_path / "out") == ["good"] and built.build["skipped"] == {"bad_record": 1}


@pytest.mark.parametrize("content", [b"", b"this is not a tar file" * 50])
def test_an_empty_or_non_tar_webdataset_input_is_refused_not_built_empty(tmp_path, content):
    (tmp_path / "in.tar").write_bytes(content)
    with pytest.raises(DatasetError, match="no usable records"):
        _build(WebDatasetSource(str(tmp_path / "in.tar")), tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_16_bit_pngs_keep_their_grey_levels_through_build_verify_and_decode(tmp_path):
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    (tmp_path / "in" / "c").mkdir(parents=True)
    (tmp_path / "in" / "c" / "ramp.png").write_bytes(buffer.getvalue())
    _build(FolderSource(str(tmp_path / "in")), tmp_path / "out")
    assert verify_dataset(tmp_path / "out")["ok"]
    image = open_shard(next((tmp_path / "out").glob("shard-*.arrow")))["image"][0].as_py()
    out, ok, _ = decode_batch([image], np.array([0]), 0, 32, train=False)
    assert ok.all() and abs(float(out.mean()) - float(ramp.mean()) / 257) < 2  # not all white (255)
    assert out.min() < 10 and out.max() > 245
