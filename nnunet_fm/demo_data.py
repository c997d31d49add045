"""Synthetic few-shot vessel data: a valid nnU-Net raw dataset of branching 3D vessel trees.

Each case holds two vessel trees (label 1 "artery", label 2 "vein") grown as random walks with tapering
radius, curvature and branching, rasterised with partial-volume occupancy at anisotropic spacing, then
turned into a CT-like image: contrast-filled vessels on soft tissue, a smooth multiplicative bias field,
partial-volume blur and Gaussian noise. Everything is drawn from ``numpy.random.default_rng((seed, case))``,
so a seed reproduces the dataset exactly.

``num_unlabelled`` hides the labels of that many extra training cases: their images enter ``imagesTr`` as
unlabelled cases (all-``ignore`` label maps, through :func:`nnunet_fm.unlabelled.add_unlabelled`, exactly as a
user's own unlabelled scans would) and their true labels go to ``labelsHidden/``, which nnU-Net never reads, so
pseudo-labels and semi-supervised models can be scored against them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter, zoom

from nnunet_fm.atomic_io import atomic_write_json
from nnunet_fm.file_names import HIDDEN_LABELS_DIR

LABELS = {"background": 0, "artery": 1, "vein": 2}
VESSEL_HU = {1: 380.0, 2: 260.0}
TISSUE_HU = 40.0


@dataclass(frozen=True)
class DemoSpec:
    """Shape (D, H, W) in voxels and spacing (z, y, x) in mm of every demo case."""

    shape: tuple[int, int, int] = (32, 64, 64)
    spacing: tuple[float, float, float] = (1.5, 0.7, 0.7)


def _grow_tree(rng: np.random.Generator, extent: np.ndarray, root_radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre-line points (mm, z/y/x) and radii of one branching tree inside a box of size ``extent``."""
    points, radii = [], []
    start = np.array([0.0, *rng.uniform(0.25, 0.75, 2) * extent[1:]])
    direction = np.array([1.0, *rng.normal(0.0, 0.3, 2)])
    stack = [(start, direction / np.linalg.norm(direction), root_radius, 0)]
    step = 0.5 * root_radius
    while stack and len(points) < 4000:
        position, direction, radius, generation = stack.pop()
        for _ in range(int(3 * extent.max() / step)):
            if radius < 0.35 or np.any(position < -radius) or np.any(position > extent + radius):
                break
            points.append(position.copy())
            radii.append(radius)
            direction = direction + rng.normal(0.0, 0.12, 3)
            direction[0] += 0.05  # keep trees running head-to-foot on average
            direction /= np.linalg.norm(direction)
            position = position + step * direction
            radius *= 0.992
            if generation < 3 and radius > 0.8 and rng.random() < 0.025:
                side = np.cross(direction, rng.normal(size=3))
                child = direction + 1.2 * side / (np.linalg.norm(side) + 1e-8)
                stack.append((position.copy(), child / np.linalg.norm(child), 0.7 * radius, generation + 1))
                radius *= 0.85
    return np.asarray(points).reshape(-1, 3), np.asarray(radii)


def _rasterise(points: np.ndarray, radii: np.ndarray, shape: tuple[int, ...], spacing: np.ndarray) -> np.ndarray:
    """Partial-volume occupancy in [0, 1] of the union of spheres along a centre line."""
    occupancy = np.zeros(shape, dtype=np.float32)
    voxel = spacing.min()
    for centre, radius in zip(points, radii):
        lo = np.maximum(np.floor((centre - radius - voxel) / spacing).astype(int), 0)
        hi = np.minimum(np.ceil((centre + radius + voxel) / spacing).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(*[np.arange(a, b) * s for a, b, s in zip(lo, hi, spacing)], indexing="ij")
        distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre)))
        soft = np.clip((radius - distance) / voxel + 0.5, 0.0, 1.0)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        np.maximum(occupancy[box], soft, out=occupancy[box])
    return occupancy


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], coarse: int = 4) -> np.ndarray:
    """A smooth random field in roughly [-1, 1] (low-resolution noise, upsampled)."""
    low = rng.normal(size=(coarse,) * len(shape))
    field = zoom(low, [s / coarse for s in shape], order=3)
    return field / (np.abs(field).max() + 1e-8)


