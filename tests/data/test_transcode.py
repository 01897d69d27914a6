"""Build-time resize (--resize/--jpeg-quality) and raw-pixel shards (--encoding raw): every builder, the manifest,
merge refusals, the loader (crops, flips, exact resume, bad records) and verify."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from maws_scale.cli import main as cli_main
from maws_scale.data import build_loader
from maws_scale.data.build import build_dataset
from maws_scale.data.decode import crop_plan, decode_batch
from maws_scale.data.merge import merge_parts
from maws_scale.data.partition import Partition, build_part
from maws_scale.data.shards import DatasetError, load_manifest, open_shard
from maws_scale.data.sources import FolderSource, JsonlSource, WebDatasetSource
from maws_scale.data.transcode import ImageFormat, parse_resize, target_size
from maws_scale.data.verify import verify_dataset

SIZES = [(640, 480), (300, 900), (200, 150), (1024, 768), (97, 97)]


def _jpeg(size: tuple[int, int], seed: int, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    w, h = size
    # smooth content (gradients + a few blocks): resizing it is well defined, JPEG keeps it close
    x, y = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
    pixels = np.stack([x * 255, y * 255, (x * y) * 255], axis=-1) * rng.uniform(0.5, 1.0)
    image = Image.fromarray(pixels.astype(np.uint8))
    buffer = io.BytesIO()
    (image.convert(mode) if mode != "RGB" else image).save(
        buffer, format=fmt, **({"quality": 92} if fmt == "JPEG" else {})
    )
    return buffer.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for i, size in enumerate(SIZES * 4):
        (root / f"c{i % 2}").mkdir(exist_ok=True)
        (root / f"c{i % 2}" / f"{i:03d}.jpg").write_bytes(_jpeg(size, i))
    (root / "c0" / "gray.png").write_bytes(_jpeg((400, 300), 99, mode="L", fmt="PNG"))
    (root / "c1" / "broken.jpg").write_bytes(_jpeg((400, 300), 98)[:200])  # header readable, pixels truncated
    return root


def _records(out: Path) -> list[dict]:
    rows: list[dict] = []
    for shard in load_manifest(out).shards:
        rows += open_shard(out / shard.file).to_pylist()
    return rows


@pytest.mark.parametrize(
    ("size", "spec", "want"),
    [
        ((640, 480), "shorter:256", (341, 256)),
        ((480, 640), "shorter:256", (256, 341)),
        ((640, 480), "max:256", (256, 192)),
        ((200, 150), "shorter:256", (200, 150)),  # never upscales
        ((200, 150), "max:256", (200, 150)),
        ((640, 480), "square:64", (64, 64)),
        ((50, 80), "square:64", (50, 50)),  # the centred square, not upscaled
        ((640, 480), "none", (640, 480)),
    ],
)
def test_target_sizes_keep_the_aspect_and_never_upscale(size, spec, want):
    assert target_size(size, *parse_resize(spec))[0] == want


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"resize": "shorter"}, "--resize"),
        ({"resize": "short:256"}, "--resize"),
        ({"resize": "max:0"}, "--resize"),
        ({"encoding": "raw"}, "needs a --resize"),
        ({"encoding": "png"}, "--encoding"),
        ({"jpeg_quality": 80}, "--jpeg-quality"),
        ({"resize": "shorter:256", "jpeg_quality": 101}, "--jpeg-quality"),
        ({"resize": "square:64", "encoding": "raw", "jpeg_quality": 80}, "--jpeg-quality"),
    ],
)
def test_bad_formats_are_refused_naming_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImageFormat(**kwargs)


def test_cli_refuses_a_bad_format_before_writing(folder: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    code = cli_main(["data", "build", "--source", "folder", "--input", str(folder), "--output", str(out),
                     "--resize", "half", "--quiet"])  # fmt: skip
    assert code == 2 and not out.exists()
    assert "--resize" in capsys.readouterr().err


def test_resize_records_original_size_and_rule(folder: Path, tmp_path: Path):
    image = ImageFormat("shorter:256", jpeg_quality=85)
    manifest = build_dataset(FolderSource(str(folder), image=image), tmp_path / "out", progress=False)
    assert manifest.build["options"]["image"] == {"resize": "shorter:256", "jpeg_quality": 85, "encoding": "encoded"}
    assert manifest.build["skipped"] == {"unreadable_image": 1}  # the truncated JPEG: decoded here, counted
    rows = {r["key"]: r for r in _records(tmp_path / "out")}
    assert len(rows) == len(SIZES) * 4 + 1
    originals = {path.with_suffix("").relative_to(folder).as_posix(): path for path in folder.rglob("*.*")}
    for key, row in rows.items():
        stored = Image.open(io.BytesIO(row["image"]))
        assert stored.size == (row["width"], row["height"])
        orig = Image.open(originals[key])
        assert (row["orig_width"], row["orig_height"]) == orig.size
        want = target_size(orig.size, "shorter", 256)[0]
        assert stored.size == want
        if want == orig.size:  # small enough: the original bytes, untouched
            assert row["resize"] == "none" and row["image"] == originals[key].read_bytes()
        else:
            assert row["resize"] == "shorter:256" and stored.format == "JPEG" and stored.mode == "RGB"
            reference = np.asarray(Image.open(originals[key]).convert("RGB").resize(want, Image.Resampling.BICUBIC))
            assert np.abs(np.asarray(stored).astype(int) - reference).mean() < 3.0  # same picture, JPEG q85


def test_every_builder_takes_the_format(folder: Path, tmp_path: Path):
    image = ImageFormat("max:128")
    jsonl = tmp_path / "list.jsonl"
    files = sorted(p for p in folder.rglob("*.jpg") if p.name != "broken.jpg")
    jsonl.write_text("".join(json.dumps({"path": str(p), "tags": ["t"], "caption": "a photo"}) + "\n" for p in files))
    tar_path = tmp_path / "set.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i, path in enumerate(files):
            for ext, data in (("jpg", path.read_bytes()), ("txt", b"a photo")):
                info = tarfile.TarInfo(f"{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    sources = {
        "jsonl": JsonlSource(str(jsonl), image=image),
        "jsonl_captions": JsonlSource(str(jsonl), captions=True, image=image),
        "webdataset_captions": WebDatasetSource(str(tar_path), captions=True, image=image),
    }
    for name, source in sources.items():
        manifest = build_dataset(source, tmp_path / name, progress=False)
        assert manifest.build["options"]["image"]["resize"] == "max:128", name
        rows = _records(tmp_path / name)
        assert len(rows) == len(files), name
        assert all(max(r["width"], r["height"]) <= 128 and r["orig_width"] >= r["width"] for r in rows), name


def _raw_dir(folder: Path, out: Path, side: int = 32) -> Path:
    build_dataset(
        FolderSource(str(folder), image=ImageFormat(f"square:{side}", encoding="raw")),
        out,
        shard_size=20_000,
        progress=False,
    )
    return out


def test_raw_records_hold_the_centre_square_pixels(folder: Path, tmp_path: Path):
    out = _raw_dir(folder, tmp_path / "raw")
    rows = _records(out)
    for row in rows:
        assert len(row["image"]) == row["width"] * row["height"] * 3 == 32 * 32 * 3
    gray = next(r for r in rows if r["key"].endswith("gray"))
    pixels = np.frombuffer(gray["image"], dtype=np.uint8).reshape(32, 32, 3)
    assert (pixels[..., 0] == pixels[..., 1]).all()  # grayscale became RGB
    assert verify_dataset(out)["ok"] and not verify_dataset(out)["bad_records"]


def test_raw_loader_crops_like_the_encoded_path_and_resumes_exactly(folder: Path, tmp_path: Path, cfg_for):
    out = _raw_dir(folder, tmp_path / "raw")
    cfg = cfg_for(out, "model.img_size=32", "model.name=vit_tiny_p4", "train.micro_batch=4")
    loader = build_loader(cfg, "mae")
    assert loader.spec.encoding == "raw"
    batches = [b for _, b in zip(range(6), loader)]
    assert all(b["images"].shape == (4, 3, 32, 32) for b in batches)
    # the same crops as the decode path's rule: recompute batch 0 by hand from the stored pixels
    rows = {r["key"]: r for r in _records(out)}
    positions = np.asarray(batches[0]["sample_ids"])
    boxes, flips, _ = crop_plan(np.full((4, 2), 32), positions, cfg.seed, True, tuple(cfg.data.crop_scale), True)
    for i, key in enumerate(batches[0]["keys"]):
        pixels = np.frombuffer(rows[key]["image"], dtype=np.uint8).reshape(32, 32, 3)
        left, top, w, h = (int(v) for v in boxes[i])
        want = np.asarray(
            Image.fromarray(pixels).resize((32, 32), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))
        )
        want = want[:, ::-1] if flips[i] else want
        assert np.array_equal(batches[0]["images"][i].permute(1, 2, 0).numpy(), want)
    # exact resume from the state after batch 2
    resumed = build_loader(cfg, "mae")
    fresh = build_loader(cfg, "mae")
    for _, _b in zip(range(3), fresh):
        pass
    resumed.load_state_dict(fresh.state_dict())
    for before, after in zip(batches[3:], resumed):
        assert before["keys"] == after["keys"] and np.array_equal(before["images"], after["images"])


def test_raw_bad_records_are_skipped_and_counted():
    size = np.array([[8, 8], [8, 8], [8, 8], [-1, -1]])
    good = np.arange(8 * 8 * 3, dtype=np.uint8).tobytes()
    images = [good, good[:-3], b"", good]
    out, ok, reasons = decode_batch(images, np.arange(4), 0, 8, True, sizes=size, encoding="raw")
    assert ok.tolist() == [True, False, False, False]
    assert reasons == [None, "corrupt_image", "empty_image", "corrupt_image"]
    assert not out[1:].any()


def test_raw_whole_image_at_output_size_is_a_copy():
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out, ok, _ = decode_batch([pixels.tobytes()], np.zeros(1), 0, 8, train=False, sizes=np.array([[8, 8]]),
                              encoding="raw")  # fmt: skip
    assert ok.all() and np.array_equal(out[0], pixels)


def test_verify_counts_a_raw_record_of_the_wrong_length(folder: Path, tmp_path: Path):
    out = _raw_dir(folder, tmp_path / "raw")
    shard = load_manifest(out).shards[0]
    table = open_shard(out / shard.file)
    images = table["image"].to_pylist()
    images[0] = images[0][:-1]
    broken = table.set_column(table.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))
    bad_dir = tmp_path / "bad"
    build_dataset(FolderSource(str(folder), image=ImageFormat("square:32", encoding="raw")), bad_dir,
                  shard_size=20_000, progress=False)  # fmt: skip
    from maws_scale.data.shards import write_shard

    info = write_shard(bad_dir / shard.file, broken.to_pylist())
    manifest = load_manifest(bad_dir)
    shards = [s for s in manifest.shards]
    shards[0] = type(shards[0])(shard.file, info["records"], info["bytes"], info["sha256"])
    manifest.shards = shards
    manifest.save(bad_dir)
    report = verify_dataset(bad_dir)
    assert report["bad_records"] == {"corrupt_image": 1}


def test_merge_refuses_parts_built_with_different_formats(folder: Path, tmp_path: Path):
    out = tmp_path / "parts"
    build_part(FolderSource(str(folder), image=ImageFormat("shorter:256")), out, Partition(0, 2), progress=False)
    build_part(FolderSource(str(folder), image=ImageFormat("shorter:128")), out, Partition(1, 2), progress=False)
    with pytest.raises(DatasetError, match=r"part-00001-of-00002: built with image format .*shorter:128"):
        merge_parts(out)
    shutil.rmtree(out / "part-00001-of-00002")
    build_part(FolderSource(str(folder), image=ImageFormat("shorter:256")), out, Partition(1, 2), progress=False)
    assert merge_parts(out).build["options"]["image"]["resize"] == "shorter:256"
    # two builds merged into one set (e.g. appended input): one resized, one as found → refused
    other = tmp_path / "other"
    build_part(FolderSource(str(folder)), other, Partition(0, 1), progress=False)
    with pytest.raises(DatasetError, match="image format"):
        merge_parts(tmp_path, [out, other])


def test_default_format_leaves_bytes_and_plan_unchanged(folder: Path, tmp_path: Path):
    source = FolderSource(str(folder))
    assert "image" not in source.describe()  # a build from before the option resumes with the same plan id
    skipped: Counter = Counter()
    tasks, _ = source.plan(1 << 30)
    record = next(iter(source.records(tasks[0], skipped)))
    assert "orig_width" not in record
