"""Loader throughput on real photos, per CPU core, side by side in one run.

    .venv/bin/python benchmarks/bench_loader.py [--images 400] [--epochs 4] [--repeats 3] [--sides 224,512]
        [--json benchmarks/out/bench_loader.json]

Builds a few hundred JPEGs (random crops of the scikit-image / scikit-learn sample photos, longer side 224–512 px
by default) into a temporary directory, then measures the MAE recipe's RandomResizedCrop(0.2–1, bicubic) + flip to
224 px, uint8 out:

  (a) the ceiling: decode + crop-resize of in-memory JPEG bytes in a tight loop (PIL with draft, i.e. our fast
      path; also PIL without draft, and simplejpeg when it is importable);
  (b) our loader end to end: Arrow IPC shards built by the folder builder → build_loader(stage="mae"), 1 worker;
  (c) a webdataset tar pipeline over the same JPEGs, same transform, 1 worker, shuffle buffer 256 like (b):
      idiomatic (.decode("pil") then crop), and (c') with our decode function on the raw bytes (isolating the
      container + pipeline overhead);
  (d) shard format: reading image bytes from Arrow IPC (memory-mapped) vs Parquet, full scans and random batches.

Throughput is per CPU-second of every process involved (main + live and finished DataLoader workers, read from
/proc), so it is "per core" and robust to other load on the machine. "steady" counts from the 3rd batch to the last
(worker start-up, prefetch fill and teardown excluded: a training run pays them once); "end to end" includes them.
Each row is the best of --repeats, the pipelines run round-robin. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from maws_scale.config import load_config
from maws_scale.data import build_loader
from maws_scale.data.build import build_dataset
from maws_scale.data.decode import ATTEMPTS, decode_batch, random_resized_crop_params, uniforms
from maws_scale.data.samples import photo_jpegs
from maws_scale.data.shards import BinaryColumn, load_manifest, open_shard
from maws_scale.data.sources import FolderSource

SIZE = 224
SCALE = (0.2, 1.0)
CEILING = "(a) ceiling: decode+crop+resize, PIL draft"
OURS = "(b) maws-scale loader (Arrow IPC)"
WDS = "(c) webdataset, .decode('pil')"
WDS_SAME = "(c') webdataset + our draft decode"


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu() -> float:
    """CPU seconds of this process, its finished children and its live children (DataLoader workers)."""
    me, done = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = me.ru_utime + me.ru_stime + done.ru_utime + done.ru_stime
    for task in Path("/proc/self/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in children:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited and reaped meanwhile: counted in RUSAGE_CHILDREN
            total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    return total


def measure(
    runs: dict[str, Callable[[int], Iterator[int]]], total: int, warm: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Run every pipeline ``repeats`` times, round-robin (a burst of load elsewhere hits all alike); keep the best.
    A pipeline yields the size of each batch it delivers. ``steady_img_per_cpu_s`` counts from the batch that
    completes ``warm`` images to the last batch (worker start-up, prefetch fill and teardown excluded: a training run
    pays them once); ``img_per_cpu_s`` is end to end."""
    best: dict[str, dict[str, float]] = {}
    for _ in range(repeats):
        for name, make in runs.items():
            cpu0 = _cpu()
            seen, mark, last = 0, None, None
            for count in make(total):
                seen += count
                if mark is None and seen >= warm:
                    mark = (seen, _cpu(), time.perf_counter())
                if last is None and seen >= total:
                    last = (seen, _cpu(), time.perf_counter())
            cpu = _cpu() - cpu0
            assert mark is not None and last is not None and last[0] > mark[0], f"{name}: too few images"
            row = {
                "images": seen,
                "cpu_s": cpu,
                "img_per_cpu_s": seen / cpu,
                "steady_img_per_cpu_s": (last[0] - mark[0]) / (last[1] - mark[1]),
                "steady_img_per_s": (last[0] - mark[0]) / (last[2] - mark[2]),
                "overhead_cpu_s": cpu - (last[1] - mark[1]) * seen / (last[0] - mark[0]),
            }
            if name not in best or row["steady_img_per_cpu_s"] > best[name]["steady_img_per_cpu_s"]:
                best[name] = row
    return best


