"""``nnunet-fm add-unlabelled``: unlabelled images enter a raw dataset as ordinary cases with an all-``ignore`` label.

nnU-Net then plans, verifies, preprocesses, splits and loads them like any case; the supervised loss skips
ignore voxels, and the Mean Teacher hook (``ssl: mean_teacher``) trains on them. ``fm_cases.json`` in the raw
dataset records which cases are labelled and which unlabelled. Every file is staged in a hidden folder first and
moved in only when all are written; dataset.json is replaced atomically; nothing else is touched.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_fm.atomic_io import atomic_write_json
from nnunet_fm.dataset_check import case_identifiers, file_name_problems, load_dataset_json, missing_channel_files
from nnunet_fm.errors import UserInputError

CASES_RECORD = "fm_cases.json"


def ignore_label(meta: dict, needed: bool = True) -> int | None:
    """The dataset's ignore label: the one dataset.json declares, else (when ``needed``) highest label + 1, else None.

    The one rule for every dataset the plugin writes (unlabelled cases, pseudo-labels with unsure voxels).
    """
    labels = meta["labels"]
    if "ignore" in labels:
        return int(labels["ignore"])
    if not needed:
        return None
    if any(not isinstance(v, int) for v in labels.values()):
        raise UserInputError(
            "dataset.json defines region labels; unlabelled cases and unsure pseudo-label voxels need an ignore "
            'label, which the plugin adds only to class-label datasets. Declare "ignore" in dataset.json labels.'
        )
    return max(labels.values()) + 1


def check_unlabelled_folder(folder: Path, dataset_json: dict) -> list[str]:
    """Case ids of an unlabelled image folder, checked by the same naming and channel rules as imagesTr."""
    ending = dataset_json["file_ending"]
    if not folder.is_dir():
        raise UserInputError(f"Unlabelled folder {folder} does not exist.")
    wrong = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.endswith(ending))
    problems = [f"files {wrong[:5]} do not end with the dataset's file ending '{ending}'"] if wrong else []
    problems += file_name_problems(folder, None, dataset_json)
    cases = case_identifiers(folder, ending)
    for case in cases:
        problems += missing_channel_files(case, folder, dataset_json)
    if problems or not cases:
        listed = "; ".join(problems) or f"no images named CASE_0000{ending}"
        raise UserInputError(f"Unlabelled folder {folder} does not match the model's input: {listed}")
    return cases


def all_ignore_label(image_file: Path, value: int) -> sitk.Image:
    """A label map on the image's grid where every voxel is ``value``."""
    image = sitk.ReadImage(str(image_file))
    label = sitk.GetImageFromArray(np.full(sitk.GetArrayViewFromImage(image).shape, value, dtype=np.uint8))
    label.CopyInformation(image)
    return label


def add_unlabelled(dataset_folder: str | Path, images: str | Path) -> list[str]:
    """Add every case of ``images`` to the raw dataset with an all-ignore label; returns the new case ids."""
    folder, images = Path(dataset_folder), Path(images)
    meta = load_dataset_json(folder)
    ending = meta["file_ending"]
    cases = check_unlabelled_folder(images, meta)
    existing = set(case_identifiers(folder / "imagesTr", ending))
    clashes = sorted(set(cases) & existing)
    if clashes:
        raise UserInputError(f"Case ids {clashes[:5]} already exist in {folder / 'imagesTr'}; rename those images.")
    ignore, declare = ignore_label(meta), "ignore" not in meta["labels"]
    record_file = folder / CASES_RECORD
    record = json.loads(record_file.read_text()) if record_file.is_file() else {"labelled": sorted(existing)}
    with tempfile.TemporaryDirectory(dir=folder, prefix=".add_unlabelled.") as tmp:
        staged = Path(tmp)
        (staged / "imagesTr").mkdir()
        (staged / "labelsTr").mkdir()
        channels = sorted(int(c) for c in meta["channel_names"])
        for case in cases:
            for c in channels:
                shutil.copy2(images / f"{case}_{c:04d}{ending}", staged / "imagesTr")
            label = all_ignore_label(images / f"{case}_0000{ending}", ignore)
            sitk.WriteImage(label, str(staged / "labelsTr" / f"{case}{ending}"), useCompression=True)
        moved: list[Path] = []
        try:
            for sub in ("imagesTr", "labelsTr"):
                for path in sorted((staged / sub).iterdir()):
                    target = folder / sub / path.name
                    path.replace(target)
                    moved.append(target)
            new_meta = dict(meta, numTraining=int(meta.get("numTraining", len(existing))) + len(cases))
            if declare:
                new_meta["labels"] = {**meta["labels"], "ignore": ignore}
            atomic_write_json(folder / "dataset.json", new_meta)
        except BaseException:
            for target in moved:
                target.unlink(missing_ok=True)
            raise
    record["unlabelled"] = sorted(set(record.get("unlabelled", [])) | set(cases))
    atomic_write_json(record_file, record)
    return cases
