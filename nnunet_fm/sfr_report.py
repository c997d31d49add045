"""Few-shot model vs re-training on confident pseudo-labels, on the demo data (stock commands throughout).

    python -m nnunet_fm.sfr_report --workdir sfr_run [--labelled 3] [--unlabelled 6] [--epochs 6] [--device cpu]

1. K-shot nnUNetTrainerDINOv3FFA on a synthetic vessel dataset (the other training cases are unlabelled);
2. ``nnunet-fm pseudolabel`` on the unlabelled cases -> a new dataset with the ignore label;
3. a 3D segmenter (default nnUNetTrainerFMUNet) re-trained on labelled + pseudo-labelled cases, and the
   same segmenter trained on the K labelled cases only (the fair baseline);
4. all three evaluated on the demo test set. Prints a Markdown table and writes ``sfr_report.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from nnunet_fm.atomic_io import atomic_write_json
from nnunet_fm.demo import FLAGSHIP, add_plans, prepare_dataset
from nnunet_fm.pipeline import Workspace, plan_and_preprocess, train_predict_evaluate
from nnunet_fm.templates import template_for_trainer

SOURCE_ID, PSEUDO_ID = 902, 903


def _train(ws: Workspace, dataset_id: int, trainer: str, settings: list[str], name: str, device: str) -> dict:
    template, plugin_trainer = template_for_trainer(trainer)
    extra = list(FLAGSHIP["set"]) if plugin_trainer == FLAGSHIP["trainer"] else []
    configuration = add_plans(ws, dataset_id, template, [*extra, *settings], name=name)
    return train_predict_evaluate(
        ws, dataset_id, configuration, plugin_trainer, 0, device, predict_args=("--disable_tta",)
    )


def run(
    workdir: Path,
    labelled: int,
    unlabelled: int,
    epochs: int,
    iterations: int,
    device: str,
    retrain_trainer: str,
    keep_fraction: float,
    voxel_threshold: float,
) -> list[dict]:
    ws = Workspace(workdir, log=workdir / "commands.log")
    source = prepare_dataset(ws, SOURCE_ID, num_train=labelled + unlabelled, num_test=4, seed=11)
    schedule = [
        f"num_epochs={epochs}",
        f"num_iterations_per_epoch={iterations}",
        "num_val_iterations_per_epoch=1",
        f"few_shot_k={labelled}",
    ]
    fm = _train(ws, SOURCE_ID, FLAGSHIP["trainer"], schedule, "3d_sfr_fm", device)
    model = ws.results / source.name / f"{FLAGSHIP['trainer']}__nnUNetPlans__3d_sfr_fm"
    few_shot = set(json.loads((model / "fold_0" / "fewshot_cases.json").read_text())["cases"])
    pool = ws.root / "unlabelled"
    shutil.rmtree(pool, ignore_errors=True)
    pool.mkdir()
    for image in (source / "imagesTr").glob("*_0000.nii.gz"):
        if image.name[: -len("_0000.nii.gz")] not in few_shot:
            shutil.copy(image, pool / image.name)
    shutil.rmtree(ws.raw / f"Dataset{PSEUDO_ID}_SFRPseudo", ignore_errors=True)
    ws.run(
        "nnunet-fm",
        "pseudolabel",
        "-m",
        str(model),
        "-f",
        "0",
        "-i",
        str(pool),
        "--out-id",
        str(PSEUDO_ID),
        "--out-name",
        "SFRPseudo",
        "--keep-fraction",
        str(keep_fraction),
        "--voxel-threshold",
        str(voxel_threshold),
        "--disable_tta",
        "--device",
        device,
    )
    pseudo = ws.dataset_folder(PSEUDO_ID)
    for sub in ("imagesTs", "labelsTs"):
        shutil.copytree(source / sub, pseudo / sub, dirs_exist_ok=True)
    plan_and_preprocess(ws, PSEUDO_ID)
    schedule_all = [*schedule[:3], "few_shot_k=null"]
    baseline = _train(ws, SOURCE_ID, retrain_trainer, schedule, "3d_sfr_baseline", device)
    retrained = _train(ws, PSEUDO_ID, retrain_trainer, schedule_all, "3d_sfr_retrained", device)
    kept = sum(c["kept"] for c in json.loads((pseudo / "pseudolabel_manifest.json").read_text())["pseudo_cases"])
    return [
        {"model": f"{FLAGSHIP['trainer']} (K={labelled})", **fm},
        {"model": f"{retrain_trainer} (K={labelled}, labelled only)", **baseline},
        {"model": f"{retrain_trainer} (K={labelled} + {kept} pseudo-labelled)", **retrained},
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="sfr_run")
    parser.add_argument("--labelled", type=int, default=3)
    parser.add_argument("--unlabelled", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--retrain-trainer", default="nnUNetTrainerFMUNet")
    parser.add_argument("--keep-fraction", type=float, default=0.75)
    parser.add_argument("--voxel-threshold", type=float, default=0.7)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    rows = run(
        workdir,
        args.labelled,
        args.unlabelled,
        args.epochs,
        args.iterations,
        args.device,
        args.retrain_trainer,
        args.keep_fraction,
        args.voxel_threshold,
    )
    atomic_write_json(workdir / "sfr_report.json", {"arguments": vars(args), "rows": rows})
    print("| model | mean Dice | class 1 | class 2 |\n|---|---|---|---|")
    for row in rows:
        dice = row["per_class_dice"]
        print(f"| {row['model']} | {row['mean_dice']:.4f} | {dice.get('1', 0):.4f} | {dice.get('2', 0):.4f} |")


if __name__ == "__main__":
    main()
