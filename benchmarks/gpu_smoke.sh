#!/usr/bin/env bash
# One command, bounded in time, the first time a CUDA machine is at hand (docs/parallel.md):
#   benchmarks/gpu_smoke.sh                 # 20 minutes at most (GPU_SMOKE_LIMIT_S to change), budget 6
#   GPU_SMOKE_LIMIT_S=600 benchmarks/gpu_smoke.sh --budget 4 --work /scratch/smoke
# Exit 0: passed (or no CUDA: skipped, said so); 1: the search failed; 124: it ran past the limit.
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout --signal=TERM --kill-after=60 "${GPU_SMOKE_LIMIT_S:-1200}" "${PYTHON:-python}" benchmarks/gpu_smoke.py "$@"
