"""The steps of the one-shot GPU check, run by benchmarks/gpu_check.sh after it has installed the carried wheels.

    python3 benchmarks/gpu_check.py --out DIR [--stand-in] [--dry-run] [--budget SECONDS]

Runs each step in its own process under a timeout (the process group is killed ``KILL_AFTER`` s later if it ignores
SIGTERM), keeps going after a failure, and writes at most two files into ``--out`` after every step, so a run cut
off still brings back what it measured: ``summary.json`` (every step's rc, seconds, timeout and figures) and
``logs.tar.gz`` (each step's stdout, stderr and result JSON). stdout ends with a table: step, rc, seconds, img/s,
MFU, peak GiB. ``--stand-in`` runs every step's CPU-sized twin (tiny model, a few steps) through the same scripts,
so the whole check can be proven on a CPU machine that has only the lent machine's packages plus the wheels.

Standard library only: it runs before anything is known about the interpreter's packages.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KILL_AFTER = 2  # seconds between SIGTERM and SIGKILL of a step's process group
INSTALL_BUDGET = 20  # seconds gpu_check.sh allows for installing the wheels before this driver starts
TOTAL_BUDGET = 360  # the check's wall time on one H100, install included (a 15-minute loan leaves room for a rerun)
BENCH_FIGURES = ("images_per_s", "mfu", "peak_mem_gib", "micro_batch", "tflops_per_device")


@dataclass(frozen=True)
class Step:
    name: str
    timeout: int  # seconds
    gpu: list[str]  # the command on the GPU machine (argv after the interpreter)
    stand_in: list[str]  # its CPU-sized twin: same script, tiny sizes


ENV_SCRIPT = """
import json, torch
from maws_scale.models.attention import xformers_status
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1))
    kinds = ("flash", "mem_efficient", "math", "cudnn")
    info["sdpa"] = {k: getattr(torch.backends.cuda, f"{k}_sdp_enabled")() for k in kinds}
for name in ("triton", "deepspeed", "xformers", "megatron.core", "torchao", "pydantic", "maws_scale.kernels"):
    try:
        module = __import__(name, fromlist=["_"])
        info[name] = getattr(module, "__version__", "imported")
    except Exception as err:
        info[name] = f"unavailable: {type(err).__name__}: {err}"
info["xformers_runs"] = xformers_status("cuda" if torch.cuda.is_available() else "cpu")
info["attention"] = "SDPA (xformers is not carried: on this torch it calls the same kernels)"
print(json.dumps(info, indent=2))
"""


def gpu_test_files() -> list[str]:
    """The test modules that hold ``gpu``-marked tests: pytest collects only these (the others need packages, e.g.
    mlflow or hypothesis, that the lent machine lacks)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py") if "mark.gpu" in p.read_text())


