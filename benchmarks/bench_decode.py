"""JPEG decode on the GPU (data.decode=gpu) against the CPU loader, at 224 px, side by side in one run.

    python benchmarks/bench_decode.py --device cuda [--images 512] [--batch 128] [--batches 20] [--size 224]
        [--sides 512,1024] [--json benchmarks/out/bench_decode.json]

Builds an Arrow set of ``--images`` JPEGs (random crops of the scikit-image / scikit-learn sample photos, longer
side in ``--sides``), then runs the MAE loader (RandomResizedCrop 0.2–1 + flip, uint8 out) in this process
(``data.num_workers=0``, one thread), once with ``data.decode=cpu`` and once with ``data.decode=gpu`` on
``--device``, alternating, best of ``--repeats``. Reports images per wall-second and per CPU-second of this process
(the CPU work a loader worker would do, plus the decode calls). The GPU path uses ``torchvision.io.decode_jpeg``;
with ``--device cpu`` and no torchvision it runs the same code path with a PIL stand-in decoder (a check that the
path works, not a GPU figure). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from maws_scale.config import load_config
from maws_scale.data import build_loader
from maws_scale.data.build import build_dataset
from maws_scale.data.gpu_decode import pil_decoder, torchvision_decoder
from maws_scale.data.samples import photo_jpegs
from maws_scale.data.sources import FolderSource


def timed(make: Callable[[], object], batches: int, device: str) -> dict[str, float]:
    """Wall and process-CPU seconds of ``batches`` batches after two untimed ones."""
    iterator = iter(make())
    for _ in range(2):
        next(iterator)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    images, cpu, wall = 0, time.process_time(), time.perf_counter()
    for _ in range(batches):
        images += next(iterator)["images"].shape[0]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"images": images, "cpu_s": cpu, "wall_s": wall, "img_per_s": images / wall, "img_per_cpu_s": images / cpu}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="where data.decode=gpu decodes (cuda, cuda:1, cpu)")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--sides", default="512,1024", help="min,max of the JPEGs' longer side in pixels")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default="benchmarks/out/bench_decode.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    console = Console(width=140)
    decoder, decoder_name = torchvision_decoder(), "torchvision.io.decode_jpeg"
    if decoder is None:
        if args.device != "cpu":
            console.print("error: torchvision does not import here; the GPU path needs it", style="red")
            return 2
        decoder, decoder_name = pil_decoder, "PIL stand-in (no torchvision): a path check, not a GPU figure"
    low, high = (int(v) for v in args.sides.split(","))
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as tmp:
        src = Path(tmp) / "jpg"
        for i, (data, _) in enumerate(photo_jpegs(args.images, seed=2, sides=(low, high))):
            (src / f"c{i % 8}").mkdir(parents=True, exist_ok=True)
            (src / f"c{i % 8}" / f"{i:06d}.jpg").write_bytes(data)
        build_dataset(FolderSource(str(src)), Path(tmp) / "set", progress=False)
        overrides = [
            "model.name=vit_b16",
            f"model.img_size={args.size}",
            f"data.path={Path(tmp) / 'set'}",
            "data.num_workers=0",
            "data.shuffle_buffer=512",
            f"train.micro_batch={args.batch}",
            f"train.global_batch={args.batch}",
        ]
        cpu_cfg = load_config(None, overrides)
        gpu_cfg = load_config(None, [*overrides, "data.decode=gpu"])
        runs = {
            "decode=cpu (PIL, draft)": lambda: build_loader(cpu_cfg, "mae"),
            f"decode=gpu on {args.device}": lambda: build_loader(
                gpu_cfg, "mae", device=args.device, jpeg_decoder=decoder
            ),
        }
        best: dict[str, dict[str, float]] = {}
        for _ in range(args.repeats):
            for name, make in runs.items():
                row = timed(make, args.batches, args.device)
                if name not in best or row["img_per_s"] > best[name]["img_per_s"]:
                    best[name] = row
    cpu_row = best["decode=cpu (PIL, draft)"]
    table = Table(
        title=f"JPEG decode + crop + resize to {args.size} px, {args.sides} px photos (best of {args.repeats})"
    )
    for col in ("path", "images", "img/s (wall)", "img/CPU-s", "vs cpu (wall)", "vs cpu (CPU-s)"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for name, row in best.items():
        table.add_row(
            name,
            str(row["images"]),
            f"{row['img_per_s']:,.0f}",
            f"{row['img_per_cpu_s']:,.0f}",
            f"{row['img_per_s'] / cpu_row['img_per_s']:.2f}×",
            f"{row['img_per_cpu_s'] / cpu_row['img_per_cpu_s']:.2f}×",
        )
    console.print(table)
    console.print(f"GPU-path decoder: {decoder_name}", highlight=False)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    result = {
        "benchmark": "bench_decode",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "device": device_name,
            "load_average": os.getloadavg(),
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": vars(args),
        "decoder": decoder_name,
        "rows": best,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    tmp_json = Path(args.json).with_name(f".{Path(args.json).name}.tmp")
    tmp_json.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp_json, args.json)
    console.print(f"wrote {args.json}", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
