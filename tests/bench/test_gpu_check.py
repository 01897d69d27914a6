"""benchmarks/gpu_check.sh (plan, runner, per-step JSON) and bench_step.py's --cases / --no-baseline, on CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["env", "pytest", "kernels", "mae", "compile", "fp8", "wsp", "sync"]


def bench_step():
    spec = importlib.util.spec_from_file_location("bench_step", ROOT / "benchmarks" / "bench_step.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_step", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_dry_run_prints_the_plan_in_order_within_nine_minutes(tmp_path):
    out = tmp_path / "check"
    proc = run_script("--dry-run", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    total = int(re.search(r"at most (\d+) s", lines[0]).group(1))
    steps = [(m.group(1), int(m.group(2))) for line in lines[1:] if (m := re.match(r"(\w+)\s+timeout\s+(\d+)s", line))]
    assert [name for name, _ in steps] == STEPS
    assert sum(limit for _, limit in steps) == total <= 540  # 9 minutes, with room for start-up between steps
    plan = proc.stdout
    assert "-m pytest -m gpu" in plan and "--models vit_2b14" in plan and "sync_debug.py" in plan
    commands = {m.group(1): m.group(2) for line in lines[1:] if (m := re.match(r"(\w+)\s+timeout\s+\d+s\s+(.*)", line))}
    assert all("--no-baseline" in commands[k] for k in ("mae", "compile", "fp8", "wsp"))
    assert all("--cases 'vit_2b14 MAE'" in commands[k] for k in ("mae", "compile", "fp8"))
    assert "--cases 'vit_2b14 WSP'" in commands["wsp"] and "--set" not in commands["mae"] + commands["wsp"]
    # eager vs compile vs compile + FP8, one layout: only the overrides differ
    assert commands["compile"].count("--set") == 1 and "--set model.compile=blocks" in commands["compile"]
    assert "--set model.compile=blocks --set parallel.fp8=tensorwise" in commands["fp8"]
    base = commands["mae"].split(" --json")[0]
    assert all(commands[k].startswith(base + " --set") for k in ("compile", "fp8"))
    assert not out.exists()  # a dry run runs and writes nothing


def test_unknown_arguments_are_refused():
    proc = run_script("--bogus")
    assert proc.returncode == 2 and "--bogus" in proc.stderr


def test_every_step_writes_its_json_and_a_failure_keeps_its_stderr(tmp_path):
    """The real runner with a stand-in interpreter: 'kernels' fails, the others print JSON; all six still run."""
    fake = tmp_path / "python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = "-" ]; then exec {sys.executable} "$@"; fi\n'
        'case "$*" in *bench_kernels*) echo "CUDA error: no kernel image" >&2; exit 3 ;; esac\n'
        "echo '{\"ok\": true}'\n"
    )
    fake.chmod(0o755)
    out = tmp_path / "check"
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--out", str(out), "--python", str(fake)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert proc.returncode == 1 and f"1 of {len(STEPS)} steps failed" in proc.stdout
    records = {name: json.loads((out / f"step_{name}.json").read_text()) for name in STEPS}
    assert records["env"]["rc"] == 0 and records["env"]["result"] == {"ok": True}
    failed = records["kernels"]
    assert failed["rc"] == 3 and not failed["timed_out"] and failed["stderr_tail"] == ["CUDA error: no kernel image"]
    assert all(r["timeout_s"] > 0 and r["seconds"] <= r["timeout_s"] for r in records.values())


def test_bench_step_cases_and_no_baseline(tmp_path):
    module = bench_step()
    names = [c.name for c in module.cpu_cases() if module.selected(c.name, ["tiny_p8 mae"])]
    assert names == [
        "vit_tiny_p8 MAE fp32 zero0",
        "vit_tiny_p8 MAE fp32 zero1",
        "vit_tiny_p8 MAE fp32 zero2",
        "vit_tiny_p8 MAE bf16 zero2",
        "vit_tiny_p8 MAE bf16 zero3 ×2 ranks",
    ]
    cases = module.gpu_cases(1, 1000, ["vit_2b14 MAE"])  # planned for an 80 GiB device without CUDA
    assert [c.name.split(" zero")[0] for c in cases] == ["vit_2b14 MAE"]
    case = cases[0]
    with_base = module.bench_command(case, 10, 3, tmp_path / "o.json", tmp_path / "run")
    without = module.bench_command(case, 10, 3, tmp_path / "o.json", tmp_path / "run", baseline=False)
    assert "--baseline" in with_base and "--baseline" not in without
    assert module.main(["--suite", "cpu", "--cases", "no such case"]) == 2
    compiled = module.with_overrides(cases, ["model.compile=blocks", "parallel.fp8=tensorwise"])[0]
    assert compiled.overrides == [*case.overrides, "model.compile=blocks", "parallel.fp8=tensorwise"]
    assert compiled.name == f"{case.name} [model.compile=blocks parallel.fp8=tensorwise]"
    assert module.with_overrides(cases, []) == cases


@pytest.mark.parametrize("baseline", [None, {"speedup": 2.0, "images_per_s_per_device": 1.0, "speedup_cpu_time": 1.0}])
def test_a_row_without_baseline_has_no_speedup(baseline):
    module = bench_step()
    case = module.Case("x", [], targets={"speedup": 1.5})
    result = dict(micro_batch=4, images_per_s=1.0, tflops_per_device=1.0, mfu=None, mfu_measured_peak=0.1)
    result.update(world_size=1, peak_mem_bytes=2**30, planner_error_pct=1.0, baseline=baseline)
    r = module.row(case, result)
    assert (r["speedup"], r["meets_targets"]) == ((None, {}) if baseline is None else (2.0, {"speedup": True}))
