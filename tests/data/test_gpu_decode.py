"""data.decode=gpu, tested on the CPU: the device path (batched decode through a decoder with
torchvision.io.decode_jpeg's interface, crop + antialiased bicubic resize + flip in torch) run with a PIL stand-in
decoder on device "cpu", against the PIL path. Tolerance against PIL's full decode (``draft=False``): mean
|difference| ≤ 0.5 level and 99.9 % of values within 3 levels (PIL rounds to uint8 between its horizontal and
vertical passes; the device path keeps float32). Against the CPU loader's fast path, which decodes large crops at
1/2–1/8 scale (libjpeg DCT scaling, ``draft``), mean ≤ 4 levels (1.5–2.6 seen). The crop boxes are identical
(asserted); a box off by a few pixels or a wrong flip differs by 15–90 levels on average."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maws_scale.config import ConfigError
from maws_scale.data import build_loader
from maws_scale.data.build import build_dataset
from maws_scale.data.decode import crop_plan, decode_batch
from maws_scale.data.gpu_decode import decode_on_device, pack_jobs, pil_decoder, plan_device_batch
from maws_scale.data.samples import photo_jpegs
from maws_scale.data.sources import FolderSource
from maws_scale.data.transcode import ImageFormat

SIZE = 64
FULL_DECODE = (0.5, 3)  # mean, 99.9th percentile of |difference|
DRAFT_DECODE = (4.0, 255)


def _close(a: np.ndarray, b: np.ndarray, tolerance: tuple[float, int] = FULL_DECODE) -> None:
    diff = np.abs(a.astype(np.int32) - b.astype(np.int32))
    assert diff.mean() <= tolerance[0] and np.quantile(diff, 0.999) <= tolerance[1], (diff.mean(), diff.max())


@pytest.fixture(scope="module")
def photos() -> list[tuple[bytes, tuple[int, int]]]:
    return photo_jpegs(12, seed=3, sides=(96, 320))


def _device_batch(images, sizes, train=True, decoder=pil_decoder):
    n = len(images)
    positions = np.arange(100, 100 + n)
    out = np.zeros((n, SIZE, SIZE, 3), dtype=np.uint8)
    _, _, jobs, fallbacks = plan_device_batch(images, positions, 7, SIZE, train, (0.2, 1.0), True, out, sizes)
    keep = np.arange(n)
    packed = pack_jobs(jobs, keep)
    images_t = torch.from_numpy(out).permute(0, 3, 1, 2)
    result, failed, more, why = decode_on_device(images_t, packed, "cpu", decoder, 7, train, (0.2, 1.0), True)
    return result.permute(0, 2, 3, 1).numpy(), packed, fallbacks + more, failed, why, positions


@pytest.mark.parametrize("train", [True, False])
def test_device_path_matches_the_pil_path_with_identical_boxes(photos, train):
    images = [data for data, _ in photos]
    sizes = np.array([size for _, size in photos])
    got, packed, fallbacks, failed, _, positions = _device_batch(images, sizes, train)
    assert fallbacks == 0 and failed == []
    boxes, flips, _ = crop_plan(sizes, positions, 7, train, (0.2, 1.0), True)
    assert np.array_equal(packed["boxes"], boxes.astype(np.int64)) and np.array_equal(packed["flips"], flips)
    want, ok, _ = decode_batch(images, positions, 7, SIZE, train, draft=False, sizes=sizes)
    assert ok.all()
    _close(got, want)
    # against the CPU loader's fast path (PIL draft: DCT-scaled decode of large crops)
    fast, _, _ = decode_batch(images, positions, 7, SIZE, train, sizes=sizes)
    _close(got, fast, DRAFT_DECODE)


def test_unknown_or_wrong_stored_sizes_give_the_cpu_paths_crops(photos):
    images = [data for data, _ in photos[:4]]
    sizes = np.array([[-1, -1], [5, 5], [-1, -1], list(photos[3][1])])  # unknown, wrong, unknown, right
    got, _, _, failed, _, positions = _device_batch(images, sizes)
    want, ok, _ = decode_batch(images, positions, 7, SIZE, True, draft=False, sizes=sizes)
    assert ok.all() and failed == []
    _close(got, want)


def test_non_jpeg_records_fall_back_per_record_and_are_counted(photos):
    png = io.BytesIO()
    Image.open(io.BytesIO(photos[0][0])).save(png, format="PNG")
    images = [photos[1][0], png.getvalue(), photos[2][0], b""]
    sizes = np.array([photos[1][1], photos[0][1], photos[2][1], [-1, -1]])
    got, packed, fallbacks, _, _, positions = _device_batch(images, sizes)
    assert packed["slots"].tolist() == [0, 2] and fallbacks == 1  # the PNG; the empty record is not a fallback
    want, _, reasons = decode_batch(images, positions, 7, SIZE, True, draft=False, sizes=sizes)
    assert reasons[3] == "empty_image"
    assert np.array_equal(got[1], want[1])  # the PNG went through the CPU path itself
    _close(got[:3], want[:3])


def test_a_jpeg_the_device_decoder_refuses_is_decoded_by_pil_and_a_broken_one_fails(photos):
    calls = []

    def picky(data, device="cpu"):  # refuses any batch holding the 2nd image (as a device decoder might)
        calls.append(len(data))
        if any(t.numel() == len(photos[1][0]) for t in data):
            raise RuntimeError("unsupported JPEG")
        return pil_decoder(data, device)

    broken = photos[2][0][: len(photos[2][0]) // 2]
    images = [photos[0][0], photos[1][0], broken]
    sizes = np.array([photos[0][1], photos[1][1], photos[2][1]])
    got, _, fallbacks, failed, reasons, positions = _device_batch(images, sizes, decoder=picky)
    assert calls[0] == 3 and fallbacks == 2 and failed == [2] and reasons == ["truncated_image"]
    want, _, _ = decode_batch(images[:2], positions[:2], 7, SIZE, True, sizes=sizes[:2])
    assert np.array_equal(got[1], want[1])  # PIL in the main process, same crop, same code as the CPU path


@pytest.fixture(scope="module")
def jpeg_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gpu_src")
    for i, (data, _) in enumerate(photo_jpegs(40, seed=4, sides=(96, 320))):
        (root / f"c{i % 3}").mkdir(exist_ok=True)
        (root / f"c{i % 3}" / f"{i:03d}.jpg").write_bytes(data)
    Image.new("RGB", (80, 60), (10, 200, 30)).save(root / "c0" / "green.png")
    (root / "c1" / "broken.jpg").write_bytes(data[: len(data) // 2])  # header fine, pixels cut: fails at decode
    out = tmp_path_factory.mktemp("gpu_set")
    build_dataset(FolderSource(str(root)), out, shard_size=200_000, progress=False)
    return out


def test_loader_gpu_decode_on_cpu_matches_cpu_decode_and_resumes_exactly(jpeg_set: Path, cfg_for):
    overrides = ("model.img_size=64", "model.name=vit_tiny_p8", "data.shuffle_buffer=16")
    cpu = build_loader(cfg_for(jpeg_set, *overrides), "mae")
    gpu_cfg = cfg_for(jpeg_set, *overrides, "data.decode=gpu")
    gpu = build_loader(gpu_cfg, "mae", device="cpu", jpeg_decoder=pil_decoder)
    cpu_batches = [b for _, b in zip(range(8), cpu)]
    gpu_batches = [b for _, b in zip(range(8), gpu)]
    for a, b in zip(cpu_batches, gpu_batches):
        assert a["keys"] == b["keys"] and np.array_equal(a["sample_ids"], b["sample_ids"])
        _close(a["images"].permute(0, 2, 3, 1).numpy(), b["images"].permute(0, 2, 3, 1).numpy(), DRAFT_DECODE)
    seen_png = sum(key.endswith("green") for b in gpu_batches for key in b["keys"])
    # the PNGs, and the broken JPEG each time PIL retried what the device decoder refused
    assert seen_png > 0 and gpu.cpu_fallbacks == seen_png + gpu.error_counts()["truncated_image"]
    resumed = build_loader(gpu_cfg, "mae", device="cpu", jpeg_decoder=pil_decoder)
    fresh = build_loader(gpu_cfg, "mae", device="cpu", jpeg_decoder=pil_decoder)
    for _, _b in zip(range(5), fresh):
        pass
    resumed.load_state_dict(fresh.state_dict())
    for before, after in zip(gpu_batches[5:], resumed):
        assert before["keys"] == after["keys"] and torch.equal(before["images"], after["images"])


@pytest.mark.parametrize("stage", ["mae", "eval"])
def test_a_record_no_decoder_reads_is_skipped_like_the_cpu_path(jpeg_set: Path, cfg_for, stage):
    overrides = ("model.img_size=64", "model.name=vit_tiny_p8", "data.shuffle_buffer=16")
    kwargs = {"path": str(jpeg_set), "infinite": False} if stage == "eval" else {}
    cpu = build_loader(cfg_for(jpeg_set, *overrides), stage, **kwargs)
    gpu = build_loader(cfg_for(jpeg_set, *overrides, "data.decode=gpu"), stage, device="cpu",
                       jpeg_decoder=pil_decoder, **kwargs)  # fmt: skip
    cpu_keys = [b["keys"] for _, b in zip(range(6), cpu)]
    gpu_keys = [b["keys"] for _, b in zip(range(6), gpu)]
    assert cpu_keys == gpu_keys  # the same samples dropped (eval) or the same repeats filling the batch (training)
    assert not any(key.endswith("broken") for keys in gpu_keys for key in keys)
    assert cpu.error_counts() == gpu.error_counts() == {"truncated_image": 1}


def test_a_device_decoder_refusing_everything_loses_nothing(jpeg_set: Path, cfg_for):
    def refuses(data, device="cpu"):
        raise RuntimeError("no")

    cfg = cfg_for(jpeg_set, "model.img_size=64", "model.name=vit_tiny_p8", "data.decode=gpu")
    good = next(iter(build_loader(cfg, "mae", device="cpu", jpeg_decoder=pil_decoder)))
    loader = build_loader(cfg, "mae", device="cpu", jpeg_decoder=refuses)
    batch = next(iter(loader))
    assert batch["keys"] == good["keys"] and loader.cpu_fallbacks >= len(batch["keys"]) - 1
    _close(batch["images"].permute(0, 2, 3, 1).numpy(), good["images"].permute(0, 2, 3, 1).numpy(), DRAFT_DECODE)


def test_decode_gpu_is_refused_without_cuda_and_for_raw_sets(jpeg_set: Path, tmp_path: Path, cfg_for):
    cfg = cfg_for(jpeg_set, "data.decode=gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"data\.decode: gpu needs a CUDA device"):
            build_loader(cfg, "mae")
    raw = tmp_path / "raw"
    src = tmp_path / "src"
    (src / "c").mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(src / "c" / "a.png")
    build_dataset(FolderSource(str(src), image=ImageFormat("square:32", encoding="raw")), raw, progress=False)
    with pytest.raises(ConfigError, match="raw pixels"):
        build_loader(cfg_for(raw, "data.decode=gpu"), "mae", device="cpu", jpeg_decoder=pil_decoder)
