"""Shard formats side by side in one run: original bytes vs resized at build time vs raw pixels.

    .venv/bin/python benchmarks/bench_data_formats.py [--images 400] [--sides 512,1024] [--epochs 10] [--repeats 2]
        [--resize shorter:256[,shorter:224]] [--raw 64] [--json benchmarks/out/bench_data_formats.json]

Writes ``--images`` JPEGs (random crops of the scikit-image / scikit-learn sample photos, longer side in ``--sides``,
quality 90) as a class-folder tree, then builds it three ways in this process (one core): the original bytes
(today's default), each ``--resize`` (re-encoded JPEG q90), and ``--encoding raw --resize square:<raw>``. For each it
reports build images per CPU-second, bytes on disk and bytes per image (and the TB for 3 B images), then the
loader's images per CPU-second (main process + 1 DataLoader worker, as benchmarks/bench_loader.py measures it)
with the MAE recipe (RandomResizedCrop 0.2–1 + flip) at 224 px and at the raw side, all loaders round-robin, best
of ``--repeats``. Ratios are against the original-bytes loader at the same output size. Prints a table, writes
JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loader import measure

from maws_scale.config import load_config
from maws_scale.data import build_loader
from maws_scale.data.build import build_dataset
from maws_scale.data.samples import photo_jpegs
from maws_scale.data.sources import FolderSource
from maws_scale.data.transcode import ImageFormat

IMAGES_3B = 3e9


def _self_cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def loader_run(root: Path, size: int, batch: int) -> Callable[[int], Iterator[int]]:
    """The MAE-stage loader over ``root`` at ``size`` px, 1 DataLoader worker."""
    cfg = load_config(
        None,
        [
            "model.name=vit_tiny_p4",
            f"model.img_size={size}",
            f"data.path={root}",
            "data.num_workers=1",
            "data.shuffle_buffer=256",
            f"train.micro_batch={batch}",
            f"train.global_batch={batch}",
        ],
    )

    def run(limit: int) -> Iterator[int]:
        seen = 0
        for item in build_loader(cfg, "mae", infinite=True):
            seen += item["images"].shape[0]
            yield item["images"].shape[0]
            if seen >= limit:
                break

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--sides", default="512,1024", help="min,max of the JPEGs' longer side in pixels")
    parser.add_argument("--resize", default="shorter:256", help="the resized sets' --resize, comma separated")
    parser.add_argument("--raw", type=int, default=64, help="side of the raw-pixel set (square:N) and its output")
    parser.add_argument("--batch", type=int, default=256, help="micro-batch of every loader (256)")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the images per loader measurement")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default="benchmarks/out/bench_data_formats.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    console = Console(width=160)
    low, high = (int(v) for v in args.sides.split(","))
    formats = {
        "original bytes": ImageFormat(),
        **{f"resize {spec}": ImageFormat(spec) for spec in args.resize.split(",")},
        f"raw square:{args.raw}": ImageFormat(f"square:{args.raw}", encoding="raw"),
    }
    builds: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_formats_") as tmp:
        root = Path(tmp) / "jpg"
        sizes = []
        for i, (data, size) in enumerate(photo_jpegs(args.images, seed=1, sides=(low, high))):
            (root / f"class{i % 10}").mkdir(parents=True, exist_ok=True)
            (root / f"class{i % 10}" / f"{i:06d}.jpg").write_bytes(data)
            sizes.append(size)
        source_mb = sum(p.stat().st_size for p in root.rglob("*.jpg")) / 1e6
        console.print(
            f"{args.images} JPEGs, {source_mb:.1f} MB, longer side {low}–{high} px "
            f"(mean {sum(max(s) for s in sizes) / len(sizes):.0f}), shorter side "
            f"{min(min(s) for s in sizes)}–{max(min(s) for s in sizes)} px",
            highlight=False,
        )
        for name, image in formats.items():
            best = None
            for _ in range(args.repeats):
                out = Path(tmp) / name.replace(" ", "_").replace(":", "")
                shutil.rmtree(out, ignore_errors=True)
                cpu = _self_cpu()
                manifest = build_dataset(FolderSource(str(root), image=image), out, shard_size=64 << 20, progress=False)
                cpu = _self_cpu() - cpu
                best = cpu if best is None else min(best, cpu)
            builds[name] = {
                "path": out,
                "build_img_per_cpu_s": manifest.records / best,
                "bytes": manifest.bytes,
                "bytes_per_image": manifest.bytes / manifest.records,
                "tb_for_3b_images": manifest.bytes / manifest.records * IMAGES_3B / 1e12,
            }
            console.print(f"built {name}: {manifest.records} records, {manifest.bytes / 1e6:.1f} MB", highlight=False)

        runs = {}
        for name, info in builds.items():
            if not name.startswith("raw"):
                runs[f"{name} → 224 px"] = loader_run(info["path"], 224, args.batch)
            runs[f"{name} → {args.raw} px"] = loader_run(info["path"], args.raw, args.batch)
        rows = measure(runs, args.images * args.epochs, 2 * args.batch, args.repeats)  # steady: from the 3rd batch

    base = {224: rows["original bytes → 224 px"], args.raw: rows[f"original bytes → {args.raw} px"]}
    table = Table(title=f"data formats, loader = MAE crop+flip, 1 worker, per CPU-second (best of {args.repeats})")
    for col in ("set", "build img/CPU-s", "bytes/image", "TB per 3 B", "output", "loader img/CPU-s", "vs original"):
        table.add_column(col, justify="left" if col in ("set", "output") else "right")
    result_rows = []
    for run_name, row in rows.items():
        name, _, output = run_name.partition(" → ")
        size = int(output.split()[0])
        info = builds[name]
        ratio = row["steady_img_per_cpu_s"] / base[size]["steady_img_per_cpu_s"]
        table.add_row(
            name,
            f"{info['build_img_per_cpu_s']:.0f}",
            f"{info['bytes_per_image']:,.0f}",
            f"{info['tb_for_3b_images']:.1f}",
            output,
            f"{row['steady_img_per_cpu_s']:.0f}",
            f"{ratio:.2f}×",
        )
        result_rows.append(
            {"set": name, "output_px": size, **{k: v for k, v in info.items() if k != "path"}, **row, "ratio": ratio}
        )
    console.print(table)
    result = {
        "benchmark": "bench_data_formats",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average": os.getloadavg(),
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": vars(args),
        "source_mb": source_mb,
        "rows": result_rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    tmp_json = Path(args.json).with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp_json, args.json)
    console.print(f"wrote {args.json}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
