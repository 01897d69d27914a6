"""benchmarks/gpu_check.sh end to end on a CPU stand-in of the lent GPU machine (issue 30).

The stand-in is a scratch venv with this machine's torch and only the packages the GPU machine's image lists that
the project imports (no deepspeed, pydantic, hjson, mlflow, megatron-core, torchao, submitit, pytest): everything
else must come from the wheels ``make gpu-wheels`` builds, installed by the script itself with pip --no-index.
Every step runs its CPU-sized twin and the results come back as the lent machine would return them.

The venv links the image's packages, and everything they require, from this interpreter's site-packages (the
same torch build, no second copy of 1.9 GB to unpack: seconds instead of ~40 s) and pip-installs the one package whose
version differs there, triton 3.6. The venv, the wheels and inductor's cache are kept under the git-ignored
``.cache/gpu-standin/`` keyed by a hash of what they are built from, so a machine builds them once (a fresh one: ~10 s
for the venv, seconds for the wheels, about a minute of CPU for the compile twins' first inductor compiles).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tarfile
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path

import pytest
from dist_support import fresh_process_env
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "gpu-standin"
STEPS = ["env", "pytest", "kernels", "mae", "compile", "fp8", "wsp", "sync"]
# The GPU machine's image (STACK.md, "The lent GPU machine") less timm/torchvision, which do not install beside a CPU
# torch 2.13 and which the project does not import; triton because the image has it (3.6, as on that machine).
IMAGE_PACKAGES = [
    "torch==2.13.0",
    "numpy",
    "pyarrow",
    "pyyaml",
    "rich",
    "tqdm",
    "safetensors",
    "tokenizers",
    "pillow",
    "psutil",
    "matplotlib",
    "einops",
    "ninja",
    "py-cpuinfo",
    "msgpack",
]
INSTALLED_PACKAGES = ["triton==3.6.0"]  # this venv has another version; pip-installed into the stand-in
ABSENT = ["deepspeed", "pydantic", "hjson", "mlflow", "megatron.core", "torchao", "submitit", "pytest", "xformers"]
# a loaded CPU: generous timeouts (the GPU budget is checked in test_gpu_check.py)
STANDIN_COMMAND = ["bash", "benchmarks/gpu_check.sh", "--stand-in", "--timeout-scale", "10"]
PYVER = f"{sys.version_info[0]}.{sys.version_info[1]}"


def key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def required_distributions(requirements: list[str]) -> list[Distribution]:
    """The installed distributions of ``requirements`` and all they require (markers evaluated, no extras); a pinned
    version that is not the installed one is refused."""
    found: dict[str, Distribution] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        if requirement.name.lower() in found:
            continue
        try:
            dist = distribution(requirement.name)
        except PackageNotFoundError:
            raise AssertionError(f"the stand-in needs {requirement}, which this venv lacks") from None
        pinned = requirement.specifier.contains(dist.version, prereleases=True)
        assert pinned, f"the stand-in needs {requirement}; this venv has {dist.version}"
        found[requirement.name.lower()] = dist
        for text in dist.requires or []:
            needed = Requirement(text)
            if needed.marker is None or needed.marker.evaluate({"extra": ""}):
                todo.append(needed)
    return list(found.values())


def top_level_entries(dist: Distribution) -> set[str]:
    """The names ``dist`` installed at the top of site-packages (packages, modules, its .dist-info, .libs folders)."""
    tops = {Path(str(f)).parts[0] for f in dist.files or []}
    return {t for t in tops if t not in ("..", "__pycache__")}


def standin_python() -> Path:
    """The scratch venv (built once per package list and interpreter): the image's packages linked from here."""
    venv = CACHE / f"venv-{key(*IMAGE_PACKAGES, *INSTALLED_PACKAGES, sys.version, 'linked')}"
    python = venv / "bin" / "python"
    if not (venv / ".ready").is_file():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        site = Path(
            subprocess.run(
                [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )
        linked = required_distributions(IMAGE_PACKAGES)
        # pip must never replace a linked package (it would delete this venv's files through the link): the installed
        # ones are checked against the linked ones and installed without their dependencies
        clash = {d.metadata["Name"].lower() for d in linked} & {Requirement(r).name for r in INSTALLED_PACKAGES}
        assert not clash, f"{clash} would be both linked and installed"
        for dist in linked:
            for name in top_level_entries(dist):
                target = site / name
                if not target.exists():
                    target.symlink_to(Path(str(dist.locate_file(name))))
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--disable-pip-version-check",
                *INSTALLED_PACKAGES,
            ],
            check=True,
        )
        (venv / ".ready").touch()
    return python


