"""Partitioned builds through submitit, merge, map-reduce vocab: K parts (one killed, resumed) equal one whole build."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from maws_scale.data.build import build_dataset
from maws_scale.data.labels import build_vocab, count_tags
from maws_scale.data.merge import merge_parts
from maws_scale.data.partition import (
    LABELS,
    ClusterOptions,
    Partition,
    bucket,
    build_part,
    make_executor,
    submit_parts,
    wait_parts,
)
from maws_scale.data.shards import DatasetError, load_manifest, open_shard, sha256_file
from maws_scale.data.sources import FolderSource, JsonlSource

K = 4
SHARD = 300  # bytes (the PNGs are ~80 B): a few images per shard, several shards per part
CLASSES = ("ant", "bee", "cat", "dog", "eel")


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8 + seed % 5, 6 + seed % 3), (seed * 37 % 256, seed * 11 % 256, 90)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """60 PNGs in 5 class folders, some nested, one broken file."""
    root = tmp_path / "in"
    for i in range(60):
        folder = root / CLASSES[i % 5] / ("deep" if i % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{i:03d}.png").write_bytes(_png(i))
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    return root


def _rows(directory: Path) -> list[tuple]:
    """Every record as (key, label, tags, sha256 of the image, width, height), sorted by key."""
    rows = []
    for shard in load_manifest(directory).shards:
        for r in open_shard(directory / shard.file).to_pylist():
            image = hashlib.sha256(r["image"]).hexdigest()
            rows.append((r["key"], r["label"], tuple(r["tags"]), image, r["width"], r["height"]))
    return sorted(rows)


def _kill_part_once(root: Path, output: Path, part: Partition) -> FolderSource:
    """A folder source whose ``part`` task SIGKILLs itself once, after that part finished its first shard."""
    marker = output.parent / "kill-once"
    marker.touch()
    build_dir = output / part.dirname / ".build"

    class KilledOnce(FolderSource):
        def records(self, task, skipped):
            mine = bucket(task[0][0], part.count) == part.index
            if mine and marker.exists() and any(build_dir.glob("shard-*.json")):
                marker.unlink()
                os.kill(os.getpid(), signal.SIGKILL)
            return FolderSource.records(self, task, skipped)

    return KilledOnce(str(root))


def test_k_parts_with_a_killed_task_resumed_equal_one_build(tree, tmp_path):
    whole = build_dataset(FolderSource(str(tree)), tmp_path / "whole", shard_size=SHARD, progress=False)
    out = tmp_path / "parts"
    executor = make_executor(ClusterOptions("local", folder=str(tmp_path / "submitit" / "%j")), out)
    killed = Partition(2, K)

    jobs = submit_parts(_kill_part_once(tree, out, killed), out, K, executor, shard_size=SHARD)
    assert [p.index for p, _ in jobs] == [0, 1, 2, 3]
    failed = wait_parts(jobs)
    assert list(failed) == [killed.dirname]
    kept = {p.name: p.stat().st_mtime_ns for p in (out / killed.dirname).glob("shard-*.arrow")}
    assert kept and not (out / killed.dirname / "manifest.json").exists()
    with pytest.raises(DatasetError, match=f"{killed.dirname}: part is half-built"):
        merge_parts(out)

    jobs = submit_parts(FolderSource(str(tree)), out, K, executor, shard_size=SHARD)
    assert [p.index for p, _ in jobs] == [2]  # finished parts are not rebuilt
    assert wait_parts(jobs) == {}
    assert all((out / killed.dirname / n).stat().st_mtime_ns == ns for n, ns in kept.items())  # resumed, not redone
    merged = merge_parts(out)

    assert _rows(out) == _rows(tmp_path / "whole") and len(_rows(out)) == 60
    assert merged.records == whole.records and merged.build["skipped"] == whole.build["skipped"] == {
        "unreadable_image": 1
    }
    assert json.loads((out / LABELS).read_text())["classes"] == list(CLASSES)
    assert all(sha256_file(out / s.file) == s.sha256 for s in load_manifest(out).shards)
    assert len(merged.build["merged"]) == K and all(m["records"] > 0 for m in merged.build["merged"])
    # map-reduce vocabulary over the parts (2 processes) = counting the whole build
    assert count_tags(out, workers=2) == count_tags(tmp_path / "whole")
    assert build_vocab(out, min_count=1, workers=2)[1] == build_vocab(tmp_path / "whole", min_count=1)[1]


def _built_parts(tree: Path, out: Path, count: int = 2) -> Path:
    for i in range(count):
        build_part(FolderSource(str(tree)), out, Partition(i, count), shard_size=SHARD)
    return out


def test_merge_refuses_a_missing_part_and_a_part_listed_twice(tree, tmp_path):
    out = _built_parts(tree, tmp_path / "out")
    assert merge_parts(out).records == 60
    with pytest.raises(DatasetError, match="part-00001-of-00002: part listed twice"):
        merge_parts(out, [out, out / "part-00001-of-00002"])
    shutil.rmtree(out / "part-00001-of-00002")
    with pytest.raises(DatasetError, match="part-00001-of-00002: part missing"):
        merge_parts(out)
    (out / "part-00000-of-00003").mkdir()
    with pytest.raises(DatasetError, match="different partition counts"):
        merge_parts(out)
    with pytest.raises(DatasetError, match="no part-IIIII-of-KKKKK directories"):
        merge_parts(tmp_path, [tree])


def test_merge_refuses_a_part_with_another_schema_or_label_map(tree, tmp_path):
    out = _built_parts(tree, tmp_path / "out")
    manifest_path = out / "part-00001-of-00002" / "manifest.json"
    good = manifest_path.read_text()
    raw = json.loads(good)
    manifest_path.write_text(json.dumps({**raw, "columns": raw["columns"][:-1]}))
    with pytest.raises(DatasetError, match="part-00001-of-00002: columns"):
        merge_parts(out)
    raw["build"]["options"]["label_map"] = "0123456789abcdef"
    manifest_path.write_text(json.dumps(raw))
    with pytest.raises(DatasetError, match="part-00001-of-00002: built from other input or options"):
        merge_parts(out)
    manifest_path.write_text(good)
    # a second build (appended input) must use the same label map
    other = tmp_path / "out" / "more"
    build_part(FolderSource(str(tree)), other, Partition(0, 1), shard_size=SHARD)
    assert merge_parts(out, [out, other]).records == 120
    (other / LABELS).write_text(json.dumps({"classes": list(reversed(CLASSES))}))
    with pytest.raises(DatasetError, match=r"more/labels\.json: label map differs"):
        merge_parts(out, [out, other])


def test_parts_use_the_global_label_map_fixed_before_they_build(tree, tmp_path):
    out = tmp_path / "out"
    (out).mkdir()
    (out / LABELS).write_text(json.dumps({"classes": ["zebra", *CLASSES]}))  # e.g. the map of an earlier build
    build_part(FolderSource(str(tree)), out, Partition(0, 2), shard_size=SHARD)
    labels = {r[0].split("/")[0]: r[1] for r in _rows(out / "part-00000-of-00002")}
    assert labels and all(labels[name] == CLASSES.index(name) + 1 for name in labels)
    (tree / "fox").mkdir()
    (tree / "fox" / "a.png").write_bytes(_png(1))
    with pytest.raises(ValueError, match="class folder 'fox' is not in the global label map"):
        build_part(FolderSource(str(tree)), out, Partition(1, 2), shard_size=SHARD)


def test_every_input_entry_belongs_to_exactly_one_part(tree, tmp_path):
    lines = [json.dumps({"path": f"x/{i}.png", "tags": ["t"]}) for i in range(500)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    source = JsonlSource(str(tmp_path / "in.jsonl"))
    owned: Counter = Counter()
    for i in range(7):
        tasks, _ = source.plan(1 << 20, part=Partition(i, 7))
        owned.update(item[0] for task in tasks for item in task)
    assert len(owned) == 500 and set(owned.values()) == {1}
    assert bucket("x/1.png", 7) == bucket("x/1.png", 7) == 6  # fixed across processes and Python versions
    with pytest.raises(ValueError, match="need 0 <= partition < partitions"):
        Partition(4, 4)


def test_fashion_mnist_cannot_be_partitioned(tmp_path):
    from maws_scale.data.fashion_mnist import FashionMNISTSource

    with pytest.raises(ValueError, match="fashion-mnist source cannot be partitioned"):
        build_part(FashionMNISTSource(limit=10), tmp_path, Partition(0, 2))


def test_merged_manifest_streams_like_the_whole_build(tree, tmp_path, cfg_for):
    from maws_scale.data.loader import build_loader

    out = _built_parts(tree, tmp_path / "out", count=3)
    merge_parts(out)
    loader = build_loader(cfg_for(out), "eval", path=str(out), infinite=False)
    keys = [k for batch in loader for k in batch["keys"]]
    assert sorted(keys) == sorted(r[0] for r in _rows(out)) and loader.error_counts() == {}


def test_a_folder_of_jsonl_files_is_sliced_by_file_and_empty_parts_merge(tree, tmp_path):
    images = sorted(tree.rglob("*.png"))
    lists = tmp_path / "lists"
    lists.mkdir()
    for f in range(2):  # two JSONL files, 5 parts: at least 3 parts own no file
        lines = [json.dumps({"path": str(p), "tags": [p.parent.name], "key": p.stem}) for p in images[f::2]]
        (lists / f"{f}.jsonl").write_text("\n".join(lines) + "\n")
    whole = build_dataset(JsonlSource(str(lists)), tmp_path / "whole", shard_size=SHARD, progress=False)
    out = tmp_path / "parts"
    sizes = [build_part(JsonlSource(str(lists)), out, Partition(i, 5), shard_size=SHARD)["records"] for i in range(5)]
    assert sizes.count(0) >= 3 and sum(sizes) == whole.records == 60
    assert merge_parts(out).records == 60 and _rows(out) == _rows(tmp_path / "whole")


def test_cli_builds_all_parts_locally_and_merges(tree, tmp_path, capsys):
    from maws_scale.cli import main

    base = ["data", "build", "--source", "folder", "--input", str(tree), "--quiet", "--shard-size", str(SHARD)]
    assert main([*base, "--output", str(tmp_path / "a"), "--partitions", "3"]) == 1
    assert "needs --partition I (one part here), --local or --slurm" in capsys.readouterr().err
    assert main([*base, "--output", str(tmp_path / "b"), "--partitions", "3", "--local"]) == 0
    assert load_manifest(tmp_path / "b").build["merged"][2]["part"] == "part-00002-of-00003"
    merge_parts(_built_parts(tree, tmp_path / "c", count=1))
    assert _rows(tmp_path / "b") == _rows(tmp_path / "c")
    assert main([*base, "--output", str(tmp_path / "b"), "--partitions", "3", "--local"]) == 0  # all built: no-op
    assert "submitted 0 of 3 parts (3 already built)" in capsys.readouterr().err


def test_slurm_dry_run_prints_one_job_array_over_the_parts(tree, tmp_path, capsys):
    from maws_scale.cli import main

    argv = ["data", "build", "--source", "folder", "--input", str(tree), "--output", str(tmp_path / "o")]
    argv += ["--partitions", "300", "--slurm", "--dry-run", "--slurm-partition", "cpu", "--workers", "8"]
    assert main(argv) == 0
    script = capsys.readouterr().out
    for line in ("--array=0-299%256", "--cpus-per-task=8", "--partition=cpu", "--ntasks-per-node=1"):
        assert f"#SBATCH {line}" in script
    assert not (tmp_path / "o").exists()  # nothing written, nothing submitted


@pytest.mark.parametrize("edit", ["reorder", "add", "remove"])
def test_merge_refuses_a_labels_json_edited_after_the_parts_were_built(tree, tmp_path, edit):
    out = _built_parts(tree, tmp_path / "out")
    classes = json.loads((out / LABELS).read_text())["classes"]
    if edit == "remove":
        (out / LABELS).unlink()
    else:
        edited = list(reversed(classes)) if edit == "reorder" else [*classes, "zebra"]
        (out / LABELS).write_text(json.dumps({"classes": edited}))
    with pytest.raises(DatasetError, match=r"out/labels\.json: not the label map part-00000-of-00002 was built with"):
        merge_parts(out)
