#!/usr/bin/env bash
# Reports of one finished training run: test-split metrics, its log and curves, and the shortcut audit.
#   scripts/report_run.sh RUN_DIR REPORT_DIR      e.g. scripts/report_run.sh runs/paper-blocked reports/paper/blocked
set -euo pipefail
run=$1 out=$2
data=${LEUKOSTAGE_DATA:-../shared/data}
.venv/bin/leukostage evaluate --model "$run/best.pt" --data "$data" --out "$out"
cp "$run/curves.png" "$run/log.csv" "$run/run.json" "$out/"
.venv/bin/leukostage audit --model "$run/best.pt" --data "$data" --out "$out/audit"
