"""Shard builder throughput per CPU core on photos: the figure docs/data.md extrapolates to 3 billion images.

    .venv/bin/python benchmarks/bench_build.py [--images 600] [--sides 512,1024] [--parts 4] [--repeats 2]
        [--json benchmarks/out/bench_build.json]

Writes ``--images`` JPEGs (random crops of the scikit-image / scikit-learn sample photos) as a class-folder tree,
then, in this process (one core): builds it in ``--parts`` parts one after the other (listing, header parse,
Arrow write, sha256), merges, and counts the vocabulary. Reports images and MB per CPU-second (user + system time
of this process), best of ``--repeats``. Prints a table and writes JSON.
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
from pathlib import Path

from maws_scale.data.labels import count_tags
from maws_scale.data.merge import merge_parts
from maws_scale.data.partition import Partition, build_part
from maws_scale.data.samples import photo_jpegs
from maws_scale.data.sources import FolderSource


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--sides", default="512,1024")
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default="benchmarks/out/bench_build.json")
    args = parser.parse_args()
    low, high = (int(s) for s in args.sides.split(","))
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "in"
        total_bytes = 0
        for i, (data, _) in enumerate(photo_jpegs(args.images, seed=0, sides=(low, high))):
            folder = root / f"class{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:06d}.jpg").write_bytes(data)
            total_bytes += len(data)
        for _ in range(args.repeats):
            out = Path(tmp) / "out"
            shutil.rmtree(out, ignore_errors=True)
            phases = {}
            cpu, wall = _cpu(), time.perf_counter()
            for i in range(args.parts):
                build_part(FolderSource(str(root)), out, Partition(i, args.parts), shard_size=32 * 1024**2)
            phases["build"] = (_cpu() - cpu, time.perf_counter() - wall)
            cpu, wall = _cpu(), time.perf_counter()
            merge_parts(out)
            phases["merge"] = (_cpu() - cpu, time.perf_counter() - wall)
            cpu, wall = _cpu(), time.perf_counter()
            count_tags(out)
            phases["vocab count"] = (_cpu() - cpu, time.perf_counter() - wall)
            for name, (cpu_s, wall_s) in phases.items():
                best[name] = min(best.get(name, float("inf")), cpu_s)
                best[f"{name} wall"] = min(best.get(f"{name} wall", float("inf")), wall_s)
    rows = []
    for name in ("build", "merge", "vocab count"):
        cpu_s = best[name]
        row = {
            "phase": name,
            "cpu_s": cpu_s,
            "wall_s": best[f"{name} wall"],
            "images_per_cpu_s": args.images / cpu_s,
            "mb_per_cpu_s": total_bytes / 1e6 / cpu_s,
        }
        rows.append(row)
        print(
            f"{name:<12} {cpu_s:7.3f} CPU-s  {row['images_per_cpu_s']:9.0f} img/CPU-s  "
            f"{row['mb_per_cpu_s']:8.1f} MB/CPU-s",
            flush=True,
        )
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "command": " ".join(sys.argv),
        "images": args.images,
        "mean_image_kb": total_bytes / args.images / 1e3,
        "rows": rows,
    }
    print(f"{args.images} JPEGs, mean {result['mean_image_kb']:.0f} kB")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