def steps(work: Path) -> list[Step]:
    """The check, in order. mae, compile and fp8 run one layout (the planner's bf16 micro-batch), so their img/s
    compare directly; the compile steps are sized for inductor's compile of one ViT-2B block (forward + backward)."""
    step = [
        "benchmarks/bench_step.py",
        "--no-baseline",
        "--repeat",
        "1",
        "--set",
        "tracking.enabled=false",
    ]
    gpu_step = [*step, "--suite", "gpu", "--steps", "6", "--warmup", "3"]
    # the twin: vit_tiny_p8 on one CPU rank, the CPU suite's case of the same stage, two timed steps after one warm-up
    cpu_step = [*step, "--suite", "cpu", "--steps", "2", "--warmup", "1"]
    compiled = ["--set", "model.compile=blocks"]
    fp8 = [*compiled, "--set", "parallel.fp8=tensorwise"]
    pytest = ["-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *gpu_test_files()]
    kernels = ["benchmarks/bench_kernels.py", "--models", "vit_2b14"]

    def case(stage: str, name: str) -> tuple[list[str], list[str]]:
        out = ["--json", str(work / f"{name}.json")]
        return ["--cases", f"vit_2b14 {stage}", *out], ["--cases", f"vit_tiny_p8 {stage} fp32 zero1", *out]

    mae_gpu, mae_cpu = case("MAE", "mae")
    comp_gpu, comp_cpu = case("MAE", "compile")
    fp8_gpu, fp8_cpu = case("MAE", "fp8")
    wsp_gpu, wsp_cpu = case("WSP", "wsp")
    sync = ["benchmarks/sync_debug.py", "--steps", "6", "--json", str(work / "sync.json")]
    return [
        Step("env", 15, ["-c", ENV_SCRIPT], ["-c", ENV_SCRIPT]),
        Step("pytest", 30, pytest, pytest),
        Step(
            "kernels",
            25,
            [*kernels, "--compile", "off", "--json", str(work / "kernels.json")],
            [*kernels, "--cpu-smoke", "--json", str(work / "kernels.json")],
        ),
        Step("mae", 45, [*gpu_step, *mae_gpu], [*cpu_step, *mae_cpu]),
        Step("compile", 75, [*gpu_step, *comp_gpu, *compiled], [*cpu_step, *comp_cpu, *compiled]),
        Step(
            "fp8",
            70,
            [*gpu_step, *fp8_gpu, *fp8],
            [*cpu_step, *fp8_cpu, *fp8, "--set", "parallel.fp8_emulate=true"],
        ),
        Step("wsp", 40, [*gpu_step, *wsp_gpu], [*cpu_step, *wsp_cpu]),
        Step("sync", 20, [*sync, "--model", "vit_b16"], [*sync, "--model", "vit_tiny_p8", "--stand-in"]),
    ]


def budget(plan: list[Step]) -> int:
    """Worst-case wall seconds of the check: every step's timeout and kill margin, plus the install."""
    return INSTALL_BUDGET + sum(s.timeout + KILL_AFTER for s in plan)


def run_step(python: str, step: Step, argv: list[str], logs: Path, timeout: float) -> tuple[int, float]:
    """Run one step in its own process group under its timeout; rc 124 when it timed out (137 if it had to be
    killed). stdout and stderr go to ``logs/<step>.stdout|.stderr``."""
    start = time.monotonic()
    with open(logs / f"{step.name}.stdout", "wb") as out, open(logs / f"{step.name}.stderr", "wb") as err:
        proc = subprocess.Popen([python, *argv], cwd=ROOT, stdout=out, stderr=err, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=KILL_AFTER)
                rc = 124
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = 137
    return rc, time.monotonic() - start


def figures(name: str, work: Path, stdout: str) -> dict:
    """A step's figures: the first row of a bench_step JSON (img/s, MFU, peak GiB, ...), another script's JSON, or
    the JSON the step printed (env)."""
    path = work / f"{name}.json"
    try:
        body = json.loads(path.read_text()) if path.is_file() else json.loads(stdout)
    except ValueError:
        return {}
    if not isinstance(body, dict):
        return {}
    if "rows" in body and body.get("suite") in ("gpu", "cpu"):
        rows = body["rows"]
        fig = {k: rows[0].get(k) for k in BENCH_FIGURES} if rows else {}
        return {**fig, "device": body.get("device"), "failed": body.get("failed") or None}
    if name == "kernels":
        return {k: body.get(k) for k in ("device", "mode", "performance_figure", "copy_GBps")}
    return body


def record(step: Step, rc: int, seconds: float, timeout: float, work: Path, logs: Path) -> dict:
    stdout = (logs / f"{step.name}.stdout").read_text(errors="replace")
    entry = {
        "step": step.name,
        "rc": rc,
        "seconds": round(seconds, 1),
        "timeout_s": timeout,
        "timed_out": rc in (124, 137),
        "figures": figures(step.name, work, stdout),
    }
    if rc != 0:
        entry["stderr_tail"] = (logs / f"{step.name}.stderr").read_text(errors="replace").splitlines()[-40:]
    return entry


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_results(out: Path, summary: dict, work: Path, logs: Path) -> None:
    """``summary.json`` and ``logs.tar.gz`` (logs and result JSONs), both written atomically."""
    write_atomic(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted([*logs.iterdir(), *work.glob("*.json")]):
            tar.add(path, arcname=f"{path.parent.name}/{path.name}")
    write_atomic(out / "logs.tar.gz", buf.getvalue())


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(records: list[dict]) -> str:
    lines = [f"{'step':<8} {'rc':>4} {'seconds':>8} {'img/s':>10} {'MFU':>7} {'peak GiB':>9}"]
    for r in records:
        f = r["figures"]
        mfu = f.get("mfu")
        lines.append(
            f"{r['step']:<8} {r['rc']:>4} {r['seconds']:>8.1f} {fmt(f.get('images_per_s'), '.1f'):>10} "
            f"{fmt(None if mfu is None else 100 * mfu, '.1f'):>6}% {fmt(f.get('peak_mem_gib'), '.2f'):>9}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="result folder (at most 2 files: summary.json, logs.tar.gz)")
    parser.add_argument("--stand-in", action="store_true", help="the CPU-sized twin of every step")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")
    parser.add_argument("--wheels", default=None, help="the wheel folder the install used (recorded)")
    parser.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every timeout (a loaded CPU)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work, logs = Path(tmp) / "results", Path(tmp) / "logs"
        plan = steps(work)
        if args.dry_run:
            mode = "stand-in (CPU twins)" if args.stand_in else "GPU"
            print(f"gpu_check plan ({mode}): {len(plan)} steps, at most {budget(plan)} s with the install "
                  f"(limit {TOTAL_BUDGET} s), results in {out}/summary.json + logs.tar.gz")  # fmt: skip
            for s in plan:
                argv = s.stand_in if args.stand_in else s.gpu
                cmd = (
                    "python -c <versions, device, attention backends>"
                    if argv[0] == "-c"
                    else shlex.join(["python", *argv])
                )
                print(f"{s.name:<8} timeout {s.timeout:>4}s  {cmd}")
            return 0
        work.mkdir()
        logs.mkdir()
        out.mkdir(parents=True, exist_ok=True)
        summary = {
            "mode": "stand-in" if args.stand_in else "gpu",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "python": sys.executable,
            "wheels": args.wheels,
            "budget_s": budget(plan),
            "timeout_scale": args.timeout_scale,
            "steps": [],
        }
        for s in plan:
            timeout = round(s.timeout * args.timeout_scale, 1)
            print(f"gpu_check: {s.name} (timeout {timeout} s) ...", flush=True)
            rc, seconds = run_step(sys.executable, s, s.stand_in if args.stand_in else s.gpu, logs, timeout)
            summary["steps"].append(record(s, rc, seconds, timeout, work, logs))
            write_results(out, summary, work, logs)
        records = summary["steps"]
        failed = [r["step"] for r in records if r["rc"] != 0]
        for r in records:
            if r["rc"] != 0:
                print(f"--- {r['step']} rc {r['rc']}: stderr tail", *r.get("stderr_tail", [])[-8:], sep="\n")
        print(f"gpu_check: {len(failed)} of {len(records)} steps failed; results in {out}")
        print(table(records))
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
