#!/usr/bin/env bash
# Turn two finished training runs (random and blocked split, same recipe) into a shipped model and its reports.
#   scripts/release_model.sh NAME RANDOM_RUN BLOCKED_RUN
# e.g. scripts/release_model.sh paper runs/paper-random runs/paper-blocked
# Writes models/NAME.onnx + models/NAME.card.json and reports/NAME/{random,blocked,external,audit-*}/.
set -euo pipefail
name=$1 random_run=$2 blocked_run=$3
data=${LEUKOSTAGE_DATA:-../shared/data}
ls_=.venv/bin/leukostage
out=reports/$name
mkdir -p "$out" models
for pair in "random:$random_run" "blocked:$blocked_run"; do
  split=${pair%%:*} run=${pair#*:}
  $ls_ evaluate --model "$run/best.pt" --data "$data" --out "$out/$split"
  cp "$run/curves.png" "$run/log.csv" "$run/run.json" "$out/$split/"
  $ls_ audit --model "$run/best.pt" --data "$data" --out "$out/audit-$split"
done
$ls_ export --checkpoint "$random_run/best.pt" --out "models/$name.onnx" --name "$name" --data "$data" \
  --metrics "$out/blocked/metrics.json"
$ls_ evaluate --model "models/$name.onnx" --external "$data/pbc_sample" "$data/bccd_smears" --out "$out/external"
