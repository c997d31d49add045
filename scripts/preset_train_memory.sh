#!/usr/bin/env bash
# The DINOv3-FFA preset at its own geometry on this machine, through the stock commands, with its peak RSS:
# demo volumes (24 x 64 x 64) -> nnUNetv2_plan_and_preprocess -> nnunet-fm plans add --template dinov3_ffa
# (whole slices resampled to 336 x 336, the preset's batch 2 and crop depth; a tiny random-weight encoder)
# -> nnUNetv2_preprocess -> nnUNetv2_train (ITERATIONS steps, then nnU-Net's own validation) under
# /usr/bin/time -v. Prints the configuration (plans show) and "Maximum resident set size".
#   bash scripts/preset_train_memory.sh [WORKDIR] [ITERATIONS]
# Numbers: BENCHMARKS.md, "DINOv3-FFA at its preset size". Not part of CI (about 15 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-/tmp/nnunet_fm_preset}"
ITERATIONS="${2:-2}"
PY=.venv/bin
export nnUNet_raw="$WORK/raw" nnUNet_preprocessed="$WORK/preprocessed" nnUNet_results="$WORK/results"
export nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-1}" nnUNet_compile=f
eval "$("$PY"/nnunet-fm env | grep nnUNet_extTrainer)"
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
if [ ! -d "$nnUNet_raw/Dataset902_FMPreset" ]; then
  "$PY"/nnunet-fm demo-data --out "$nnUNet_raw" --id 902 --name FMPreset --train 6 --test 1 --shape 24 64 64
fi
"$PY"/nnUNetv2_plan_and_preprocess -d 902 -c 3d_fullres -np 1 >/dev/null
"$PY"/nnunet-fm plans add -d 902 --template dinov3_ffa --force --set \
  'encoder_kwargs={"embed_dim":48,"depth":4,"num_heads":2}' 'taps=[1,2,3]' encoder_weights=none \
  num_epochs=1 "num_iterations_per_epoch=$ITERATIONS" num_val_iterations_per_epoch=1
"$PY"/nnUNetv2_preprocess -d 902 -plans_name nnUNetPlans -c 3d_fm_dinov3_ffa -np 1 >/dev/null
"$PY"/nnunet-fm plans show -d 902 -c 3d_fm_dinov3_ffa
/usr/bin/time -v "$PY"/nnUNetv2_train 902 3d_fm_dinov3_ffa 0 -tr nnUNetTrainerDINOv3FFA -device cpu \
  2> "$WORK/time.txt" | tail -n 15
grep -E "Maximum resident set size|Elapsed \(wall clock\)|Exit status" "$WORK/time.txt"
