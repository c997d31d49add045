"""Raw-dataset checks with messages that name the case, the file and the fix (read-only)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_fm.errors import UserInputError

SPACING_TOLERANCE = 1e-3
GEOMETRY_TOLERANCE = 1e-3  # mm for the origin, cosines for the direction


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


class UnreadableFileError(Exception):
    """A file SimpleITK or nnU-Net's reader could not read; the message is the user-facing problem."""


def _unreadable(path: Path, exc: Exception) -> UnreadableFileError:
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return UnreadableFileError(
        f"{path.name} cannot be read ({first[:160]}); it is truncated or not a valid {''.join(path.suffixes)} "
        "image: re-export or re-copy it from the source"
    )


def _check_gzip_stream(path: Path) -> None:
    """ITK reads a truncated .gz without complaint (the missing voxels come back as zeros); gzip does not."""
    if path.suffix != ".gz":
        return
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 24):
                pass
    except (OSError, EOFError) as exc:
        raise _unreadable(path, exc) from exc


def _geometry(path: Path) -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(size, spacing, origin, direction) from the header."""
    _check_gzip_stream(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _unreadable(path, exc) from exc
    return tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()), tuple(reader.GetDirection())


def _read_voxels(path: Path) -> np.ndarray:
    try:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as exc:
        raise _unreadable(path, exc) from exc


def _geometry_problems(case: str, path: Path, reference: Path, geometry: tuple, reference_geometry: tuple) -> list:
    """Shape, spacing, origin and direction against the first channel (nnU-Net's verify_dataset_integrity compares
    the same four, ``np.allclose``, but only warns about origin and direction; a misplaced label trains wrong)."""
    (size, spacing, origin, direction), (ref_size, ref_spacing, ref_origin, ref_direction) = (
        geometry,
        reference_geometry,
    )
    if size != ref_size:
        return [
            f"case '{case}': {path.name} has shape {size} but {reference.name} has {ref_size} (x, y, z); all "
            "channels and the label must share one grid"
        ]
    if not np.allclose(spacing, ref_spacing, atol=SPACING_TOLERANCE):
        return [
            f"case '{case}': {path.name} has spacing {spacing} but {reference.name} has {ref_spacing}; resample it "
            "onto the image grid"
        ]
    problems = []
    for name, value, expected in (("origin", origin, ref_origin), ("direction", direction, ref_direction)):
        if not np.allclose(value, expected, atol=GEOMETRY_TOLERANCE):
            problems.append(
                f"case '{case}': {path.name} has {name} {tuple(round(v, 4) for v in value)} but {reference.name} "
                f"has {tuple(round(v, 4) for v in expected)}; if only the header is wrong, copy the image's geometry "
                "onto it (SimpleITK: label.CopyInformation(image), then WriteImage), else resample it onto the "
                "image grid"
            )
    return problems


def missing_channel_files(case: str, images_dir: Path, meta: dict) -> list[str]:
    """The problem (one entry, or none) of a case lacking some of the channel files dataset.json declares."""
    ending = meta["file_ending"]
    names = [f"{case}_{int(c):04d}{ending}" for c in sorted(meta["channel_names"], key=int)]
    missing = [name for name in names if not (images_dir / name).is_file()]
    if not missing:
        return []
    declared = f"dataset.json declares {len(names)} channel(s)"
    return [f"case '{case}': missing channel file(s) {missing} in {images_dir} ({declared})"]


def check_case(case: str, images_dir: Path, labels_dir: Path | None, meta: dict, allowed_labels: set[int]) -> list[str]:
    """Problems of one case: missing channel/label files, shape or spacing mismatch, undeclared labels."""
    ending = meta["file_ending"]
    problems: list[str] = []
    channel_files = [images_dir / f"{case}_{int(c):04d}{ending}" for c in sorted(meta["channel_names"], key=int)]
    missing = missing_channel_files(case, images_dir, meta)
    if missing:
        return missing
    # read as nnU-Net will (its reader for this dataset), so NaN is reported where nnU-Net would see it
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    label_file = labels_dir / f"{case}{ending}" if labels_dir is not None else None
    if label_file is not None and not label_file.is_file():
        return [f"case '{case}': label file {label_file} is missing"]
    try:
        reference_geometry = _geometry(channel_files[0])
        others = [(p, _geometry(p)) for p in channel_files[1:] + ([label_file] if label_file is not None else [])]
        reader = determine_reader_writer_from_dataset_json(meta, str(channel_files[0]), verbose=False)()
        try:
            data, _ = reader.read_images([str(p) for p in channel_files])
        except Exception as exc:  # the reader's own error for a damaged file: name the file instead
            bad = next((p for p in channel_files if _fails_to_read(p)), channel_files[0])
            raise _unreadable(bad, exc) from exc
        label = _read_voxels(label_file) if label_file is not None else None
    except UnreadableFileError as exc:
        return [f"case '{case}': {exc}"]
    if np.isnan(data).any():
        problems.append(f"case '{case}': its image contains NaN voxels; replace them (e.g. by the image minimum)")
    for path, geometry in others:
        problems += _geometry_problems(case, path, channel_files[0], geometry, reference_geometry)
    if label is not None and not problems:
        values = set(np.unique(label).astype(int).tolist())
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


def _fails_to_read(path: Path) -> bool:
    try:
        _read_voxels(path)
    except UnreadableFileError:
        return True
    return False


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
        declared = meta.get("numTraining")
        if split == "Tr" and cases and declared != len(cases):
            problems.append(
                f"dataset.json says numTraining {declared!r} but {images_dir.name} holds {len(cases)} training "
                f'case(s); set "numTraining": {len(cases)} (nnU-Net trusts the files it finds; the number must '
                "match them)"
            )
        for case in cases:
            problems += check_case(case, images_dir, labels_dir if labels_dir.is_dir() else None, meta, allowed)
    if problems:
        listed = "\n  - ".join(problems)
        raise UserInputError(f"Dataset {folder.name} has {len(problems)} problem(s):\n  - {listed}")
    return case_identifiers(folder / "imagesTr", meta["file_ending"])
