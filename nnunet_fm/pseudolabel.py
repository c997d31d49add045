"""Confident pseudo-labels from a trained (few-shot) model, written as a new nnU-Net raw dataset (SFR-style).

Confidence of a case = mean max-class probability over the voxels the model labels as foreground (a case
with no predicted foreground scores 0). With a voxel threshold > 0, kept cases get voxels whose max
probability is below it marked with nnU-Net's ignore label (the highest label value, named "ignore"; not
declared without a threshold, so nnU-Net samples exactly as for a fully labelled set). The new dataset
holds the labelled cases the model was trained on plus the kept pseudo-labelled cases, and a manifest;
for a model trained on an earlier round, the labelled cases come from the original dataset the manifest
names. Source datasets are only read; the new dataset is built in a temporary folder and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_fm.atomic_io import atomic_write_json
from nnunet_fm.dataset_check import case_identifiers
from nnunet_fm.environment import EXT_TRAINER_VARIABLE, plugin_env
from nnunet_fm.errors import UserInputError
from nnunet_fm.file_names import FEWSHOT_RECORD_NAME, MANIFEST_NAME
from nnunet_fm.unlabelled import all_ignore_label, check_unlabelled_folder, ignore_label


@dataclass
class CaseScore:
    """Confidence of one unlabelled case and what became of it."""

    case: str
    confidence: float
    foreground_voxels: int
    kept: bool = False
    ignored_fraction: float = 0.0


def case_confidence(probabilities: np.ndarray) -> tuple[float, int]:
    """Mean max-probability over predicted-foreground voxels (0 when nothing is predicted) and their count."""
    segmentation = probabilities.argmax(0)
    foreground = segmentation > 0
    count = int(foreground.sum())
    return (float(probabilities.max(0)[foreground].mean()) if count else 0.0), count


def check_selection(case_threshold: float | None, keep_fraction: float | None) -> None:
    """Refuse impossible selections before any prediction runs."""
    if keep_fraction is not None and not 0 < keep_fraction <= 1:
        raise UserInputError(f"--keep-fraction must be in (0, 1], got {keep_fraction}; 1 keeps every case.")
    if case_threshold is not None and not 0 <= case_threshold <= 1:
        raise UserInputError(f"--case-threshold is a mean max-probability in [0, 1], got {case_threshold}.")


def select_cases(scores: list[CaseScore], case_threshold: float | None, keep_fraction: float | None) -> list[str]:
    """Cases passing ``case_threshold`` or the top ``keep_fraction`` by confidence (cases without foreground never)."""
    check_selection(case_threshold, keep_fraction)
    candidates = [s for s in scores if s.foreground_voxels > 0]
    if keep_fraction is not None:
        ranked = sorted(candidates, key=lambda s: -s.confidence)
        return [s.case for s in ranked[: math.ceil(keep_fraction * len(scores))]]
    threshold = 0.0 if case_threshold is None else case_threshold
    return [s.case for s in candidates if s.confidence >= threshold]


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so the hidden temporary dataset folder is removed as on Ctrl-C."""

    owner = os.getpid()

    def _raise(signum, frame):
        if os.getpid() != owner:  # a forked worker (nnU-Net's export pool, terminated when done): exit quietly
            os._exit(128 + signum)
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def confident_labels(probabilities: np.ndarray, voxel_threshold: float, ignore_value: int) -> tuple[np.ndarray, float]:
    """Arg-max labels with voxels whose max probability is below ``voxel_threshold`` set to the ignore label."""
    labels = probabilities.argmax(0).astype(np.uint8)
    unsure = probabilities.max(0) < voxel_threshold
    labels[unsure] = ignore_value
    return labels, float(unsure.mean())


def _copy_images(src: Path, case: str, dst: Path, new_id: str, channels: list[int], ending: str) -> None:
    for c in channels:
        shutil.copy2(src / f"{case}_{c:04d}{ending}", dst / f"{new_id}_{c:04d}{ending}")


def _predict(model_folder: Path, fold: str, images: Path, out: Path, device: str, mirroring: bool) -> None:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    os.environ[EXT_TRAINER_VARIABLE] = plugin_env()[EXT_TRAINER_VARIABLE]
    predictor = nnUNetPredictor(use_mirroring=mirroring, device=torch.device(device), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), (int(fold) if fold != "all" else fold,))
    predictor.predict_from_files(
        str(images),
        str(out),
        save_probabilities=True,
        overwrite=True,
        num_processes_preprocessing=1,
        num_processes_segmentation_export=1,
    )