def gpu_wheels() -> Path:
    """``make gpu-wheels`` for this interpreter's version into the cache (make skips it when up to date)."""
    makefile = (ROOT / "Makefile").read_text()
    wheels = CACHE / f"wheels-py{PYVER}-{key(makefile)}"
    subprocess.run(
        ["make", "-s", "-C", str(ROOT), "gpu-wheels", f"GPU_WHEELS_PY={PYVER}", f"GPU_WHEELS={wheels}"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return wheels


@pytest.mark.timeout(3600)
def test_gpu_check_runs_end_to_end_on_a_cpu_standin_of_the_gpu_machine(tmp_path):
    python = standin_python()
    for name in ABSENT:  # the stand-in is the machine as it is: these must come from the carried wheels
        probe = subprocess.run([str(python), "-c", f"import {name}"], capture_output=True)
        assert probe.returncode != 0, f"the stand-in venv has {name}; it must not"
    wheels = gpu_wheels()
    names = sorted(p.name for p in wheels.glob("*.whl"))
    assert any(n.startswith("deepspeed-0.19.8-py3-none-any") for n in names), names
    size = sum(p.stat().st_size for p in wheels.glob("*.whl"))
    assert size < 16 << 20, f"wheels {size / 2**20:.1f} MiB"  # measured: 11 MB (no xformers)
    out = tmp_path / "out"
    env = fresh_process_env(drop=("PYTHONPATH", "VIRTUAL_ENV"))
    env.update(OMP_NUM_THREADS="1", OUT=str(out), TORCHINDUCTOR_CACHE_DIR=str(CACHE / f"inductor-py{PYVER}"))
    proc = subprocess.run(
        [*STANDIN_COMMAND, "--python", str(python), "--wheels", str(wheels)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3500,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    # what comes back: $OUT (set by the caller, as on the lent machine) holds two files, within the 8-file limit
    assert sorted(p.name for p in out.iterdir()) == ["logs.tar.gz", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "stand-in" and summary["budget_s"] <= 360
    records = {r["step"]: r for r in summary["steps"]}
    assert list(records) == STEPS and all(r["rc"] == 0 for r in records.values())
    env_info = records["env"]["figures"]
    assert env_info["deepspeed"] == "0.19.8" and env_info["torchao"].startswith("0.18")
    assert not env_info["maws_scale.kernels"].startswith("unavailable") and "SDPA" in env_info["attention"]
    for name in ("mae", "compile", "fp8", "wsp"):
        figures = records[name]["figures"]
        assert figures["images_per_s"] > 0 and figures["peak_mem_gib"] > 0 and not figures["failed"], figures
    with tarfile.open(out / "logs.tar.gz") as tar:
        members = set(tar.getnames())
    assert {f"logs/{s}.stderr" for s in STEPS} <= members and "results/mae.json" in members
    # stdout ends with the table: step, rc, seconds, img/s, MFU, peak GiB
    lines = proc.stdout.strip().splitlines()
    header = lines.index(
        next(line for line in lines if re.match(r"step\s+rc\s+seconds\s+img/s\s+MFU\s+peak GiB", line))
    )
    assert [line.split()[0] for line in lines[header + 1 :]] == STEPS
