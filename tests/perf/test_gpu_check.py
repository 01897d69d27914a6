"""benchmarks/gpu_check.sh + gpu_check.py (plan, budget, timeouts, the two result files) and bench_step.py's --cases /
--no-baseline, on CPU. The whole check on a CPU stand-in of the GPU machine: test_gpu_standin.py."""

from __future__ import annotations

import importlib.util
import json
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


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("stand_in", [False, True], ids=["gpu", "stand-in"])
def test_dry_run_prints_the_plan_in_order_within_six_minutes(tmp_path, stand_in):
    out = tmp_path / "check"
    proc = run_script("--dry-run", "--out", str(out), "--python", sys.executable, *(["--stand-in"] if stand_in else []))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    total = int(re.search(r"at most (\d+) s with the install", lines[0]).group(1))
    steps = [(m.group(1), int(m.group(2))) for line in lines[1:] if (m := re.match(r"(\w+)\s+timeout\s+(\d+)s", line))]
    assert [name for name, _ in steps] == STEPS
    module = gpu_check()
    # the timeouts, their kill margins and the install fit the 6 minutes a 15-minute loan allows (one rerun)
    assert total == module.INSTALL_BUDGET + sum(limit + module.KILL_AFTER for _, limit in steps) <= 360
    commands = {m.group(1): m.group(2) for line in lines[1:] if (m := re.match(r"(\w+)\s+timeout\s+\d+s\s+(.*)", line))}
    assert "-m pytest -m gpu" in commands["pytest"] and "tests/models/test_attention.py" in commands["pytest"]
    assert "sync_debug.py" in commands["sync"] and ("--stand-in" in commands["sync"]) == stand_in
    assert all("--no-baseline" in commands[k] and "tracking.enabled=false" in commands[k] for k in STEPS[3:7])
    model = "vit_tiny_p8" if stand_in else "vit_2b14"
    assert all(f"--cases '{model} MAE" in commands[k] for k in ("mae", "compile", "fp8"))
    assert f"--cases '{model} WSP" in commands["wsp"]
    # eager vs compile vs compile + FP8, one layout: only the overrides differ
    assert "model.compile" not in commands["mae"] + commands["wsp"]
    assert "--set model.compile=blocks" in commands["compile"]
    assert "--set model.compile=blocks --set parallel.fp8=tensorwise" in commands["fp8"]
    assert not out.exists()  # a dry run runs and writes nothing


def test_unknown_arguments_are_refused():
    proc = run_script("--bogus")
    assert proc.returncode == 2 and "--bogus" in proc.stderr


def test_missing_wheels_are_named_with_the_make_command(tmp_path):
    proc = run_script("--python", sys.executable, "--wheels", str(tmp_path), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "make gpu-wheels GPU_WHEELS_PY=" in proc.stderr and not (tmp_path / "o").exists()


def test_a_step_over_its_timeout_is_killed_and_the_results_stay_two_files(tmp_path):
    module = gpu_check()
    logs, work, out = tmp_path / "logs", tmp_path / "results", tmp_path / "out"
    for d in (logs, work, out):
        d.mkdir()
    slow = module.Step("slow", 1, [], [])
    rc, seconds = module.run_step(sys.executable, slow, ["-c", "import time; time.sleep(30)"], logs, 0.5)
    assert rc == 124 and seconds < 10
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(30)"
    )
    rc, _ = module.run_step(sys.executable, module.Step("stubborn", 1, [], []), ["-c", stubborn], logs, 1.0)
    assert rc == 137
    ok = module.Step("ok", 5, [], [])
    rc, seconds = module.run_step(sys.executable, ok, ["-c", "print('{\"a\": 1}')"], logs, 30)
    records = [module.record(slow, 124, 0.5, 0.5, work, logs), module.record(ok, rc, seconds, 30, work, logs)]
    assert records[0]["timed_out"] and records[1]["figures"] == {"a": 1} and records[1]["rc"] == 0
    module.write_results(out, {"steps": records}, work, logs)
    assert sorted(p.name for p in out.iterdir()) == ["logs.tar.gz", "summary.json"]
    assert json.loads((out / "summary.json").read_text())["steps"][0]["step"] == "slow"
    table = module.table(records).splitlines()
    assert table[0].split() == ["step", "rc", "seconds", "img/s", "MFU", "peak", "GiB"] and len(table) == 3


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


@pytest.mark.parametrize(
    "baseline", [None, {"speedup": 2.0, "images_per_s_per_device": 1.0, "speedup_cpu_time": 1.0, "step_s": 1.0}]
)
def test_a_row_without_baseline_has_no_speedup(baseline):
    module = bench_step()
    case = module.Case("x", [], targets={"speedup": 1.5})
    result = dict(micro_batch=4, images_per_s=1.0, tflops_per_device=1.0, mfu=None, mfu_measured_peak=0.1)
    result.update(world_size=1, peak_mem_bytes=2**30, planner_error_pct=1.0, baseline=baseline, step_s=0.5)
    r = module.row(case, result)
    assert (r["speedup"], r["meets_targets"]) == ((None, {}) if baseline is None else (2.0, {"speedup": True}))