def _raw_dataset_of(model_folder: Path) -> Path:
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise UserInputError("nnUNet_raw is not set; the labelled cases are copied from the source raw dataset.")
    folder = Path(raw) / model_folder.parent.name
    if not folder.is_dir():
        raise UserInputError(f"Source raw dataset {folder} (from the model folder's path) does not exist.")
    return folder


@dataclass
class LabelledSource:
    """Where the truly labelled cases are copied from, and which pseudo-labelling round produced the model."""

    folder: Path
    cases: list[str]
    dataset_json: dict
    round: int = 0


def labelled_source(model_folder: Path, fold: str, ending: str) -> LabelledSource:
    """The model's raw dataset and its labelled cases; for a model trained on pseudo-labels (a later round),
    the original dataset and labelled cases its manifest names, so rounds never re-label pseudo-labels as truth.
    """
    raw = _raw_dataset_of(model_folder)
    manifest_file = raw / MANIFEST_NAME
    if not manifest_file.is_file():
        meta = json.loads((raw / "dataset.json").read_text())
        return LabelledSource(raw, labelled_cases(model_folder, fold, raw, ending), meta)
    manifest = json.loads(manifest_file.read_text())
    original = Path(manifest["source_dataset"])
    if not (original / "dataset.json").is_file():
        raise UserInputError(
            f"{manifest_file} names the original labelled dataset {original}, which no longer exists; "
            "restore it (its labelled cases are copied into every round)."
        )
    meta = json.loads((original / "dataset.json").read_text())
    return LabelledSource(original, list(manifest["labelled_cases"]), meta, int(manifest.get("round", 1)))


def labelled_cases(model_folder: Path, fold: str, source: Path, ending: str) -> list[str]:
    """The labelled cases the model saw: ``fewshot_cases.json`` of the fold, else every training case."""
    record = model_folder / f"fold_{fold}" / FEWSHOT_RECORD_NAME
    if record.is_file():
        return list(json.loads(record.read_text())["cases"])
    return case_identifiers(source / "imagesTr", ending)