# ----- (a) the ceiling ---------------------------------------------------------------------------------------------
def ceiling(jpegs: list[bytes], draft: bool, batch: int) -> Callable[[int], Iterator[int]]:
    """The least work per image: open, (draft,) crop+resize in one PIL call, one contiguous write, flip by slicing."""

    def run(limit: int) -> Iterator[int]:
        out = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
        u = uniforms(0, np.arange(limit), 4 * ATTEMPTS + 1)
        for i in range(limit):
            data = jpegs[i % len(jpegs)]
            image = Image.open(io.BytesIO(data))
            full_w, full_h = image.size
            left, top, w, h = random_resized_crop_params(np.array([image.size]), u[i : i + 1], SCALE)[0]
            if draft and min(w, h) >= 2 * SIZE:
                reduce = 1 << min(3, int(np.log2(min(w, h) / SIZE)))
                image.draft("RGB", (full_w // reduce, full_h // reduce))
            rx, ry = full_w / image.size[0], full_h / image.size[1]
            box = (left / rx, top / ry, (left + w) / rx, (top + h) / ry)
            pixels = np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BICUBIC, box=box))
            out[:] = pixels[:, ::-1] if u[i, -1] < 0.5 else pixels
            if (i + 1) % batch == 0:
                yield batch

    return run


def simplejpeg_ceiling(jpegs: list[bytes], batch: int) -> Callable[[int], Iterator[int]] | None:
    try:
        import simplejpeg
    except ImportError:
        return None

    def run(limit: int) -> Iterator[int]:
        out = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
        u = uniforms(0, np.arange(limit), 4 * ATTEMPTS + 1)
        for i in range(limit):
            data = jpegs[i % len(jpegs)]
            width, height, _, _ = simplejpeg.decode_jpeg_header(data)
            left, top, w, h = random_resized_crop_params(np.array([[width, height]]), u[i : i + 1], SCALE)[0]
            reduce = min(w, h) / SIZE
            min_h, min_w = (
                int(height / reduce) if reduce >= 2 else height,
                int(width / reduce) if reduce >= 2 else width,
            )
            pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_h, min_width=min_w)
            rx, ry = width / pixels.shape[1], height / pixels.shape[0]
            image = Image.fromarray(pixels).resize(
                (SIZE, SIZE), Image.Resampling.BICUBIC, box=(left / rx, top / ry, (left + w) / rx, (top + h) / ry)
            )
            out[:] = np.asarray(image)[:, ::-1] if u[i, -1] < 0.5 else np.asarray(image)
            if (i + 1) % batch == 0:
                yield batch

    return run


# ----- (b) our loader ------------------------------------------------------------------------------------------------
def ours(root: Path, batch: int, workers: int) -> Callable[[int], Iterator[int]]:
    cfg = load_config(
        None,
        [
            "model.name=vit_tiny_p4",
            f"model.img_size={SIZE}",
            f"data.path={root}",
            f"data.num_workers={workers}",
            "data.shuffle_buffer=256",
            f"train.micro_batch={batch}",
            f"train.global_batch={batch}",
        ],
    )

    def run(limit: int) -> Iterator[int]:
        loader = build_loader(cfg, "mae", infinite=True)
        seen = 0
        for item in loader:
            seen += item["images"].shape[0]
            yield item["images"].shape[0]
            if seen >= limit:
                break

    return run


# ----- (c) webdataset ----------------------------------------------------------------------------------------------
def write_tars(jpegs: list[bytes], directory: Path, per_tar: int) -> list[str]:
    urls = []
    for start in range(0, len(jpegs), per_tar):
        path = directory / f"part-{start // per_tar:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(start, min(start + per_tar, len(jpegs))):
                for ext, data in (("jpg", jpegs[i]), ("json", json.dumps({"tags": ["photo"]}).encode())):
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        urls.append(str(path))
    return urls


class _CropPIL:
    """Idiomatic webdataset transform: the sample arrives as a decoded PIL image (no draft)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, sample: tuple) -> tuple:
        image, meta = sample
        u = uniforms(1, np.array([self.count]), 4 * ATTEMPTS + 1)
        self.count += 1
        left, top, w, h = random_resized_crop_params(np.array([image.size]), u, SCALE)[0]
        pixels = np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h)))
        if u[0, -1] < 0.5:
            pixels = pixels[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))), meta


class _CropBytes:
    """webdataset with our decode function (draft fast path) on the raw bytes."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, sample: tuple) -> tuple:
        data, meta = sample
        out, _, _ = decode_batch([data], np.array([self.count]), 1, SIZE, train=True, scale=SCALE)
        self.count += 1
        return torch.from_numpy(out[0]), meta


