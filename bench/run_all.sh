#!/usr/bin/env bash
# Runs every benchmark; each prints one JSON object, kept in bench/results/<name>.json.
# BENCH_ARGS=--quick for a short pass; BENCH=engine_decode to run one.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results
status=0
for script in bench/bench_${BENCH:-*}.py; do
  name=$(basename "$script" .py)
  echo "== $name" >&2
  if .venv/bin/python "$script" ${BENCH_ARGS:-} > "bench/results/$name.json"; then
    cat "bench/results/$name.json"
  else
    echo "$name failed" >&2; status=1
  fi
done
exit $status
