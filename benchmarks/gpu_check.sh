#!/usr/bin/env bash
# One-shot check of a single H100/H200 in at most 6 minutes, install included, on the lent machine as it is: its own
# python3 (torch, numpy, pyarrow, ... but no deepspeed, pydantic, megatron-core, torchao, pytest) plus the wheels
# `make gpu-wheels` put in benchmarks/gpu_wheels/py3.12 (carried, git-ignored), installed here with
# pip --no-index --no-deps --target into a scratch folder; the project runs from this checkout, tracking disabled.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--python PY] [--wheels DIR] [--stand-in [--timeout-scale F]] [--dry-run]
#
# Results: DIR (default $OUT when set, else benchmarks/out/gpu_check-<time>) gets summary.json (every step's rc,
# seconds and figures) and logs.tar.gz, rewritten after every step; stdout ends with the table step / rc / seconds /
# img/s / MFU / peak GiB. Steps and timeouts: benchmarks/gpu_check.py (--dry-run prints them). --stand-in runs each
# step's CPU-sized twin (tests/perf/test_gpu_standin.py runs it in a venv holding only the machine's packages).
set -u
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-benchmarks/out/gpu_check-$(date +%Y%m%d-%H%M%S)}"
PY="python3"
WHEELS=""
DRIVER_ARGS=()
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --stand-in) DRIVER_ARGS+=(--stand-in); shift ;;
    --timeout-scale) DRIVER_ARGS+=(--timeout-scale "$2"); shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (known: --out DIR, --python PY, --wheels DIR, --stand-in, --timeout-scale F, --dry-run)" >&2
       exit 2 ;;
  esac
done
command -v "$PY" >/dev/null || { echo "gpu_check.sh: no interpreter '$PY' (--python)" >&2; exit 2; }
if [ "$DRY" = 1 ]; then
  exec "$PY" benchmarks/gpu_check.py --out "$OUT_DIR" --dry-run "${DRIVER_ARGS[@]}"
fi

PYVER="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
WHEELS="${WHEELS:-benchmarks/gpu_wheels/py$PYVER}"
if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  echo "gpu_check.sh: no wheels in $WHEELS: run 'make gpu-wheels GPU_WHEELS_PY=$PYVER' and carry that folder" >&2
  exit 2
fi

SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT
start=$(date +%s)
if "$PY" -m pip --version >/dev/null 2>&1; then
  timeout 20 "$PY" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile \
    --target "$SCRATCH/site" "$WHEELS"/*.whl || { echo "gpu_check.sh: installing $WHEELS failed" >&2; exit 1; }
else  # no pip: a wheel is a zip of its import tree
  for whl in "$WHEELS"/*.whl; do "$PY" -m zipfile -e "$whl" "$SCRATCH/site" || exit 1; done
fi
echo "gpu_check: installed $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS in $(( $(date +%s) - start )) s"

export PYTHONPATH="$SCRATCH/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$SCRATCH/inductor}"  # shared by the compile and fp8 steps
"$PY" benchmarks/gpu_check.py --out "$OUT_DIR" --wheels "$WHEELS" "${DRIVER_ARGS[@]}"
