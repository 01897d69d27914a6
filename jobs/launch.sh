#!/usr/bin/env bash
# Launch a run over a deepspeed hostfile: validates the config, then runs
#   deepspeed --hostfile HOSTFILE --num_gpus N ... --no_local_rank --module maws_scale.cli pipeline CONFIG ...
# Usage: jobs/launch.sh CONFIG HOSTFILE GPUS_PER_NODE [--command train] [--dry-run] [KEY=VALUE ...]
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,4p' "$0" >&2
  exit 2
fi
config=$1 hostfile=$2 gpus=$3
shift 3
exec "${MAWS_SCALE:-maws-scale}" launch "$config" --hostfile "$hostfile" --gpus-per-node "$gpus" "$@"