def pseudolabel(
    model_folder: str | Path,
    unlabelled: str | Path,
    out_id: int,
    out_name: str = "PseudoLabelled",
    fold: str = "0",
    case_threshold: float | None = None,
    keep_fraction: float | None = None,
    voxel_threshold: float = 0.0,
    device: str = "cpu",
    mirroring: bool = True,
    add_unlabelled: bool = False,
) -> Path:
    """Predict, score, select and write the new raw dataset; returns its folder.

    With ``add_unlabelled`` the cases that are not kept enter as unlabelled cases (``ul_*``, all-``ignore`` label
    maps) for semi-supervised re-training (``ssl: mean_teacher``).
    """
    model_folder, unlabelled = Path(model_folder), Path(unlabelled)
    if not 0 <= voxel_threshold < 1:
        raise UserInputError(
            f"--voxel-threshold must be in [0, 1) (a max-probability), got {voxel_threshold}; 0 marks no voxel."
        )
    check_selection(case_threshold, keep_fraction)
    if not (model_folder / f"fold_{fold}" / "checkpoint_final.pth").is_file():
        raise UserInputError(f"{model_folder}/fold_{fold}/checkpoint_final.pth not found; train the model first.")
    dataset_json = json.loads((model_folder / "dataset.json").read_text())
    ending = dataset_json["file_ending"]
    cases = check_unlabelled_folder(unlabelled, dataset_json)
    source = labelled_source(model_folder, fold, ending)
    target = Path(os.environ["nnUNet_raw"]) / f"Dataset{out_id:03d}_{out_name}"
    if list(Path(os.environ["nnUNet_raw"]).glob(f"Dataset{out_id:03d}_*")):
        raise UserInputError(f"A dataset with id {out_id} already exists in nnUNet_raw; choose another --out-id.")
    ignore_value = ignore_label(source.dataset_json, needed=voxel_threshold > 0 or add_unlabelled)
    with _sigterm_as_interrupt(), tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        tmp = Path(tmp)
        predictions = tmp / "predictions"
        _predict(model_folder, fold, unlabelled, predictions, device, mirroring)
        scores = [
            CaseScore(case, *case_confidence(np.load(predictions / f"{case}.npz")["probabilities"])) for case in cases
        ]
        kept = set(select_cases(scores, case_threshold, keep_fraction))
        if not kept:
            with_foreground = [s for s in scores if s.foreground_voxels > 0]
            if not with_foreground:
                raise UserInputError(
                    f"The model predicts no foreground in any of the {len(scores)} case(s), so none can be "
                    "pseudo-labelled; train the model longer or check that the images match its training data. "
                    "Nothing was written."
                )
            best = max(s.confidence for s in with_foreground)
            raise UserInputError(
                f"No case passed --case-threshold (best confidence {best:.3f}); lower it or use --keep-fraction. "
                "Nothing was written."
            )
        dataset = tmp / target.name
        for sub in ("imagesTr", "labelsTr"):
            (dataset / sub).mkdir(parents=True)
        channels = sorted(int(c) for c in dataset_json["channel_names"])
        for case in source.cases:
            _copy_images(source.folder / "imagesTr", case, dataset / "imagesTr", case, channels, ending)
            shutil.copy2(source.folder / "labelsTr" / f"{case}{ending}", dataset / "labelsTr")
        for score in (s for s in scores if s.case in kept):
            score.kept = True
            new_id = f"pl_{score.case}"
            _copy_images(unlabelled, score.case, dataset / "imagesTr", new_id, channels, ending)
            probabilities = np.load(predictions / f"{score.case}.npz")["probabilities"]
            labels, score.ignored_fraction = confident_labels(probabilities, voxel_threshold, ignore_value or 0)
            image = sitk.GetImageFromArray(labels)
            image.CopyInformation(sitk.ReadImage(str(predictions / f"{score.case}{ending}")))
            sitk.WriteImage(image, str(dataset / "labelsTr" / f"{new_id}{ending}"), useCompression=True)
        unlabelled_ids = []
        if add_unlabelled:
            for score in (s for s in scores if s.case not in kept):
                new_id = f"ul_{score.case}"
                _copy_images(unlabelled, score.case, dataset / "imagesTr", new_id, channels, ending)
                label = all_ignore_label(unlabelled / f"{score.case}_0000{ending}", ignore_value)
                sitk.WriteImage(label, str(dataset / "labelsTr" / f"{new_id}{ending}"), useCompression=True)
                unlabelled_ids.append(new_id)
        meta = dict(source.dataset_json)
        meta["labels"] = {k: v for k, v in source.dataset_json["labels"].items() if k != "ignore"}
        if ignore_value is not None:
            meta["labels"]["ignore"] = ignore_value
        meta["numTraining"] = len(source.cases) + len(kept) + len(unlabelled_ids)
        meta["description"] = f"nnunet-fm pseudo-labels from {model_folder} (fold {fold})"
        atomic_write_json(dataset / "dataset.json", meta)
        atomic_write_json(
            dataset / MANIFEST_NAME,
            {
                "model_folder": str(model_folder),
                "fold": fold,
                "round": source.round + 1,
                "model_dataset": str(_raw_dataset_of(model_folder)),
                "source_dataset": str(source.folder),
                "unlabelled_folder": str(unlabelled),
                "confidence": "mean max-probability over predicted foreground",
                "case_threshold": case_threshold,
                "keep_fraction": keep_fraction,
                "voxel_threshold": voxel_threshold,
                "ignore_label": ignore_value,
                "labelled_cases": source.cases,
                "pseudo_cases": [asdict(s) | {"new_id": f"pl_{s.case}"} for s in scores],
                "unlabelled_cases": unlabelled_ids,
            },
        )
        dataset.rename(target)
    return target


def next_steps(model_folder: str | Path, dataset_folder: str | Path) -> str:
    """The stock commands that plan the new dataset like the model's own and re-train on all of its cases."""
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id
    from nnunetv2.utilities.file_path_utilities import parse_dataset_trainer_plans_configuration_from_path

    source, _, plans, _ = parse_dataset_trainer_plans_configuration_from_path(str(model_folder))
    source_id = convert_dataset_name_to_id(source)
    target_id = convert_dataset_name_to_id(Path(dataset_folder).name)
    return "\n".join(
        [
            "Next (same plans and normalisation as the model's dataset; train on every case with fold 'all'):",
            f"  nnUNetv2_plan_and_preprocess -d {target_id} -c 3d_fullres --verify_dataset_integrity --no_pp",
            f"  nnUNetv2_move_plans_between_datasets -s {source_id} -t {target_id} -sp {plans} -tp {plans}",
            f"  nnUNetv2_preprocess -d {target_id} -plans_name {plans} -c 3d_fullres",
            f"  nnUNetv2_train {target_id} 3d_fullres all -p {plans} --npz",
            "Plugin configurations come along with the plans; set few_shot_k=null for them on this dataset:",
            f"  nnunet-fm plans add -d {target_id} --template TEMPLATE --name NAME --set few_shot_k=null",
        ]
    )