def make_case(seed: int, index: int, spec: DemoSpec) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic case: (CT-like image float32 [D,H,W], labels uint8 [D,H,W])."""
    rng = np.random.default_rng((seed, index))
    spacing = np.asarray(spec.spacing, dtype=float)
    extent = np.asarray(spec.shape) * spacing
    labels = np.zeros(spec.shape, dtype=np.uint8)
    image = np.full(spec.shape, TISSUE_HU, dtype=np.float32)
    image += 25.0 * _smooth_field(rng, spec.shape).astype(np.float32)  # organ-like tissue variation
    root = 0.09 * extent[1:].min()
    for label in (1, 2):
        points, radii = _grow_tree(rng, extent, root * rng.uniform(0.8, 1.2))
        occupancy = _rasterise(points, radii, spec.shape, spacing)
        occupancy[labels != 0] = 0.0  # the first tree owns voxels where the trees cross
        labels[occupancy >= 0.5] = label
        image += occupancy * (VESSEL_HU[label] - TISSUE_HU)
    image = gaussian_filter(image, sigma=0.6 * spacing.min() / spacing)  # partial-volume blur
    image *= 1.0 + 0.12 * _smooth_field(rng, spec.shape, coarse=3)  # bias field
    image += rng.normal(0.0, 18.0, spec.shape)
    return np.clip(image, -1000, 2000).astype(np.float32), labels


def _write_nifti(array: np.ndarray, spacing: tuple[float, ...], path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    sitk.WriteImage(image, str(path), useCompression=True)


def write_demo_dataset(
    raw_dir: str | Path,
    dataset_id: int,
    name: str = "FMDemoVessels",
    num_train: int = 8,
    num_test: int = 4,
    spec: DemoSpec | None = None,
    seed: int = 0,
    num_unlabelled: int = 0,
) -> Path:
    """Write ``Dataset{id:03d}_{name}`` with imagesTr/labelsTr/imagesTs/labelsTs and dataset.json.

    Cases are numbered training, then unlabelled (``num_unlabelled``, labels in ``labelsHidden/``), then test.
    """
    from nnunet_fm.errors import UserInputError
    from nnunet_fm.unlabelled import add_unlabelled

    spec = spec or DemoSpec()
    if not 1 <= int(dataset_id) <= 999:
        raise UserInputError(f"--id {dataset_id} is not a valid nnU-Net dataset id; use 1..999 (e.g. 501).")
    if num_train < 1 or num_test < 0 or num_unlabelled < 0:
        raise UserInputError(
            f"--train {num_train} / --test {num_test} / --unlabelled {num_unlabelled}: need at least 1 training "
            "case, 0+ test and 0+ unlabelled cases."
        )
    if len(spec.shape) != 3 or min(spec.shape) < 8:
        raise UserInputError(f"--shape {list(spec.shape)}: every axis needs at least 8 voxels (default 32 64 64).")
    if len(spec.spacing) != 3 or min(spec.spacing) <= 0:
        raise UserInputError(f"--spacing {list(spec.spacing)}: spacings must be positive.")
    folder = Path(raw_dir) / f"Dataset{dataset_id:03d}_{name}"
    same_id = [p for p in Path(raw_dir).glob(f"Dataset{dataset_id:03d}_*") if p != folder]
    if same_id:
        raise UserInputError(
            f"{same_id[0]} already uses id {dataset_id}; a second Dataset{dataset_id:03d}_* would break every "
            f"nnU-Net command that takes -d {dataset_id}. Choose another --id."
        )
    if folder.exists() and any(folder.iterdir()):
        raise UserInputError(f"{folder} already exists and is not empty; choose another --id/--name or remove it.")
    subfolders = ("imagesTr", "labelsTr", "imagesTs", "labelsTs") + ((HIDDEN_LABELS_DIR,) if num_unlabelled else ())
    for sub in subfolders:
        (folder / sub).mkdir(parents=True, exist_ok=True)
    staging = folder / ".unlabelled_images"
    for index in range(num_train + num_unlabelled + num_test):
        image, labels = make_case(seed, index, spec)
        case = f"vessel_{index:03d}"
        if index < num_train:
            images, labels_dir = folder / "imagesTr", folder / "labelsTr"
        elif index < num_train + num_unlabelled:
            images, labels_dir = staging, folder / HIDDEN_LABELS_DIR
            staging.mkdir(exist_ok=True)
        else:
            images, labels_dir = folder / "imagesTs", folder / "labelsTs"
        _write_nifti(image, spec.spacing, images / f"{case}_0000.nii.gz")
        _write_nifti(labels, spec.spacing, labels_dir / f"{case}.nii.gz")
    atomic_write_json(
        folder / "dataset.json",
        {
            "channel_names": {"0": "CT"},
            "labels": LABELS,
            "numTraining": num_train,
            "file_ending": ".nii.gz",
            "name": name,
            "description": f"nnunet-fm synthetic vessel trees, seed {seed}, shape {list(spec.shape)}",
        },
    )
    if num_unlabelled:
        add_unlabelled(folder, staging)
        shutil.rmtree(staging)
    return folder
