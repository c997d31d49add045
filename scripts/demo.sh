#!/usr/bin/env bash
# The main job, end to end on synthetic few-shot vessel data (no GPU needed):
# demo data -> nnUNetv2_plan_and_preprocess -> nnunet-fm plans add -> nnUNetv2_train -> nnUNetv2_predict
# -> nnunet-fm evaluate -> per-class Dice, clDice, Betti-0 error + overlay PNG (MIPs).
# Extra arguments go to `nnunet-fm demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/nnunet-fm demo --workdir demo_run "$@"
