#!/usr/bin/env bash
# Demo-data Dice of a recipe against its previous behaviour (BENCHMARKS.md), 3 few-shot draws each, CPU.
#   bash scripts/recipe_dice.sh ffa-new|ffa-old|lms-new [WORKDIR [extra key=value settings...]]
#   e.g. bash scripts/recipe_dice.sh lms-new recipe_dice/lms-residual stage_residual=true
#   LightMedSeg before the paper-figure network: run `lms-new` from a checkout of 8f2eec9
#   (git worktree add ../lms_before 8f2eec9 && cp scripts/recipe_dice.sh ../lms_before/scripts/ && bash ../lms_before/scripts/setup.sh
#   && bash ../lms_before/scripts/recipe_dice.sh lms-new lms_before_dice)
# Each variant needs its own nnU-Net workspace (the configuration names are the same). Single-threaded so that
# two variants can run side by side on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
variant=${1:?ffa-new, ffa-old or lms-new}
root=$(realpath -m "${2:-recipe_dice/$variant}")
shift $(( $# >= 2 ? 2 : $# ))
extra=("$@")
export OMP_NUM_THREADS=1 nnUNet_def_n_proc=1
export nnUNet_raw=$root/nnUNet_raw nnUNet_preprocessed=$root/nnUNet_preprocessed nnUNet_results=$root/nnUNet_results
.venv/bin/python -c "from pathlib import Path; from nnunet_fm.demo import prepare_dataset; \
from nnunet_fm.nnunet_commands import Workspace; prepare_dataset(Workspace(Path('$root')))"
ffa=('encoder_kwargs={"embed_dim":64,"depth":4,"num_heads":2}' 'taps=[1,2,3]' encoder_weights=none agg_heads=2
     inplane_size=64 num_val_iterations_per_epoch=1)
old=(augmentation=nnunet 'mirror_axes=[0,1,2]' intensity=parent dice_present_classes_only=false)
common=(-d 901 --shots 3 --seeds 0,1,2 --folds 0 --device cpu --out "$root/report")
case $variant in
  ffa-new) .venv/bin/nnunet-fm experiment "${common[@]}" --trainers nnUNetTrainerDINOv3FFA --epochs 10 --iterations 10 \
             --set "${ffa[@]}" "${extra[@]}" ;;
  ffa-old) .venv/bin/nnunet-fm experiment "${common[@]}" --trainers nnUNetTrainerDINOv3FFA --epochs 10 --iterations 10 \
             --set "${ffa[@]}" "${old[@]}" "${extra[@]}" ;;
  lms-new) .venv/bin/nnunet-fm experiment "${common[@]}" --trainers nnUNetTrainerLightMedSeg --epochs 20 --iterations 20 \
             --set batch_size=2 num_val_iterations_per_epoch=1 "${extra[@]}" ;;
  *) echo "unknown variant '$variant': ffa-new, ffa-old or lms-new" >&2; exit 2 ;;
esac
cat "$root/report/results.md"
