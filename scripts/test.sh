#!/usr/bin/env bash
# Set up .venv, lint, and run the tests.
#   bash scripts/test.sh          fast tier: unit + contract tests and the essential stock-command path
#                                 (plan -> plans add -> preprocess -> nnUNetv2_train -> predict -> evaluate)
#   bash scripts/test.sh --full   every test, including the slow tier (all families end to end, pseudo-labels,
#                                 ensembles, resume, the experiment grid); CI runs this
# Further arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
tier=(-m "not slow")
if [ "${1:-}" = "--full" ]; then
  tier=()
  shift
fi
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" .venv/bin/python -m pytest -q "${tier[@]}" "$@"
