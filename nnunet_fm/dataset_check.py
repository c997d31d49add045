"""Raw-dataset checks with messages that name the case, the file and the fix (read-only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_fm.errors import UserInputError

SPACING_TOLERANCE = 1e-3


def load_dataset_json(folder: Path) -> dict:
    """dataset.json of a raw dataset folder, checked for the keys nnU-Net needs."""
    path = folder / "dataset.json"
    if not path.is_file():
        raise UserInputError(f"{path} is missing; an nnU-Net raw dataset needs a dataset.json.")
    meta = json.loads(path.read_text())
    missing = [k for k in ("channel_names", "labels", "file_ending") if k not in meta]
    if missing:
        raise UserInputError(f"{path} lacks {missing}; see nnU-Net's dataset_format.md.")
    return meta


def case_identifiers(images_dir: Path, file_ending: str) -> list[str]:
    """Case ids found in an images folder (files named ``CASE_XXXX<ending>``)."""
    suffix = "_0000" + file_ending
    return sorted(p.name[: -len(suffix)] for p in images_dir.glob(f"*{suffix}"))


def _geometry(path: Path) -> tuple[tuple[int, ...], tuple[float, ...]]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return tuple(reader.GetSize()), tuple(reader.GetSpacing())


def check_case(case: str, images_dir: Path, labels_dir: Path | None, meta: dict, allowed_labels: set[int]) -> list[str]:
    """Problems of one case: missing channel/label files, shape or spacing mismatch, undeclared labels."""
    ending = meta["file_ending"]
    problems: list[str] = []
    channel_files = [images_dir / f"{case}_{int(c):04d}{ending}" for c in sorted(meta["channel_names"], key=int)]
    missing = [p.name for p in channel_files if not p.is_file()]
    if missing:
        return [
            f"case '{case}': missing channel file(s) {missing} in {images_dir} (dataset.json declares "
            f"{len(channel_files)} channel(s))"
        ]
    reference_size, reference_spacing = _geometry(channel_files[0])
    others = [(p, _geometry(p)) for p in channel_files[1:]]
    label_file = labels_dir / f"{case}{ending}" if labels_dir is not None else None
    if label_file is not None:
        if not label_file.is_file():
            return [f"case '{case}': label file {label_file} is missing"]
        others.append((label_file, _geometry(label_file)))
    for path, (size, spacing) in others:
        if size != reference_size:
            problems.append(
                f"case '{case}': {path.name} has shape {size} but {channel_files[0].name} has "
                f"{reference_size} (x, y, z); all channels and the label must share one grid"
            )
        elif not np.allclose(spacing, reference_spacing, atol=SPACING_TOLERANCE):
            problems.append(
                f"case '{case}': {path.name} has spacing {spacing} but {channel_files[0].name} has "
                f"{reference_spacing}; resample it onto the image grid"
            )
    if label_file is not None and not problems:
        values = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))).astype(int).tolist())
        undeclared = sorted(values - allowed_labels)
        if undeclared:
            problems.append(
                f"case '{case}': label values {undeclared} in {label_file.name} are not declared in "
                f"dataset.json labels {sorted(allowed_labels)}; add them or relabel the file"
            )
    return problems


def allowed_label_values(meta: dict) -> set[int]:
    """Label values a label file may hold (class values and the ignore label)."""
    values: set[int] = set()
    for value in meta["labels"].values():
        values.update([value] if isinstance(value, int) else value)
    return values


def check_raw_dataset(folder: str | Path) -> list[str]:
    """Check every training (and test, if labelled) case of a raw dataset; raise listing all problems."""
    folder = Path(folder)
    meta = load_dataset_json(folder)
    allowed = allowed_label_values(meta)
    problems: list[str] = []
    for split in ("Tr", "Ts"):
        images_dir = folder / f"images{split}"
        if not images_dir.is_dir():
            if split == "Tr":
                problems.append(f"{images_dir} is missing")
            continue
        labels_dir = folder / f"labels{split}"
        for case in case_identifiers(images_dir, meta["file_ending"]):
            problems += check_case(case, images_dir, labels_dir if labels_dir.is_dir() else None, meta, allowed)
    if problems:
        listed = "\n  - ".join(problems)
        raise UserInputError(f"Dataset {folder.name} has {len(problems)} problem(s):\n  - {listed}")
    return case_identifiers(folder / "imagesTr", meta["file_ending"])
