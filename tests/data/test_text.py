"""Image-text data: captions from webdataset / JSONL / folder sources with bad text counted, the tokenizer trained
at build time and stored with the data set, and ``tokens`` from the loader."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maws_scale.config import load_config
from maws_scale.data import build_loader
from maws_scale.data.build import build_dataset
from maws_scale.data.shards import load_manifest, open_shard
from maws_scale.data.sources import FolderSource, JsonlSource, WebDatasetSource
from maws_scale.data.text import (
    BOS_ID,
    EOS_ID,
    MAX_CAPTION_CHARS,
    PAD_ID,
    CaptionEncoder,
    TextInfo,
    clean_captions,
    pick_captions,
    train_tokenizer,
)

WORDS = ["red", "blue", "green", "cat", "dog", "bird", "small", "big", "a", "photo", "of"]


def png(seed: int, side: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def caption(i: int) -> str:
    rng = np.random.default_rng(i)
    return " ".join(rng.choice(WORDS, size=int(rng.integers(3, 7))))


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def webdataset_text(tmp_path_factory) -> Path:
    """40 good samples (txt caption, some with two lines) and four bad ones: bad UTF-8, empty, over-long, json-only
    caption list with one empty entry (kept: its other caption is fine)."""
    root = tmp_path_factory.mktemp("wds")
    with tarfile.open(root / "part-0.tar", "w") as tar:
        for i in range(40):
            add(tar, f"s{i:03d}.png", png(i))
            text = caption(i) + (f"\n{caption(i + 100)}" if i % 4 == 0 else "")
            add(tar, f"s{i:03d}.txt", text.encode())
        add(tar, "bad_utf8.png", png(100))
        add(tar, "bad_utf8.txt", b"\xff\xfe caption")
        add(tar, "empty.png", png(101))
        add(tar, "empty.txt", b"   \n ")
        add(tar, "long.png", png(102))
        add(tar, "long.txt", ("word " * MAX_CAPTION_CHARS).encode())
        add(tar, "json.png", png(103))
        add(tar, "json.json", json.dumps({"captions": ["", "a small red bird"], "tags": ["bird"]}).encode())
    out = root / "built"
    build_dataset(WebDatasetSource(str(root / "part-0.tar"), captions=True), out, progress=False)
    return out


def test_clean_captions_counts_every_kind_of_bad_text():
    skipped: Counter = Counter()
    kept = clean_captions(["  a  cat ", "", "x" * (MAX_CAPTION_CHARS + 1), b"\xff", 3, b"ok bytes"], "rec", skipped)
    assert kept == ["a cat", "ok bytes"]
    assert skipped == Counter(caption_empty=1, caption_too_long=1, caption_bad_utf8=1, caption_not_text=1)


def test_webdataset_captions_and_bad_records_are_counted(webdataset_text):
    manifest = load_manifest(webdataset_text)
    assert manifest.records == 41  # 40 + the json sample
    skipped = manifest.build["skipped"]
    assert skipped["caption_bad_utf8"] == 1
    assert skipped["caption_empty"] == 2  # the whitespace-only txt and the json's empty entry
    assert skipped["caption_too_long"] == 1
    assert skipped["no_caption"] == 3
    table = open_shard(webdataset_text / manifest.shards[0].file)
    rows = dict(zip(table["key"].to_pylist(), table["captions"].to_pylist()))
    assert rows["s000"] == [caption(0), caption(100)]
    assert rows["s001"] == [caption(1)]
    assert rows["json"] == ["a small red bird"]


def test_jsonl_and_folder_sources_read_captions(tmp_path):
    (tmp_path / "img").mkdir()
    lines = []
    for i in range(3):
        (tmp_path / "img" / f"{i}.png").write_bytes(png(i))
        (tmp_path / "img" / f"{i}.txt").write_text(f"sidecar {i}\n")
        lines.append(json.dumps({"path": f"img/{i}.png", "caption": f"line {i}", "captions": [f"extra {i}"]}))
    lines.append(json.dumps({"path": "img/0.png", "key": "nocap"}))
    (tmp_path / "set.jsonl").write_text("\n".join(lines))
    jsonl = build_dataset(JsonlSource(str(tmp_path / "set.jsonl"), captions=True), tmp_path / "a", progress=False)
    assert jsonl.records == 3 and jsonl.build["skipped"] == {"no_caption": 1}
    table = open_shard(tmp_path / "a" / jsonl.shards[0].file)
    assert table["captions"].to_pylist()[0] == ["line 0", "extra 0"]
    folder = build_dataset(
        FolderSource(str(tmp_path / "img"), tags_file=_tags(tmp_path), captions=True), tmp_path / "b", progress=False
    )
    table = open_shard(tmp_path / "b" / folder.shards[0].file)
    assert sorted(table["captions"].to_pylist()) == [["sidecar 0"], ["sidecar 1"], ["sidecar 2"]]


def _tags(tmp_path: Path) -> str:
    path = tmp_path / "tags.tsv"
    path.write_text("".join(f"{i}.png\tthing\n" for i in range(3)))
    return str(path)


def test_tokenizer_is_trained_offline_and_recorded_in_the_manifest(webdataset_text):
    text = train_tokenizer(webdataset_text, vocab_size=300, context_length=12)
    assert (webdataset_text / "tokenizer.json").is_file()
    manifest = json.loads((webdataset_text / "manifest.json").read_text())
    assert manifest["text"] == text
    assert text["vocab_size"] <= 300 and text["context_length"] == 12 and text["captions"] == 51
    info = TextInfo.of(webdataset_text)
    assert (info.vocab_size, info.context_length) == (text["vocab_size"], 12)
    encode = CaptionEncoder(info.path, 12)
    ids = encode(["a red cat", "big " * 40])
    assert ids.shape == (2, 12) and ids.dtype == np.int64
    assert ids[0, 0] == BOS_ID and EOS_ID in ids[0] and ids[0, -1] == PAD_ID
    assert ids[1, 0] == BOS_ID and ids[1, -1] == EOS_ID  # cut, <eos> kept
    assert ids.max() < info.vocab_size


def test_tokenizer_needs_captions(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "0.png").write_bytes(png(0))
    build_dataset(FolderSource(str(tmp_path / "img"), tags_file=_tags_one(tmp_path)), tmp_path / "d", progress=False)
    with pytest.raises(Exception, match=r"captions"):
        train_tokenizer(tmp_path / "d", vocab_size=300, context_length=8)


def _tags_one(tmp_path: Path) -> str:
    path = tmp_path / "tags.tsv"
    path.write_text("0.png\tthing\n")
    return str(path)


def test_pick_captions_is_deterministic_per_position():
    caps = [["a", "b", "c"], None, ["only"]]
    positions = np.array([5, 6, 7])
    first = pick_captions(caps, positions, seed=0, train=True)
    assert first == pick_captions(caps, positions, seed=0, train=True)
    assert first[1] is None and first[2] == "only"
    assert pick_captions(caps, positions, seed=0, train=False)[0] == "a"
    seen = {pick_captions([["a", "b", "c"]], np.array([p]), seed=0, train=True)[0] for p in range(40)}
    assert seen == {"a", "b", "c"}


def test_clip_loader_yields_tokens(webdataset_text):
    train_tokenizer(webdataset_text, vocab_size=300, context_length=12)
    cfg = load_config(
        None,
        [
            "stage=clip",
            "model.name=vit_micro_p4",
            f"data.path={webdataset_text}",
            "data.num_workers=0",
            "train.micro_batch=8",
            "train.global_batch=8",
        ],
    )
    batch = next(iter(build_loader(cfg, stage="clip")))
    assert batch["images"].shape == (8, 3, 16, 16)
    assert batch["tokens"].shape == (8, 12) and batch["tokens"].dtype == torch.int64
    assert bool((batch["tokens"][:, 0] == BOS_ID).all())


def test_cli_builds_captions_and_trains_the_tokenizer(tmp_path, webdataset_text):
    from maws_scale.cli import main

    tar = next(webdataset_text.parent.glob("*.tar"))
    out = tmp_path / "cli"
    assert (
        main(
            [
                "data",
                "build",
                "--source",
                "webdataset",
                "--input",
                str(tar),
                "--output",
                str(out),
                "--captions",
                "--quiet",
            ]
        )
        == 0
    )
    assert main(["data", "tokenizer", str(out), "--vocab-size", "280", "--context-length", "10"]) == 0
    assert TextInfo.of(out).context_length == 10
    assert main(["data", "tokenizer", str(out), "--vocab-size", "100"]) == 1  # below the byte alphabet: refused


def test_a_replaced_tokenizer_is_refused_by_its_sha256(tmp_path, webdataset_text):
    import shutil

    from maws_scale.config import ConfigError
    from maws_scale.data.shards import DatasetError
    from maws_scale.train.preflight import preflight

    data, other = tmp_path / "data", tmp_path / "other"
    shutil.copytree(webdataset_text, data)
    shutil.copytree(webdataset_text, other)
    train_tokenizer(data, vocab_size=300, context_length=12)
    train_tokenizer(other, vocab_size=270, context_length=12)  # another valid tokenizer (fewer merges)
    shutil.copy(other / "tokenizer.json", data / "tokenizer.json")
    with pytest.raises(DatasetError, match=r"tokenizer.json: sha256 differs .*replaced after it was trained"):
        TextInfo.of(data)
    cfg = load_config(None, ["stage=clip", "model.name=vit_micro_p4", f"data.path={data}", "train.micro_batch=8"])
    with pytest.raises(ConfigError, match=r"sha256 differs"):  # before any process starts (the config check reads no
        preflight([cfg], 1)  # data set: parallel/ and config stay pure, train/preflight.py reads it)


@pytest.mark.parametrize("special", ["<pad>", "<eos>", "<bos>", "a<pad>b"])
def test_special_token_text_in_a_caption_is_encoded_as_plain_text(webdataset_text, special):
    text = train_tokenizer(webdataset_text, vocab_size=300, context_length=24)
    ids = CaptionEncoder(str(webdataset_text / text["tokenizer"]), 24)([f"a red {special} cat"])[0].tolist()
    end = ids.index(EOS_ID)  # the one <eos>: the end-of-text pooling position
    assert ids[0] == BOS_ID and ids.count(BOS_ID) == 1 and ids.count(EOS_ID) == 1
    assert PAD_ID not in ids[:end] and set(ids[end + 1 :]) == {PAD_ID}
