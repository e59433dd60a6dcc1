#!/usr/bin/env bash
# Rerun every benchmark, then regenerate benchmarks/RESULTS.md from their JSON outputs.
# Needs the project venv (bash .ci/setup.sh) and the peers venv (bash benchmarks/peers/setup.sh).
# Run it on an otherwise idle machine: the speed numbers are wall-clock measurements.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=benchmarks/.peers-venv/bin/python
[ -x "$PEERS" ] || bash benchmarks/peers/setup.sh
.venv/bin/python benchmarks/synthetic.py
$PEERS benchmarks/movielens_quality.py "$@"
$PEERS benchmarks/speed.py
$PEERS benchmarks/speed.py --amp --out benchmarks/out/speed_amp.json
.venv/bin/python benchmarks/amp_quality.py
.venv/bin/python benchmarks/amp_quality.py --compare fused
.venv/bin/python benchmarks/scoring_matmul.py
.venv/bin/python benchmarks/sweep_speed.py
.venv/bin/python benchmarks/criteo_memory.py --clean
.venv/bin/python benchmarks/results.py
