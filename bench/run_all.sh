#!/usr/bin/env bash
# Runs every benchmark in bench/; each prints one JSON object on its last line.
# Results are collected in bench/results.jsonl (one line per benchmark run).
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results.jsonl
for script in bench/storage.py bench/engine.py bench/sim_scale.py bench/gateways.py bench/api_latency.py bench/e2e.py; do
  echo "== $script" >&2
  .venv/bin/python "$script" | tee /dev/stderr | tail -n 1 >> "$out"
done
echo "results appended to $out" >&2