def webdataset_pipeline(urls: list[str], batch: int, workers: int, idiomatic: bool) -> Callable[[int], Iterator[int]]:
    """One long-lived WebLoader over endlessly repeated shards, shuffle buffer 256 (as (b)), batched in the worker."""
    import webdataset as wds

    def run(limit: int) -> Iterator[int]:
        dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False).repeat(1 << 20).shuffle(256)
        if idiomatic:
            dataset = dataset.decode("pil").to_tuple("jpg", "json").map(_CropPIL())
        else:
            dataset = dataset.to_tuple("jpg", "json").map(_CropBytes())
        loader = wds.WebLoader(dataset.batched(batch, partial=True), batch_size=None, num_workers=workers)
        seen = 0
        for images, _ in loader:
            seen += images.shape[0]
            yield images.shape[0]
            if seen >= limit:
                break

    return run


# ----- (d) shard format --------------------------------------------------------------------------------------------
def _best_time(run: Callable[[], int], repeats: int) -> tuple[int, float]:
    """(records, least CPU seconds) over ``repeats`` runs."""
    results = []
    for _ in range(repeats):
        cpu0 = _cpu()
        records = run()
        results.append((records, _cpu() - cpu0))
    return min(results, key=lambda r: r[1])


def _open(path: Path) -> pa.Table:
    if path.suffix == ".arrow":
        return ipc.open_file(pa.memory_map(str(path))).read_all()
    return pq.read_table(path, columns=["image"], memory_map=True)


def scan(path: Path, passes: int = 20) -> Callable[[], int]:
    """Open the file and touch every image's bytes, ``passes`` times; returns records read."""

    def run() -> int:
        for _ in range(passes):
            column = _open(path)["image"]
            total = sum(len(chunk.buffers()[2] or b"") for chunk in column.chunks)
            assert total > 0
        return passes * len(column)

    return run


