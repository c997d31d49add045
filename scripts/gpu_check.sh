#!/usr/bin/env bash
# GPU readiness in one command (about 8 minutes on one GPU): every registered family at its preset geometry with a
# random-weight encoder -> a few nnUNetv2_train iterations + one nnUNetv2_predict (nnU-Net's own entry points),
# CUDA max_memory_allocated against the `plans add` estimate (fails above 1.2x), s/step against stock nnU-Net at
# the same patch. Writes WORKDIR/gpu_check.md.
#   bash scripts/gpu_check.sh [--dry-run] [--workdir DIR] [--families NAME ...]
# --dry-run: CPU, the families' tiny test settings (CI; a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m nnunet_fm.tools.gpu_check "$@"
