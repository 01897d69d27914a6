"""Planning memory of one build task: the whole input (today) vs one part of K, as the input grows.

    .venv/bin/python benchmarks/bench_planning.py [--files 200000] [--baseline 96cde03] [--tracemalloc]
        [--sources folder,jsonl] [--json benchmarks/out/bench_planning.json]

A folder source of ``--files`` empty ``.jpg`` files in 100 class folders, and JSONL sources of 1×, 2× and 4× that
many lines (paths that need not exist). Each row plans one task in a fresh process and reports how much its peak
RSS rose during ``plan()`` (``--tracemalloc``: the peak of Python allocations instead, ~5× slower), the number of
entries the task kept, and the CPU time per input entry. With K growing with the input (files per task fixed), the
per-task peak stays flat.
``--baseline REV`` adds the whole-input plan of git revision REV (the single-machine builder). Prints a table and
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLASSES = 100


def _kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(kind: str, path: str, index: int, count: int, trace: bool) -> dict[str, float]:
    """Plan one task; peak memory as the rise of the process's peak RSS (or of Python allocations, ``trace``)."""
    import tracemalloc

    from maws_scale.data import sources

    source = sources.FolderSource(path) if kind == "folder" else sources.JsonlSource(path)
    if count:
        from maws_scale.data.partition import Partition, PartSource

        source = PartSource(source, Partition(index, count))
    if trace:
        tracemalloc.start()
    before = _kb("VmRSS")
    start, cpu = time.perf_counter(), time.process_time()
    # without partitions (the baseline revision) the task plans everything
    tasks, _ = source.plan(512 * 1024**2)
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    peak = tracemalloc.get_traced_memory()[1] / 1e6 if trace else (_kb("VmHWM") - before) / 1024
    return {"peak_mb": peak, "kept": sum(len(t) for t in tasks), "seconds": seconds, "cpu_s": cpu_s}


def make_folder(root: Path, files: int) -> None:
    for c in range(CLASSES):
        folder = root / f"class{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(c, files, CLASSES):
            (folder / f"img{i:09d}.jpg").touch()


def make_jsonl(path: Path, lines: int) -> None:
    with open(path, "w") as out:
        for i in range(lines):
            out.write(json.dumps({"path": f"images/{i % 1000:03d}/img{i:09d}.jpg", "tags": ["a", "b"]}) + "\n")


def _run(code: str, kind: str, path: Path, index: int, count: int, trace: bool) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": code}
    args = [sys.executable, __file__, "--child", kind, str(path), str(index), str(count), str(int(trace))]
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--baseline", help="git revision of the single-machine planner")
    parser.add_argument("--json", default="benchmarks/out/bench_planning.json")
    parser.add_argument("--tracemalloc", action="store_true", help="peak of Python allocations instead of RSS")
    parser.add_argument("--sources", default="folder,jsonl")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, path, index, count, trace = args.child
        print(json.dumps(child(kind, path, int(index), int(count), trace == "1")))
        return
    rows = []
    n = args.files
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        if args.baseline:
            base = Path(tmp) / "baseline"
            base.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", args.baseline, "maws_scale", "kernels"],
                check=True,
                capture_output=True,
            )
            subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
        cases = []
        if "folder" in args.sources:
            folder = Path(tmp) / "folder"
            make_folder(folder, n)
            if base:
                cases.append(("folder", folder, n, 0, 0, str(base), f"{args.baseline} (whole input)"))
            cases += [("folder", folder, n, 0, k, str(REPO), f"part 0 of {k}") for k in (1, 4)]
        for scale, k in ((1, 1), (2, 2), (4, 4)) if "jsonl" in args.sources else ():
            path = Path(tmp) / f"in-{scale}.jsonl"
            make_jsonl(path, scale * n)
            if base and scale == 1:
                cases.append(("jsonl", path, scale * n, 0, 0, str(base), f"{args.baseline} (whole input)"))
            cases.append(("jsonl", path, scale * n, 0, k, str(REPO), f"part 0 of {k}"))
        for kind, path, entries, index, count, code, label in cases:
            row = {"source": kind, "entries": entries, "task": label}
            row.update(_run(code, kind, path, index, count, args.tracemalloc))
            row["us_per_entry"] = row["cpu_s"] / entries * 1e6
            row["bytes_per_kept"] = row["peak_mb"] * 1e6 / max(1, row["kept"])
            rows.append(row)
            print(
                f"{kind:<6} {entries:>9,} entries  {label:<24} kept {row['kept']:>9,}  peak {row['peak_mb']:7.1f} MB"
                f"  ({row['bytes_per_kept']:5.0f} B/kept)  {row['us_per_entry']:5.1f} µs CPU/entry",
                flush=True,
            )
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "command": " ".join(sys.argv),
        "memory": "peak of Python allocations (tracemalloc)" if args.tracemalloc else "rise of peak RSS (VmHWM)",
        "rows": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
