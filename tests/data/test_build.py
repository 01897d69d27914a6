"""Builders: Fashion-MNIST (mosaic/single, noise, clean labels), folder / JSONL / webdataset sources, resume."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maws_scale.data import build as build_module
from maws_scale.data.build import build_dataset, group_by_size, parse_size
from maws_scale.data.fashion_mnist import CLASSES, DEFAULT_DIR, FashionMNISTSource, corrupt, load_split
from maws_scale.data.shards import DatasetError, load_manifest, open_shard, sha256_file
from maws_scale.data.sources import FolderSource, JsonlSource, WebDatasetSource

needs_fmnist = pytest.mark.skipif(
    not Path(DEFAULT_DIR, "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed"
)


def _table(directory: Path):
    import pyarrow as pa

    return pa.concat_tables(open_shard(directory / s.file) for s in load_manifest(directory).shards)


@needs_fmnist
def test_mosaic_records_match_the_source_images(tmp_path):
    source = FashionMNISTSource(split="test", noise=0.0, limit=40, seed=3)
    manifest = build_dataset(source, tmp_path, progress=False)
    assert manifest.records == 40 and manifest.build["options"]["label"] == "class of the top-left tile"
    table = _table(tmp_path)
    images, labels = load_split(DEFAULT_DIR, "test")
    tiles = source._draws()["tiles"]
    for i in (0, 17, 39):
        pixels = np.asarray(Image.open(io.BytesIO(table["image"][i].as_py())))
        assert pixels.shape == (56, 56)
        assert np.array_equal(pixels[:28, :28], images[tiles[i, 0]])  # top-left
        assert np.array_equal(pixels[28:, 28:], images[tiles[i, 3]])  # bottom-right
        row = table.slice(i, 1).to_pylist()[0]
        assert row["label"] == labels[tiles[i, 0]]
        assert row["clean_tags"] == [CLASSES[c] for c in sorted(set(labels[tiles[i]].tolist()))]
        assert row["tags"] == row["clean_tags"]  # noise 0


@needs_fmnist
def test_noise_rate_and_determinism(tmp_path):
    source = FashionMNISTSource(noise=0.3, limit=2000, seed=0)
    build_dataset(source, tmp_path / "a", progress=False)
    build_dataset(
        FashionMNISTSource(noise=0.3, limit=2000, seed=0), tmp_path / "b", shard_size=100_000, workers=2, progress=False
    )
    a, b = _table(tmp_path / "a"), _table(tmp_path / "b")
    assert a.to_pylist() == b.to_pylist()  # sharding and parallelism do not change a record
    noisy = np.mean([t != c for t, c in zip(a["tags"].to_pylist(), a["clean_tags"].to_pylist())])
    assert 0.25 < noisy < 0.35


@needs_fmnist
def test_single_variant_has_the_28px_image_and_its_label(tmp_path):
    build_dataset(FashionMNISTSource(split="test", variant="single", limit=10), tmp_path, progress=False)
    table = _table(tmp_path)
    images, labels = load_split(DEFAULT_DIR, "test")
    assert table["label"].to_pylist() == labels[:10].tolist()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(table["image"][4].as_py()))), images[4])
    assert table["width"].to_pylist() == [28] * 10


def test_corrupt_ops():
    assert corrupt([1, 4], 0, 0.9, 0.0) == [1]  # drop
    assert corrupt([1, 4], 1, 0.0, 0.0) == [0, 1, 4]  # add the first absent class
    assert corrupt([1, 4], 2, 0.0, 0.99) == [4, 9]  # flip 1 -> last absent class
    assert corrupt([3], 0, 0.5, 0.5) == []


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="--noise"):
        FashionMNISTSource(noise=1.5)
    with pytest.raises(ValueError, match="--split"):
        FashionMNISTSource(split="val")


def test_parse_size_and_grouping():
    assert parse_size("512MB") == 512 * 1024**2 and parse_size("1GiB") == 1024**3 and parse_size("100") == 100
    with pytest.raises(ValueError, match="not a size"):
        parse_size("big")
    assert group_by_size(list("abcde"), [4, 4, 4, 10, 1], 8) == [["a", "b"], ["c"], ["d"], ["e"]]


@needs_fmnist
def test_interrupted_build_resumes_and_keeps_finished_shards(tmp_path, monkeypatch):
    source = FashionMNISTSource(limit=300, seed=2)
    real = build_module.write_shard
    calls = []

    def failing(path, records):
        calls.append(Path(path).name)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the machine went away mid-build
        return real(path, records)

    monkeypatch.setattr(build_module, "write_shard", failing)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(source, tmp_path, shard_size=120_000, progress=False)
    assert not (tmp_path / "manifest.json").exists()
    kept = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*.arrow")}
    assert len(kept) == 2
    monkeypatch.setattr(build_module, "write_shard", real)
    manifest = build_dataset(source, tmp_path, shard_size=120_000, progress=False)
    assert manifest.records == 300 and len(manifest.shards) > 3
    assert all((tmp_path / name).stat().st_mtime_ns == ns for name, ns in kept.items())
    assert all(sha256_file(tmp_path / s.file) == s.sha256 for s in manifest.shards)
    with pytest.raises(DatasetError, match="different input"):
        build_dataset(FashionMNISTSource(limit=301, seed=2), tmp_path, shard_size=120_000, progress=False)


def _jpeg(color, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_folder_source_with_class_folders(tmp_path):
    for cls, color in (("cat", "red"), ("dog", "blue")):
        (tmp_path / "in" / cls / "sub").mkdir(parents=True)
        for i in range(3):
            (tmp_path / "in" / cls / "sub" / f"{i}.jpg").write_bytes(_jpeg(color))
    (tmp_path / "in" / "dog" / "broken.jpg").write_bytes(b"not an image")
    manifest = build_dataset(FolderSource(str(tmp_path / "in")), tmp_path / "out", progress=False)
    assert manifest.records == 6 and manifest.build["skipped"] == {"unreadable_image": 1}
    rows = _table(tmp_path / "out").to_pylist()
    assert {(r["key"], r["label"], tuple(r["tags"])) for r in rows} >= {
        ("cat/sub/0", 0, ("cat",)),
        ("dog/sub/2", 1, ("dog",)),
    }
    assert rows[0]["image"] == _jpeg("red") and (rows[0]["width"], rows[0]["height"]) == (40, 30)  # bytes as given


def test_folder_source_with_tags_file(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(_jpeg("green"))
    (tmp_path / "img" / "b.jpg").write_bytes(_jpeg("white"))
    tags = tmp_path / "tags.tsv"
    tags.write_text("a.jpg\t#beach, #sun\nb.jpg\t\nno tab here\nmissing.jpg\tx\n")
    manifest = build_dataset(FolderSource(str(tmp_path / "img"), str(tags)), tmp_path / "out", progress=False)
    rows = _table(tmp_path / "out").to_pylist()
    assert [(r["key"], r["tags"], r["label"]) for r in rows] == [("a", ["#beach", "#sun"], None), ("b", [], None)]
    assert manifest.build["skipped"] == {"bad_tags_line": 1, "unreadable_file": 1}


def test_jsonl_source(tmp_path):
    (tmp_path / "a.jpg").write_bytes(_jpeg("red"))
    lines = [
        json.dumps({"path": "a.jpg", "tags": ["x", "y"], "label": 2}),
        json.dumps({"path": "a.jpg", "tags": "x"}),  # wrong type
        "{not json",
        json.dumps({"path": "a.jpg", "key": "second"}),
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    manifest = build_dataset(JsonlSource(str(tmp_path / "m.jsonl")), tmp_path / "out", progress=False)
    rows = _table(tmp_path / "out").to_pylist()
    assert [(r["key"], r["tags"], r["label"]) for r in rows] == [("a", ["x", "y"], 2), ("second", [], None)]
    assert manifest.build["skipped"] == {"bad_jsonl_line": 2}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_webdataset_source(tmp_path):
    (tmp_path / "wds").mkdir()
    for shard in range(2):
        with tarfile.open(tmp_path / "wds" / f"part-{shard}.tar", "w") as tar:
            for i in range(3):
                key = f"s{shard}/{i:03d}"
                _add(tar, f"{key}.jpg", _jpeg("red"))
                _add(tar, f"{key}.json", json.dumps({"tags": ["t", f"n{i}"]}).encode())
                _add(tar, f"{key}.cls", str(i).encode())
            _add(tar, f"s{shard}/orphan.json", b"{}")
    manifest = build_dataset(WebDatasetSource(str(tmp_path / "wds")), tmp_path / "out", shard_size=1, progress=False)
    assert manifest.records == 6 and len(manifest.shards) == 2
    assert manifest.build["skipped"] == {"no_image": 2}
    rows = _table(tmp_path / "out").to_pylist()
    assert rows[4]["key"] == "s1/001" and rows[4]["tags"] == ["t", "n1"] and rows[4]["label"] == 1
