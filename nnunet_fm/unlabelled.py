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
from nnunet_fm.dataset_check import case_identifiers, load_dataset_json
from nnunet_fm.errors import UserInputError

CASES_RECORD = "fm_cases.json"


def ignore_label_of(meta: dict) -> tuple[int, bool]:
    """(ignore label value, whether dataset.json must declare it): the declared one, else max label + 1."""
    labels = meta["labels"]
    if "ignore" in labels:
        return int(labels["ignore"]), False
    if any(not isinstance(v, int) for v in labels.values()):
        raise UserInputError("dataset.json defines region labels; unlabelled cases need a class-label dataset.")
    return max(labels.values()) + 1, True


def check_unlabelled_folder(folder: Path, dataset_json: dict) -> list[str]:
    """Case ids of an unlabelled folder; every file must be CASE_XXXX<ending> with all declared channels."""
    ending = dataset_json["file_ending"]
    if not folder.is_dir():
        raise UserInputError(f"Unlabelled folder {folder} does not exist.")
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    wrong = [f for f in files if not f.endswith(ending)]
    if wrong:
        raise UserInputError(f"{folder}: files {wrong[:5]} do not end with the dataset's file ending '{ending}'.")
    channels = sorted(int(c) for c in dataset_json["channel_names"])
    cases = sorted({f[: -len(ending) - 5] for f in files})
    problems = []
    expected = {f"{case}_{c:04d}{ending}" for case in cases for c in channels}
    for case in cases:
        missing = [f"{case}_{c:04d}{ending}" for c in channels if f"{case}_{c:04d}{ending}" not in files]
        if missing:
            problems.append(f"case '{case}' lacks {missing} (the model expects {len(channels)} channel(s))")
    extra = sorted(set(files) - expected)
    if extra:
        problems.append(
            f"files {extra[:5]} are channels the model does not have ({len(channels)} declared); remove them"
        )
    if problems or not cases:
        raise UserInputError(f"{folder} does not match the model's channels: " + ("; ".join(problems) or "no images"))
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
    ignore, declare = ignore_label_of(meta)
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
