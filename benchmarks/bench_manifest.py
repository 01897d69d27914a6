"""Manifest metadata per process at 100k and 600k shards: today's inline JSON vs the memory-mapped shard table.

    .venv/bin/python benchmarks/bench_manifest.py [--shards 100000,600000] [--baseline 96cde03]
        [--json benchmarks/out/bench_manifest.json]

Writes synthetic data sets (manifests only: shard names, 5,000 records and 512 MB per shard, random sha256) in
both formats, then measures each in a fresh process that has already imported the loader (torch included), so the
figures are what the manifest adds:

- ``rss_mb``: resident memory the manifest + sample order + StreamSpec add (VmRSS after minus before; the
  ``anon`` part is private to the process, the ``file`` part is page cache shared by every process on the node);
- ``load_s``: load_manifest + GlobalOrder + StreamSpec;
- ``spawn_mb`` / ``spawn_s``: the pickle a spawned DataLoader worker receives (the ShardStream) and its
  pickle + unpickle time;
- ``state_dict_ms``: median ``StreamLoader.state_dict()``; ``records_ms``: median ``manifest.records``;
- ``locate_ms``: the first 256-position batch located and its shard names looked up.

``--baseline REV`` runs the inline-JSON (manifest v1) rows with the code of git revision REV (``git archive``
into a temporary folder), i.e. what the project did before the shard table; without it they run with this
checkout's reader of v1 manifests. Prints a table and writes JSON.
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


def _status() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def _open(directory: str):
    from maws_scale.data.order import GlobalOrder
    from maws_scale.data.shards import load_manifest
    from maws_scale.data.stream import StreamLoader, StreamSpec

    manifest = load_manifest(directory)
    counts = manifest.record_counts() if hasattr(manifest, "record_counts") else [s.records for s in manifest.shards]
    order = GlobalOrder(counts, seed=0, shuffle=True, window=2048)
    spec = StreamSpec(directory, manifest, order, rank=0, world_size=1, micro_batch=256, img_size=224, train=True)
    return manifest, order, spec, StreamLoader(spec, num_workers=4)


def child(directory: str, warm: str) -> dict[str, float]:
    """Measure one data set in this (fresh) process; return the figures. The same steps run first on the small
    data set ``warm``, so one-off library initialisation is not counted."""
    import gc
    import pickle
    import statistics

    import numpy as np

    from maws_scale.data.stream import ShardStream

    _, order, spec, loader = _open(warm)
    order.locate(np.arange(256, dtype=np.int64))
    loader.state_dict()
    pickle.loads(pickle.dumps(ShardStream(spec, 0, None)))
    del order, spec, loader
    gc.collect()
    before = _status()
    start = time.perf_counter()
    manifest, order, spec, loader = _open(directory)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    shards, _ = order.locate(np.arange(256, dtype=np.int64))
    names = [spec.manifest.shards[s].file for s in shards.tolist()]
    locate_ms = (time.perf_counter() - start) * 1e3
    gc.collect()
    after = _status()

    start = time.perf_counter()
    payload = pickle.dumps(ShardStream(spec, 0, None), protocol=pickle.HIGHEST_PROTOCOL)
    pickle.loads(payload)
    spawn_s = time.perf_counter() - start

    def median_ms(fn, repeats: int) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3

    state_ms = median_ms(loader.state_dict, 21)
    records_ms = median_ms(lambda: manifest.records, 21)
    del names
    return {
        "shards": len(manifest.shards),
        "rss_mb": after["VmRSS"] - before["VmRSS"],
        "anon_mb": after["RssAnon"] - before["RssAnon"],
        "file_mb": after["RssFile"] - before["RssFile"],
        "load_s": load_s,
        "locate_ms": locate_ms,
        "spawn_mb": len(payload) / 1e6,
        "spawn_s": spawn_s,
        "state_dict_ms": state_ms,
        "records_ms": records_ms,
    }


def synthesize(directory: Path, shards: int, inline: bool) -> None:
    """A manifest over ``shards`` synthetic shards (no shard files): v1 inline JSON, or v2 with shards.arrow."""
    import numpy as np

    from maws_scale.data.shards import Manifest, ShardInfo, shard_name, write_json_atomic

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    digests = rng.integers(0, 256, size=(shards, 32), dtype=np.uint8)
    infos = [ShardInfo(shard_name(i), 5000, 512 * 1024**2, digests[i].tobytes().hex()) for i in range(shards)]
    manifest = Manifest(infos, build={"source": "synthetic"})
    if not inline:
        manifest.save(directory)
        return
    raw = {k: v for k, v in manifest.to_json().items() if k not in ("shard_table", "shard_count", "manifest_version")}
    raw["shards"] = [vars(s) for s in infos]
    raw.pop("fingerprint")
    write_json_atomic(directory / "manifest.json", raw)


def _run_child(directory: Path, warm: Path, pythonpath: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(directory), str(warm)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default="100000,600000")
    parser.add_argument("--baseline", help="git revision whose code reads the inline-JSON manifests")
    parser.add_argument("--json", default="benchmarks/out/bench_manifest.json")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        baseline_path = str(REPO)
        if args.baseline:
            base = Path(tmp) / "baseline"
            base.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", args.baseline, "maws_scale", "kernels"],
                check=True,
                capture_output=True,
            )
            subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
            baseline_path = str(base)
        for n in (int(x) for x in args.shards.split(",")):
            for inline in (True, False):
                directory = Path(tmp) / f"{n}-{'v1' if inline else 'v2'}"
                warm = Path(tmp) / f"warm-{'v1' if inline else 'v2'}"
                synthesize(directory, n, inline)
                if not warm.is_dir():
                    synthesize(warm, 100, inline)
                code = baseline_path if inline else str(REPO)
                row = {
                    "format": "inline JSON (v1)" if inline else "shards.arrow (v2)",
                    "code": args.baseline if inline and args.baseline else "this checkout",
                    "manifest_json_mb": (directory / "manifest.json").stat().st_size / 1e6,
                    "shard_table_mb": sum(p.stat().st_size for p in directory.glob("shards.arrow")) / 1e6,
                    **_run_child(directory, warm, code),
                }
                rows.append(row)
                print(
                    f"{row['shards']:>8,} {row['format']:<18} rss {row['rss_mb']:7.1f} MB (anon {row['anon_mb']:6.1f},"
                    f" file {row['file_mb']:6.1f})  load {row['load_s']:6.2f} s  spawn {row['spawn_mb']:7.2f} MB "
                    f"{row['spawn_s']:6.3f} s  state_dict {row['state_dict_ms']:8.3f} ms  records "
                    f"{row['records_ms']:7.3f} ms  locate {row['locate_ms']:6.1f} ms",
                    flush=True,
                )
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}",
        "command": " ".join(sys.argv),
        "rows": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
