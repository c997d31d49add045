"""Few-shot model vs re-training on confident pseudo-labels, on the demo data (stock commands throughout).

    python -m nnunet_fm.tools.sfr_report --workdir sfr_run [--labelled 3] [--unlabelled 6] [--epochs 20] [--device cpu]

1. a K-shot teacher (default nnUNetTrainerDINOv3FFA, fold 0) on a synthetic vessel dataset (the other training
   cases are unlabelled);
2. ``nnunet-fm pseudolabel`` on the unlabelled cases -> a new dataset with the ignore label; the kept
   pseudo-labels are scored against the true labels the demo hid from them;
3. the new dataset planned with the source dataset's plans (``nnunet_commands.plan_like_source``) and, for
   comparison, planned from scratch by stock ``nnUNetv2_plan_and_preprocess``;
4. a 3D segmenter (default nnUNetTrainerUNetFewShot) trained on the K labelled cases only (fold 0, the fair
   baseline) and re-trained on labelled + pseudo-labelled cases (fold ``all``: every labelled case is used);
5. everything evaluated on the demo test set: Dice, clDice and Betti-0 error (``nnunet_fm.evaluate_command``).
   Prints a Markdown table, writes ``sfr_report.json``/``.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_fm.atomic_io import atomic_write_json, atomic_write_text
from nnunet_fm.demo import FLAGSHIP, add_plans, prepare_dataset
from nnunet_fm.file_names import MANIFEST_NAME
from nnunet_fm.nnunet_commands import Workspace, plan_and_preprocess, plan_like_source, train_predict_evaluate
from nnunet_fm.templates import template_for_trainer
from nnunet_fm.tools.report import markdown_table, vessel_cells, vessel_header

SOURCE_ID, PSEUDO_ID, STOCK_PLANNED_ID = 902, 903, 904


def train_config(
    ws: Workspace, dataset_id: int, trainer: str, settings: list[str], name: str, device: str, fold: int | str = 0
) -> dict:
    template, plugin_trainer = template_for_trainer(trainer)
    given = {setting.partition("=")[0] for setting in settings}
    flagship = list(FLAGSHIP["set"]) if plugin_trainer == FLAGSHIP["trainer"] else []
    extra = [setting for setting in flagship if setting.partition("=")[0] not in given]  # settings win
    configuration = add_plans(ws, dataset_id, template, [*extra, *settings], name=name)
    return train_predict_evaluate(
        ws, dataset_id, configuration, plugin_trainer, fold, device, predict_args=("--disable_tta",)
    )


def _read(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """The image array and its spacing per array axis."""
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), tuple(image.GetSpacing())[::-1]


def _dice(truth: np.ndarray, guess: np.ndarray, ignored: np.ndarray | None) -> float:
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn

    tp, fp, fn, _ = compute_tp_fp_fn_tn(truth, guess, ignored)
    return 2.0 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def pseudo_label_dice(pseudo_dataset: Path, source_dataset: Path) -> dict:
    """Dice and vessel metrics of the kept pseudo-labels against the source's true labels, over voxels not ignored.

    The same record keys as the test-set scores (``evaluate_command.summary_scores``): per-class and mean Dice
    (1 when a class is absent from both), per-class and binary clDice, binary Dice, Betti-0 error and HD95 (the
    vessel metrics on both masks with the ignored voxels removed; means over cases ignore NaN).
    """
    from nnunet_fm.mask_metrics import topology_metrics

    manifest = json.loads((pseudo_dataset / MANIFEST_NAME).read_text())
    meta = json.loads((pseudo_dataset / "dataset.json").read_text())
    ending, ignore = meta["file_ending"], meta["labels"].get("ignore")
    classes = sorted(v for k, v in meta["labels"].items() if k not in ("background", "ignore"))
    dice, cl_dice, binary = [], [], []
    for case in (c for c in manifest["pseudo_cases"] if c["kept"]):
        pseudo, spacing = _read(pseudo_dataset / "labelsTr" / f"{case['new_id']}{ending}")
        truth, _ = _read(source_dataset / "labelsTr" / f"{case['case']}{ending}")
        ignored = pseudo == ignore if ignore is not None else np.zeros(pseudo.shape, bool)
        dice.append([_dice(truth == c, pseudo == c, ignored) for c in classes])
        cl_dice.append([topology_metrics((truth == c) & ~ignored, pseudo == c, spacing)["clDice"] for c in classes])
        merged_truth, merged_guess = (truth > 0) & ~ignored, (pseudo > 0) & ~ignored
        binary.append({"Dice": _dice(merged_truth, merged_guess, None)})
        binary[-1].update(topology_metrics(merged_truth, merged_guess, spacing))
    mean = np.mean(dice, axis=0)
    with warnings.catch_warnings():  # a class absent from every case: NaN clDice, without numpy's warning
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_cl_dice = np.nanmean(np.asarray(cl_dice, dtype=float), axis=0)
        merged = {m: float(np.nanmean([b[m] for b in binary])) for m in binary[0]}
    return {
        "per_class_dice": {str(c): round(float(d), 4) for c, d in zip(classes, mean)},
        "mean_dice": round(float(mean.mean()), 4),
        "per_class_cldice": {str(c): round(float(d), 4) for c, d in zip(classes, mean_cl_dice)},
        **{f"binary_{m.lower()}": round(v, 4) for m, v in merged.items()},
    }


def copy_test_set(source: Path, dataset: Path) -> None:
    """Give a derived dataset the source's test images and labels (so it is evaluated on the same cases)."""
    for sub in ("imagesTs", "labelsTs"):
        shutil.copytree(source / sub, dataset / sub, dirs_exist_ok=True)


