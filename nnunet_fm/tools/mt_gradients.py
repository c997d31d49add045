"""How much a trained Mean Teacher model's consistency term pulls, against its supervised loss.

    python -m nnunet_fm.tools.mt_gradients -d 925 -c 3d_sfr_k1_s1 [-f all] [--batches 3] [--weight 0.1]

Loads the fold's final checkpoint (student and teacher), draws training batches through the trainer's own loader
and prints, per batch, the gradient norms of the supervised loss and of ``weight x consistency`` with respect to
the student's trainable parameters (``weight`` defaults to the plans' ``consistency_weight``, the end of the ramp).
BENCHMARKS.md, semi-supervised section, quotes it. Needs nnU-Net's environment variables.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from nnunet_fm.hooks.mean_teacher import consistency_loss, teacher_view


def gradient_norms(trainer, batch: dict, weight: float) -> tuple[float, float]:
    """Norms of the supervised and of the weighted consistency gradient of one batch (the step's own terms)."""
    params = [p for p in trainer._fm_trainable().values()]
    trainer._fm_batch_keys = batch.get("keys")
    try:
        student = trainer.network(batch["data"])
        supervised = trainer.fm_supervised_loss(student, batch["target"])
        with torch.no_grad(), trainer.fm_teacher_weights():
            teacher = trainer.network(teacher_view(batch["data"], float(trainer.fm_option("consistency_noise"))))
        consistency = weight * consistency_loss(student, teacher)
        norms = []
        for loss, keep in ((supervised, True), (consistency, False)):
            grads = torch.autograd.grad(loss, params, retain_graph=keep, allow_unused=True)
            norms.append(float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))))
    finally:
        trainer._fm_batch_keys = None
    return norms[0], norms[1]


def load_trainer(dataset: str, configuration: str, fold: str, trainer_name: str):
    """A plugin trainer for a preprocessed dataset, as ``nnUNetv2_train`` builds it (CPU)."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_fm.ext_trainers import nnunet_fm_trainers

    folder = Path(nnUNet_preprocessed) / maybe_convert_to_dataset_name(dataset)
    plans = {**json.loads((folder / "nnUNetPlans.json").read_text()), "continue_training": False}
    dataset_json = json.loads((folder / "dataset.json").read_text())
    trainer_class = getattr(nnunet_fm_trainers, trainer_name)
    return trainer_class(plans, configuration, fold if fold == "all" else int(fold), dataset_json, torch.device("cpu"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    parser.add_argument("-c", "--configuration", required=True)
    parser.add_argument("-f", "--fold", default="all")
    parser.add_argument("-tr", "--trainer", default="nnUNetTrainerFMUNet")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--weight", type=float, default=None, help="consistency weight (default: the plans')")
    args = parser.parse_args(argv)
    os.environ["nnUNet_n_proc_DA"] = "0"
    trainer = load_trainer(args.dataset, args.configuration, args.fold, args.trainer)
    trainer.on_train_start()
    try:
        trainer.load_checkpoint(str(Path(trainer.output_folder) / "checkpoint_final.pth"))
        weight = float(trainer.fm_option("consistency_weight")) if args.weight is None else args.weight
        torch.manual_seed(0)
        for i in range(args.batches):
            batch = next(trainer.dataloader_train)
            supervised, consistency = gradient_norms(trainer, batch, weight)
            keys = [str(k) for k in batch["keys"]]
            print(
                json.dumps(
                    {
                        "batch": i,
                        "keys": keys,
                        "supervised": supervised,
                        "consistency": consistency,
                        "ratio": consistency / supervised if supervised else None,
                    }
                )
            )
    finally:
        trainer.dataloader_train = trainer.dataloader_val = None


if __name__ == "__main__":
    main()
