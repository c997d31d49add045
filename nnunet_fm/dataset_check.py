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
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserInputError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); fix the file "
            "(nnU-Net's dataset_format.md shows the expected content)."
        ) from exc
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
    # read as nnU-Net will (its reader for this dataset), so NaN is reported where nnU-Net would see it
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    reader = determine_reader_writer_from_dataset_json(meta, str(channel_files[0]), verbose=False)()
    data, _ = reader.read_images([str(p) for p in channel_files])
    if np.isnan(data).any():
        problems.append(f"case '{case}': its image contains NaN voxels; replace them (e.g. by the image minimum)")
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


def file_name_problems(images_dir: Path, labels_dir: Path | None, meta: dict) -> list[str]:
    """Files that no case check would see: a case without ``_0000``, extra channels, orphan labels."""
    ending, channels = meta["file_ending"], len(meta["channel_names"])
    problems: list[str] = []
    found: dict[str, set[int]] = {}
    for path in sorted(images_dir.glob(f"*{ending}")):
        stem = path.name[: -len(ending)]
        case, sep, channel = stem.rpartition("_")
        if not sep or len(channel) != 4 or not channel.isdigit():
            problems.append(f"{path.name} in {images_dir.name}: image files must be named CASE_XXXX{ending}")
            continue
        found.setdefault(case, set()).add(int(channel))
    for case, present in sorted(found.items()):
        if 0 not in present:
            problems.append(
                f"case '{case}': no {case}_0000{ending} (channel files found: {sorted(present)}); channel files are "
                f"numbered from _0000: rename them"
            )
        extra = sorted(c for c in present if c >= channels)
        if extra:
            problems.append(
                f"case '{case}': channel file(s) {[f'{case}_{c:04d}{ending}' for c in extra]} beyond the "
                f"{channels} channel(s) dataset.json declares; remove them or declare the channels"
            )
    if labels_dir is not None:
        for label in sorted(labels_dir.glob(f"*{ending}")):
            if label.name[: -len(ending)] not in found:
                problems.append(
                    f"label {label.name} in {labels_dir.name} has no image {label.name[: -len(ending)]}_0000{ending}"
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
        labels = labels_dir if labels_dir.is_dir() else None
        problems += file_name_problems(images_dir, labels, meta)
        cases = case_identifiers(images_dir, meta["file_ending"])
        if split == "Tr" and not cases:
            problems.append(f"{images_dir} holds no training case (files named CASE_0000{meta['file_ending']})")
        for case in cases:
            problems += check_case(case, images_dir, labels_dir if labels_dir.is_dir() else None, meta, allowed)
    if problems:
        listed = "\n  - ".join(problems)
        raise UserInputError(f"Dataset {folder.name} has {len(problems)} problem(s):\n  - {listed}")
    return case_identifiers(folder / "imagesTr", meta["file_ending"])
