#!/usr/bin/env bash
# One-shot check of a single H100/H200 in at most 9 minutes: every step runs under `timeout`, writes its own JSON as it
# goes, and keeps the tail of its stderr when it fails; a failing step does not stop the next.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--python PY] [--dry-run]
#
# Steps, in order (seconds = the step's timeout; they add up to 540 s):
#   env      20  torch / CUDA / device / triton / deepspeed / xformers / torchao versions, attention backends that run
#   pytest   70  pytest -m gpu (the GPU tests of the suite)
#   kernels  50  fused MAE kernels vs eager torch on ViT-2B shapes, effective bandwidth (bench_kernels.py)
#   mae      80  ViT-2B MAE steps at the planner's best single-GPU layout, eager, img/s and MFU (bench_step.py)
#   compile 110  the same with model.compile=blocks (inductor; the compile happens in the 3 warm-up steps)
#   fp8     110  the same with model.compile=blocks and parallel.fp8=tensorwise (MFU against the bf16 peak)
#   wsp      70  ViT-2B WSP steps, eager
#   sync     30  CUDA sync-debug pass over non-log training steps (sync_debug.py)
# mae, compile and fp8 run one layout (the planner's bf16 micro-batch), so their img/s compare directly.
# --dry-run prints this plan (the commands, their timeouts, the total) and runs nothing.
set -u

OUT="benchmarks/out/gpu_check-$(date +%Y%m%d-%H%M%S)"
PY="${PYTHON:-.venv/bin/python}"
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (known: --out DIR, --python PY, --dry-run)" >&2; exit 2 ;;
  esac
done
[ -x "$PY" ] || PY="$(command -v python3)"

ENV_PY='import json, torch
from maws_scale.models.attention import xformers_status
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1))
    info["sdpa"] = {k: getattr(torch.backends.cuda, f"{k}_sdp_enabled")() for k in ("flash", "mem_efficient", "math", "cudnn")}
for name in ("triton", "deepspeed", "xformers", "megatron.core", "torchao"):
    try:
        info[name] = __import__(name, fromlist=["_"]).__version__
    except Exception as err:
        info[name] = f"unavailable: {type(err).__name__}"
info["xformers_runs"] = xformers_status("cuda" if torch.cuda.is_available() else "cpu")
print(json.dumps(info, indent=2))'

NAMES=(env pytest kernels mae compile fp8 wsp sync)
LIMITS=(20 70 50 80 110 110 70 30)
STEP="$PY benchmarks/bench_step.py --suite gpu --no-baseline --repeat 1 --steps 6 --warmup 3"
COMMANDS=(
  "$PY -c '$ENV_PY'"
  "$PY -m pytest -m gpu -q -p no:cacheprovider tests"
  "$PY benchmarks/bench_kernels.py --models vit_2b14 --compile off --json $OUT/kernels.json"
  "$STEP --cases 'vit_2b14 MAE' --json $OUT/mae.json"
  "$STEP --cases 'vit_2b14 MAE' --set model.compile=blocks --json $OUT/compile.json"
  "$STEP --cases 'vit_2b14 MAE' --set model.compile=blocks --set parallel.fp8=tensorwise --json $OUT/fp8.json"
  "$STEP --cases 'vit_2b14 WSP' --json $OUT/wsp.json"
  "$PY benchmarks/sync_debug.py --model vit_b16 --steps 6 --json $OUT/sync.json"
)

total=0
for limit in "${LIMITS[@]}"; do total=$((total + limit)); done
if [ "$DRY" = 1 ]; then
  echo "gpu_check plan: ${#NAMES[@]} steps, at most ${total} s, results in $OUT/<step>.json"
  for i in "${!NAMES[@]}"; do
    printf '%-8s timeout %4ss  %s\n' "${NAMES[$i]}" "${LIMITS[$i]}" "${COMMANDS[$i]%%$'\n'*}"
  done
  exit 0
fi

mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
failures=0
for i in "${!NAMES[@]}"; do
  name="${NAMES[$i]}"; limit="${LIMITS[$i]}"
  start=$(date +%s)
  timeout --kill-after=10 "$limit" bash -c "${COMMANDS[$i]}" >"$OUT/$name.stdout" 2>"$OUT/$name.stderr"
  rc=$?
  secs=$(( $(date +%s) - start ))
  [ "$rc" = 0 ] || failures=$((failures + 1))
  "$PY" - "$OUT" "$name" "$rc" "$secs" "$limit" <<'PYEOF'
import json, sys
from pathlib import Path
out, name, rc, secs, limit = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
record = {"step": name, "rc": rc, "seconds": secs, "timeout_s": limit, "timed_out": rc in (124, 137)}
stdout = (out / f"{name}.stdout").read_text(errors="replace")
try:
    record["result"] = json.loads(stdout)
except ValueError:
    record["stdout_tail"] = stdout.splitlines()[-30:]
if rc != 0:
    record["stderr_tail"] = (out / f"{name}.stderr").read_text(errors="replace").splitlines()[-60:]
(out / f"step_{name}.json").write_text(json.dumps(record, indent=2) + "\n")
print(f"{name:<8} rc {rc:>3}  {secs:>4}/{limit} s" + ("  TIMED OUT" if record["timed_out"] else ""))
PYEOF
done
echo "gpu_check: $failures of ${#NAMES[@]} steps failed; results in $OUT"
[ "$failures" = 0 ]
