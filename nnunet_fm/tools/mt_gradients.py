"""How much a trained Mean Teacher model's consistency term pulls, against its supervised loss.

    python -m nnunet_fm.tools.mt_gradients -d 925 -c 3d_sfr_k1_s1 [-f all] [--batches 3] [--weight 0.1]
    python -m nnunet_fm.tools.mt_gradients -d 923 -c 3d_self-training_k1_s1 --class-shares 60

Loads the fold's final checkpoint (student and teacher), draws training batches through the trainer's own loader
and prints, per batch, the gradient norms of the supervised loss and of ``weight x consistency`` with respect to
the student's trainable parameters (``weight`` defaults to the plans' ``consistency_weight``, the end of the ramp).
``--class-shares N`` instead prints the mean share of each label among the voxels of the labelled patches of N
training batches (any plugin trainer, no checkpoint needed): what the supervised loss sees, to compare loaders.
BENCHMARKS.md, semi-supervised section, quotes both. Needs nnU-Net's environment variables.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from nnunet_fm.plans import plans_path, read_plans


def gradient_norms(trainer, batch: dict, weight: float) -> tuple[float, float]:
    """Norms of the supervised and of the weighted consistency gradient of one batch (the step's own terms)."""
    params = list(trainer._fm_trainable().values())
    trainer._fm_batch_keys = batch.get("keys")
    try:
        supervised, consistency = trainer.fm_step_losses(batch["data"], batch["target"])
        supervised = float(trainer.fm_option("supervised_weight")) * supervised
        norms = []
        for loss, keep in ((supervised, True), (weight * consistency, False)):
            grads = torch.autograd.grad(loss, params, retain_graph=keep, allow_unused=True)
            norms.append(float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))))
    finally:
        trainer._fm_batch_keys = None
    return norms[0], norms[1]


def class_shares(batches, num_batches: int, labels: list[int], unlabelled: set[str]) -> dict[int, float]:
    """Mean share of each label among the voxels of the labelled patches (cases not in ``unlabelled``)."""
    counts, total = dict.fromkeys(labels, 0), 0
    for _ in range(num_batches):
        batch = next(batches)
        target = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]
        for j, key in enumerate(batch["keys"]):
            if str(key) in unlabelled:
                continue
            total += target[j].numel()
            for label in labels:
                counts[label] += int((target[j] == label).sum())
    return {int(label): count / max(total, 1) for label, count in counts.items()}


def load_trainer(dataset: str, configuration: str, fold: str, trainer_name: str):
    """A plugin trainer for a preprocessed dataset, as ``nnUNetv2_train`` builds it (CPU)."""
    from nnunet_fm.ext_trainers import nnunet_fm_trainers

    path = plans_path(dataset)
    plans = {**read_plans(path), "continue_training": False}
    dataset_json = json.loads((path.parent / "dataset.json").read_text())
    trainer_class = getattr(nnunet_fm_trainers, trainer_name)
    return trainer_class(plans, configuration, fold if fold == "all" else int(fold), dataset_json, torch.device("cpu"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    parser.add_argument("-c", "--configuration", required=True)
    parser.add_argument("-f", "--fold", default="all")
    parser.add_argument("-tr", "--trainer", default="nnUNetTrainerUNetFewShot")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--weight", type=float, default=None, help="consistency weight (default: the plans')")
    parser.add_argument("--class-shares", type=int, metavar="N", help="label shares of N batches' labelled patches")
    args = parser.parse_args(argv)
    os.environ["nnUNet_n_proc_DA"] = "0"
    trainer = load_trainer(args.dataset, args.configuration, args.fold, args.trainer)
    trainer.on_train_start()
    try:
        np.random.seed(0)  # the loader's draws
        torch.manual_seed(0)  # the teacher's input noise
        if args.class_shares:
            ignore = trainer.label_manager.ignore_label
            labels = sorted({*trainer.label_manager.all_labels, *([] if ignore is None else [ignore])})
            unlabelled = {k for k, v in getattr(trainer, "_fm_unlabelled_cache", {}).items() if v}
            shares = class_shares(trainer.dataloader_train, args.class_shares, labels, unlabelled)
            print(json.dumps({"batches": args.class_shares, "shares": shares}))
            return
        trainer.load_checkpoint(str(Path(trainer.output_folder) / "checkpoint_final.pth"))
        weight = float(trainer.fm_option("consistency_weight")) if args.weight is None else args.weight
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