def pseudolabel_into(
    ws: Workspace,
    model: Path,
    pool: Path,
    keep_fraction: float,
    voxel_threshold: float,
    device: str,
    out_id: int = PSEUDO_ID,
    out_name: str = "SFRPseudo",
    extra: tuple[str, ...] = (),
) -> Path:
    """``nnunet-fm pseudolabel`` of ``pool`` with ``model`` (fold 0) into a fresh dataset ``out_id``; its folder."""
    for root in (ws.raw, ws.preprocessed):  # a re-run starts from a clean pseudo-labelled dataset
        for old in root.glob(f"Dataset{out_id:03d}_*"):
            shutil.rmtree(old)
    ws.run(
        "nnunet-fm",
        *("pseudolabel", "-m", str(model), "-f", "0", "-i", str(pool), "--out-id", str(out_id)),
        *("--out-name", out_name, "--keep-fraction", str(keep_fraction)),
        *("--voxel-threshold", str(voxel_threshold), "--disable_tta", "--device", device, *extra),
    )
    return ws.dataset_folder(out_id)


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
    compare_stock_planning: bool = True,
    teacher: str = FLAGSHIP["trainer"],
) -> list[dict]:
    ws = Workspace(workdir, log=workdir / "commands.log")
    source = prepare_dataset(ws, SOURCE_ID, num_train=labelled + unlabelled, num_test=4, seed=11)
    schedule = [
        f"num_epochs={epochs}",
        f"num_iterations_per_epoch={iterations}",
        "num_val_iterations_per_epoch=1",
        f"few_shot_k={labelled}",
    ]
    teacher = template_for_trainer(teacher)[1]
    fm = train_config(ws, SOURCE_ID, teacher, schedule, "3d_sfr_teacher", device)
    model = ws.model_folder(SOURCE_ID, teacher, "3d_sfr_teacher")
    few_shot = set(json.loads((model / "fold_0" / "fewshot_cases.json").read_text())["cases"])
    pool = ws.root / "unlabelled"
    shutil.rmtree(pool, ignore_errors=True)
    pool.mkdir()
    for image in (source / "imagesTr").glob("*_0000.nii.gz"):
        if image.name[: -len("_0000.nii.gz")] not in few_shot:
            shutil.copy(image, pool / image.name)
    pseudo = pseudolabel_into(ws, model, pool, keep_fraction, voxel_threshold, device)
    copy_test_set(source, pseudo)
    kept = sum(c["kept"] for c in json.loads((pseudo / MANIFEST_NAME).read_text())["pseudo_cases"])
    plan_like_source(ws, SOURCE_ID, PSEUDO_ID)
    all_cases = [*schedule[:3], "few_shot_k=null"]
    mixed = f"{labelled} labelled + {kept} pseudo-labelled"
    rows = [
        {"model": f"{teacher} (teacher)", "trained on": f"{labelled} labelled (fold 0)", **fm},
        {"model": "pseudo-labels vs hidden truth", "trained on": f"{kept} kept", **pseudo_label_dice(pseudo, source)},
        {
            "model": retrain_trainer,
            "trained on": f"{labelled} labelled (fold 0)",
            **(
                fm
                if template_for_trainer(retrain_trainer)[1] == teacher  # the teacher run is this baseline
                else train_config(ws, SOURCE_ID, retrain_trainer, schedule, "3d_sfr_baseline", device)
            ),
        },
        {
            "model": retrain_trainer,
            "trained on": f"{mixed}, source plans (fold all)",
            **train_config(ws, PSEUDO_ID, retrain_trainer, all_cases, "3d_sfr_retrained", device, fold="all"),
        },
    ]
    if compare_stock_planning:
        stock = ws.raw / f"Dataset{STOCK_PLANNED_ID}_SFRPseudoStockPlans"
        shutil.rmtree(stock, ignore_errors=True)
        shutil.rmtree(ws.preprocessed / stock.name, ignore_errors=True)
        shutil.copytree(pseudo, stock)
        plan_and_preprocess(ws, STOCK_PLANNED_ID)
        result = train_config(ws, STOCK_PLANNED_ID, retrain_trainer, all_cases, "3d_sfr_retrained", device, fold="all")
        rows.append({"model": retrain_trainer, "trained on": f"{mixed}, planned from scratch (fold all)", **result})
    return rows


def to_markdown(rows: list[dict]) -> str:
    """One row per model: mean and per-class Dice, then binary and per-class clDice and the binary Betti-0 error."""
    cells = [
        [r["model"], r["trained on"], f"{r['mean_dice']:.4f}"]
        + [f"{r['per_class_dice'].get(c, 0):.4f}" for c in ("1", "2")]
        + vessel_cells(r, ("1", "2"))
        for r in rows
    ]
    header = ["model", "trained on", "mean Dice", "artery", "vein", *vessel_header(("artery", "vein"))]
    return markdown_table(header, cells)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="sfr_run")
    parser.add_argument("--labelled", type=int, default=3)
    parser.add_argument("--unlabelled", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--teacher", default=FLAGSHIP["trainer"], help="few-shot model that pseudo-labels")
    parser.add_argument("--retrain-trainer", default="nnUNetTrainerUNetFewShot")
    parser.add_argument("--keep-fraction", type=float, default=0.75)
    parser.add_argument("--voxel-threshold", type=float, default=0.7)
    parser.add_argument(
        "--no-stock-planning", action="store_true", help="skip the re-training on a from-scratch planned copy"
    )
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
        not args.no_stock_planning,
        args.teacher,
    )
    atomic_write_json(workdir / "sfr_report.json", {"arguments": vars(args), "rows": rows})
    table = to_markdown(rows)
    atomic_write_text(workdir / "sfr_report.md", table + "\n")
    print(table)


if __name__ == "__main__":
    main()
