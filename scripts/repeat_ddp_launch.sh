#!/usr/bin/env bash
# Launches the 2-process DDP trainer test script with torchrun N times (default 20) and counts the
# launches that did not exit 0 (issue #12: a rank aborted at interpreter shutdown). Usage:
#   bash scripts/repeat_ddp_launch.sh [N] [ACCUMULATION_STEPS]
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs="${1:-20}"
accumulation="${2:-2}"
work="$(mktemp -d)"
failed=0
for i in $(seq 1 "$runs"); do
  if L0_TEST_DDP_REPORT="$work/report$i.json" OMP_NUM_THREADS=1 \
    "$root/.venv/bin/torchrun" --standalone --nproc_per_node=2 \
    "$root/tests/l0_sparsity/test_distributed_trainer.py" "$work/run$i" "$accumulation" \
    >"$work/log$i" 2>&1; then
    echo "launch $i: exit 0"
  else
    failed=$((failed + 1))
    echo "launch $i: FAILED (log: $work/log$i)"
  fi
done
echo "$((runs - failed)) of $runs launches exited 0"
[ "$failed" -eq 0 ]
