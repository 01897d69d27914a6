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


def child(config: str, stage: str) -> dict[str, float]:
    """One search in this process: the seconds of the search alone (the imports are timed by the parent)."""
    from maws_scale.bench.planner import Hardware, search
    from maws_scale.config import load_config

    cfg = load_config(REPO / config).for_stage(stage)
    start, cpu = time.perf_counter(), time.process_time()
    rows = search(cfg, Hardware(gpus=GPUS), CLASSES if stage == "wsp" else None)
    return {"search_s": time.perf_counter() - start, "search_cpu_s": time.process_time() - cpu, "layouts": len(rows)}


def run_child(code: str, config: str, stage: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": code, "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "--child", config, stage], env=env, capture_output=True, text=True, check=True
    )
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the table shows the fastest")
    parser.add_argument("--baseline", help="git revision to compare with")
    parser.add_argument("--only", action="append", help="CONFIG:STAGE rows to run (repeatable; default: all)")
    parser.add_argument("--json", default="benchmarks/out/bench_plan_search.json")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        codes = [("this tree", str(REPO))]
        if args.baseline:
            codes.append((args.baseline, baseline_tree(args.baseline, Path(tmp))))
        cases = [c for c in CASES if not args.only or ":".join(c) in args.only]
        total = len(codes) * len(cases) * args.repeats
        done = 0
        for label, code in codes:
            for config, stage in cases:
                runs = []
                for _ in range(args.repeats):
                    runs.append(run_child(code, config, stage))
                    done += 1
                    print(f"{done}/{total} {label} {config} {stage}: {runs[-1]['process_s']:.1f} s", file=sys.stderr)
                best = min(runs, key=lambda r: r["process_cpu_s"])
                rows.append({"code": label, "config": config, "stage": stage, "runs": runs, **best})
    header = f"{'code':<10} {'config':<30} {'stage':<5} {'layouts':>7} {'search s':>9} {'search cpu':>10} "
    header += f"{'process s':>9} {'process cpu':>11}"
    print(header)
    for r in rows:
        print(
            f"{r['code']:<10} {r['config']:<30} {r['stage']:<5} {r['layouts']:>7} {r['search_s']:>9.2f} "
            f"{r['search_cpu_s']:>10.2f} {r['process_s']:>9.2f} {r['process_cpu_s']:>11.2f}"
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.node(), "cpus": os.cpu_count(), "load": os.getloadavg(), "gpus": GPUS}
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    tmp_out.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
