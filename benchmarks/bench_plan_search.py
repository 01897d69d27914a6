"""How long `maws-scale plan --search` takes: the layout search of the memory planner, per model and stage.

    .venv/bin/python benchmarks/bench_plan_search.py [--repeats 3] [--baseline 063b581]
        [--only configs/vit_6.5b14_maws.yaml:mae] [--json benchmarks/out/bench_plan_search.json]

Each row runs, in a fresh process, what ``plan --search`` runs for one shipped config and stage on 64 GPUs (WSP with
a 27,000-class head): import the planner, load the config, search every candidate layout. It reports the search's
wall and CPU seconds, the whole process's wall and CPU seconds (imports included: what a user waits for), and the
number of layouts. ``--baseline REV`` runs the same in the code of git revision REV (``git archive``). The machine's
load shows as wall time above CPU time; compare CPU seconds on a shared machine. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = (
    ("configs/vit_6.5b14_maws.yaml", "mae"),
    ("configs/vit_6.5b14_maws.yaml", "wsp"),
    ("configs/vit_2b14_maws.yaml", "mae"),
    ("configs/vit_2b14_maws.yaml", "wsp"),
)
GPUS = 64
CLASSES = 27_000
CHILD = "--child"


def child(config: str, stage: str) -> dict[str, float]:
    """One search in this process: the seconds of the search alone (the imports are timed by the parent)."""
    from maws_scale.config import load_config
    from maws_scale.perf.planner import Hardware, search

    cfg = load_config(REPO / config).for_stage(stage)
    start, cpu = time.perf_counter(), time.process_time()
    rows = search(cfg, Hardware(gpus=GPUS), CLASSES if stage == "wsp" else None)
    return {"search_s": time.perf_counter() - start, "search_cpu_s": time.process_time() - cpu, "layouts": len(rows)}


def run_child(code: str, config: str, stage: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": code, "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, CHILD, config, stage], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{config} {stage} in {code}: exit {out.returncode}\n{out.stderr[-2000:]}")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "process_s": wall, "process_cpu_s": cpu}


def baseline_tree(rev: str, into: Path) -> str:
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "maws_scale", "kernels", "ds_configs"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return str(into)


def measure(codes: list[tuple[str, str]], cases: list[tuple[str, str]], repeats: int) -> list[dict]:
    """Every case in every code tree, ``repeats`` times; each row keeps its runs and the figures of the fastest."""
    rows, total = [], len(codes) * len(cases) * repeats
    for label, code in codes:
        for config, stage in cases:
            runs = []
            for _ in range(repeats):
                runs.append(run_child(code, config, stage))
                line = f"{len(rows) * repeats + len(runs)}/{total} {label} {config} {stage}"
                print(f"{line}: {runs[-1]['process_s']:.1f} s", file=sys.stderr)
            best = min(runs, key=lambda r: r["process_cpu_s"])
            rows.append({"code": label, "config": config, "stage": stage, "runs": runs, **best})
    return rows


COLUMNS = (
    ("layouts", "d"),
    ("search_s", ".2f"),
    ("search_cpu_s", ".2f"),
    ("process_s", ".2f"),
    ("process_cpu_s", ".2f"),
)


def main() -> None:
    if sys.argv[1:2] == [CHILD]:
        print(json.dumps(child(*sys.argv[2:4])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the table shows the fastest")
    parser.add_argument("--baseline", help="git revision to compare with")
    parser.add_argument("--only", action="append", help="CONFIG:STAGE rows to run (repeatable; default: all)")
    parser.add_argument("--json", default="benchmarks/out/bench_plan_search.json")
    args = parser.parse_args()
    cases = [c for c in CASES if not args.only or ":".join(c) in args.only]
    with tempfile.TemporaryDirectory() as tmp:
        codes = [("this tree", str(REPO))]
        if args.baseline:
            codes.append((args.baseline, baseline_tree(args.baseline, Path(tmp))))
        rows = measure(codes, cases, args.repeats)
    print(f"{'code':<10} {'config':<30} {'stage':<5} " + " ".join(f"{name:>13}" for name, _ in COLUMNS))
    for r in rows:
        cells = " ".join(f"{r[name]:>13{fmt}}" for name, fmt in COLUMNS)
        print(f"{r['code']:<10} {r['config']:<30} {r['stage']:<5} {cells}")
    from maws_scale.data.shards import write_json_atomic

    meta = {"machine": platform.node(), "cpus": os.cpu_count(), "load": os.getloadavg(), "gpus": GPUS}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.json, {"meta": meta, "rows": rows})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
