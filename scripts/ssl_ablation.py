"""One ablation run on a dataset of an ``ssl_report`` work folder: the student configuration with extra settings.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/ssl_ablation.py --workdir ssl_run --dataset 925 --name 3d_abl \
        ssl=mean_teacher unlabelled_fraction=0

Trains ``nnUNetTrainerFMUNet`` (fold all) with the report's schedule (10 x 10 steps, ``few_shot_k=null``) plus the
given ``key=value`` settings through the stock commands, predicts the test set and writes the Dice scores to
``<workdir>/ablations/<name>.json`` (BENCHMARKS.md, semi-supervised section, uses it for the batch-composition runs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nnunet_fm.atomic_io import atomic_write_json
from nnunet_fm.pipeline import Workspace
from nnunet_fm.tools.sfr_report import train_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="an ssl_report work folder")
    parser.add_argument("--dataset", type=int, required=True, help="dataset id inside it (e.g. the SFR dataset)")
    parser.add_argument("--name", required=True, help="configuration name to add, e.g. 3d_abl_nounl")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("settings", nargs="*", help="extra plans settings, key=value")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    (workdir / "ablations").mkdir(parents=True, exist_ok=True)
    ws = Workspace(workdir, log=workdir / "ablations" / f"{args.name}.log")
    schedule = [f"num_epochs={args.epochs}", f"num_iterations_per_epoch={args.iterations}"]
    settings = [*schedule, "num_val_iterations_per_epoch=1", "few_shot_k=null", *args.settings]
    scores = train_config(ws, args.dataset, "nnUNetTrainerFMUNet", settings, args.name, args.device, fold="all")
    atomic_write_json(
        workdir / "ablations" / f"{args.name}.json", {"dataset": args.dataset, "settings": settings, **scores}
    )
    print(json.dumps(scores, indent=2))


if __name__ == "__main__":
    main()