def random_batches(path: Path, batch: int, batches: int = 100) -> Callable[[], int]:
    """What a shuffling loader does: fetch ``batches`` batches of random rows' image bytes. IPC reads rows straight
    from the memory map; Parquet must first decode every row group that holds one of the rows."""

    def run() -> int:
        rng = np.random.default_rng(0)
        if path.suffix == ".arrow":
            column = BinaryColumn(_open(path)["image"])
            for _ in range(batches):
                assert all(column.get(rng.integers(0, column.starts[-1], batch)))
        else:
            handle = pq.ParquetFile(path, memory_map=True)
            group = handle.metadata.row_group(0).num_rows
            for _ in range(batches):
                rows = rng.integers(0, handle.metadata.num_rows, batch)
                groups = sorted(set((rows // group).tolist()))
                column = BinaryColumn(handle.read_row_groups(groups, columns=["image"])["image"])
                assert all(column.get(np.searchsorted(groups, rows // group) * group + rows % group))
        return batches * batch

    return run


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers for (b) and (c)")
    parser.add_argument("--epochs", type=int, default=4, help="passes over the images per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sides", default="224,512", help="min,max of the JPEGs' longer side in pixels")
    parser.add_argument("--json", default="benchmarks/out/bench_loader.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    console = Console(width=150)
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        tmp_path = Path(tmp)
        sides = tuple(int(v) for v in args.sides.split(","))
        photos = photo_jpegs(args.images, seed=0, sides=sides)
        jpegs = [data for data, _ in photos]
        (tmp_path / "jpg" / "photo").mkdir(parents=True)
        for i, data in enumerate(jpegs):
            (tmp_path / "jpg" / "photo" / f"{i:06d}.jpg").write_bytes(data)
        mb = sum(map(len, jpegs)) / 1e6
        console.print(
            f"{len(jpegs)} JPEGs, {mb:.1f} MB, longer side {sides[0]}–{sides[1]} px; output {SIZE} px", highlight=False
        )
        build_dataset(FolderSource(str(tmp_path / "jpg")), tmp_path / "arrow", shard_size=4 << 20, progress=False)
        urls = write_tars(jpegs, tmp_path / "jpg", per_tar=100)

        runs: dict[str, Callable[[int], Iterator[int]]] = {
            CEILING: ceiling(jpegs, draft=True, batch=args.batch),
            "(a') decode+crop+resize, PIL full decode": ceiling(jpegs, draft=False, batch=args.batch),
        }
        if (sj := simplejpeg_ceiling(jpegs, args.batch)) is not None:
            runs["(a'') decode+crop+resize, simplejpeg"] = sj
        runs[OURS] = ours(tmp_path / "arrow", args.batch, args.workers)
        runs[WDS] = webdataset_pipeline(urls, args.batch, args.workers, idiomatic=True)
        runs[WDS_SAME] = webdataset_pipeline(urls, args.batch, args.workers, idiomatic=False)
        rows = measure(runs, args.images * args.epochs, 3 * args.batch, args.repeats)

        # (d) one file holding every image, as Arrow IPC and as Parquet (no compression, zstd)
        table = pa.concat_tables(
            open_shard(tmp_path / "arrow" / s.file) for s in load_manifest(tmp_path / "arrow").shards
        )
        paths = {"arrow ipc (memory-mapped)": tmp_path / "all.arrow"}
        sink = pa.OSFile(str(paths["arrow ipc (memory-mapped)"]), "wb")
        with sink, ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=256)
        for codec in ("none", "zstd"):
            paths[f"parquet ({codec})"] = tmp_path / f"all-{codec}.parquet"
            pq.write_table(table, paths[f"parquet ({codec})"], compression=codec, row_group_size=256)
        format_runs = {}
        for name, path in paths.items():
            format_runs[f"{name}: scan"] = scan(path)
            format_runs[f"{name}: random batches"] = random_batches(path, args.batch)
        formats = {name: _best_time(run, args.repeats) for name, run in format_runs.items()}
        for name, path in paths.items():
            for kind in ("scan", "random batches"):
                records, cpu = formats[f"{name}: {kind}"]
                formats[f"{name}: {kind}"] = {"records": records, "cpu_s": cpu, "file_mb": path.stat().st_size / 1e6}

    ratios = {}
    for kind, key in (("steady", "steady_img_per_cpu_s"), ("end_to_end", "img_per_cpu_s")):
        ratios[f"b_over_a_{kind}"] = rows[OURS][key] / rows[CEILING][key]
        ratios[f"b_over_c_{kind}"] = rows[OURS][key] / rows[WDS][key]
        ratios[f"b_over_c_same_decode_{kind}"] = rows[OURS][key] / rows[WDS_SAME][key]

    table_out = Table(title=f"loader throughput, {SIZE} px RandomResizedCrop+flip, 1 core (best of {args.repeats})")
    columns = (
        "pipeline",
        "images",
        "img/CPU-s steady",
        "img/CPU-s end to end",
        "start-up+teardown CPU-s",
        "img/s wall",
    )
    for col in columns:
        table_out.add_column(col, justify="left" if col == "pipeline" else "right")
    for name, row in rows.items():
        table_out.add_row(
            name,
            str(int(row["images"])),
            f"{row['steady_img_per_cpu_s']:.0f}",
            f"{row['img_per_cpu_s']:.0f}",
            f"{row['overhead_cpu_s']:.2f}",
            f"{row['steady_img_per_s']:.0f}",
        )
    console.print(table_out)
    fmt = Table(title="(d) shard format: records per CPU-second")
    for col in ("format: access", "file MB", "records / CPU-s"):
        fmt.add_column(col, justify="left" if col.startswith("format") else "right")
    for name, row in formats.items():
        fmt.add_row(name, f"{row['file_mb']:.1f}", f"{row['records'] / row['cpu_s']:.0f}")
    console.print(fmt)
    for kind in ("steady", "end_to_end"):
        console.print(
            f"{kind}: (b)/(a) = {ratios[f'b_over_a_{kind}']:.2f} (target ≥ 0.9)   "
            f"(b)/(c) = {ratios[f'b_over_c_{kind}']:.2f} (target ≥ 1.2)   "
            f"(b)/(c') = {ratios[f'b_over_c_same_decode_{kind}']:.2f}",
            highlight=False,
        )
    result = {
        "benchmark": "bench_loader",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": vars(args) | {"img_size": SIZE, "crop_scale": SCALE},
        "rows": rows,
        "formats": formats,
        "ratios": ratios,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    console.print(f"wrote {args.json}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
