"""Real anatomy through the stock commands: the MNI ICBM152 2009a brain that nilearn's wheel ships.

One real subject (the T1 template with its grey- and white-matter probability maps) becomes a small nnU-Net
raw dataset whose cases differ the way a real dataset's scans do: voxel spacing (anisotropic, thick slices),
field of view and origin, and orientation (RAS- and LPS-stored axial, FSL's radiological LAS with a negative
determinant, coronal and sagittal acquisitions, an oblique one). Stock plan/preprocess, ``nnunet-fm plans add``,
``nnUNetv2_train`` and ``nnUNetv2_predict`` then run on it, and every prediction must carry its input's grid.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_fm.atomic_io import atomic_write_json
from nnunet_fm.demo import add_plans, prepare_dataset
from nnunet_fm.nnunet_commands import Workspace, predict
from nnunet_fm.templates import load_template

DATASET_ID = 971
FAMILY = "lightmedseg"  # the template the slow test trains (its main trainer)
LABELS = {"background": 0, "grey_matter": 1, "white_matter": 2}
TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"  # {}: t1, gm, wm (1 mm, uint8)
FIELD_OF_VIEW = np.array([160.0, 195.0, 170.0])  # mm along x, y, z (LPS): the brain (142 x 179 x 153 mm) plus margin
BRAIN_CENTRE = np.array([0.0, 16.5, 5.5])  # LPS mm, centre of the template's brain bounding box


def _axes(*columns: tuple[float, float, float]) -> tuple[float, ...]:
    """A SimpleITK direction (row-major 3x3) whose columns are the physical directions of the i, j, k axes."""
    return tuple(float(v) for v in np.array(columns, dtype=float).T.ravel())


def _oblique(degrees: float) -> tuple[float, ...]:
    """Axial LPS axes tilted by ``degrees`` about the left-right axis (a gantry-tilted or oblique acquisition)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return _axes((1, 0, 0), (0, c, s), (0, -s, c))


@dataclass(frozen=True)
class Acquisition:
    """The grid one case is sampled on: spacing (x, y, z of the index axes, mm), direction, centre shift (mm)."""

    name: str
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)


TRAIN = (
    Acquisition("axial_ras", (5.0, 5.0, 6.0), _axes((-1, 0, 0), (0, -1, 0), (0, 0, 1))),  # nilearn's own storage
    Acquisition("axial_lps", (5.5, 5.5, 5.0), _axes((1, 0, 0), (0, 1, 0), (0, 0, 1)), (4.0, -3.0, 2.0)),
    Acquisition("axial_las_thick", (4.5, 4.5, 7.5), _axes((1, 0, 0), (0, -1, 0), (0, 0, 1)), (-3.0, 5.0, -4.0)),
    Acquisition("coronal", (4.8, 4.8, 6.5), _axes((1, 0, 0), (0, 0, -1), (0, 1, 0)), (2.0, 2.0, 3.0)),
    Acquisition("sagittal", (5.0, 5.0, 6.5), _axes((0, 1, 0), (0, 0, -1), (-1, 0, 0)), (-2.0, -4.0, 0.0)),
)
TEST = (
    Acquisition("axial_ras_thick", (5.0, 5.0, 7.0), _axes((-1, 0, 0), (0, -1, 0), (0, 0, 1)), (3.0, 6.0, -2.0)),
    Acquisition("oblique", (5.2, 5.2, 5.8), _oblique(15.0), (-4.0, 0.0, 5.0)),
)


def template_folder() -> Path:
    """nilearn's packaged data folder, found without importing nilearn (the test extra installs it)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise RuntimeError("nilearn is not installed; it ships the MNI template: pip install -e '.[test]'")
    return Path(spec.origin).parent / "datasets" / "data"


def _grid(acquisition: Acquisition) -> sitk.Image:
    """An empty image on the acquisition's grid, centred on the brain (plus its shift), covering FIELD_OF_VIEW."""
    direction = np.array(acquisition.direction).reshape(3, 3)
    spacing = np.array(acquisition.spacing)
    extent = np.abs(direction.T) @ FIELD_OF_VIEW  # mm each index axis must cover
    size = np.ceil(extent / spacing).astype(int)
    centre = BRAIN_CENTRE + np.array(acquisition.shift)
    origin = centre - direction @ (spacing * (size - 1) / 2.0)
    grid = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
    grid.SetSpacing(tuple(float(s) for s in spacing))
    grid.SetDirection(acquisition.direction)
    grid.SetOrigin(tuple(float(o) for o in origin))
    return grid


def write_case(
    sources: dict[str, sitk.Image], acquisition: Acquisition, image_path: Path, label_path: Path, seed: int
) -> None:
    """Resample the template onto the acquisition's grid: an MR-like image (gain, bias field, noise) and labels.

    Labels are the argmax of background (1 - gm - wm), grey and white matter probabilities on the new grid.
    """
    grid = _grid(acquisition)

    def sample(image: sitk.Image) -> np.ndarray:
        resampled = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        return sitk.GetArrayFromImage(resampled).astype(np.float32)

    grey, white = sample(sources["gm"]) / 255.0, sample(sources["wm"]) / 255.0
    labels = np.argmax(np.stack([1.0 - grey - white, grey, white]), axis=0).astype(np.uint8)
    rng = np.random.default_rng(seed)
    t1 = sample(sources["t1"])
    ramp = np.linspace(-1.0, 1.0, t1.shape[0])[:, None, None] * rng.uniform(-0.15, 0.15)  # slow bias along k
    image = t1 * rng.uniform(0.8, 1.6) * (1.0 + ramp) + rng.normal(0.0, 4.0, t1.shape)
    for array, path in ((image.astype(np.float32), image_path), (labels, label_path)):
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(grid)
        sitk.WriteImage(out, str(path), useCompression=True)


def write_real_anatomy_dataset(raw: Path, dataset_id: int = DATASET_ID) -> Path:
    """``Dataset{id}_MNIBrain``: TRAIN cases in imagesTr/labelsTr, TEST cases in imagesTs/labelsTs, dataset.json."""
    folder = raw / f"Dataset{dataset_id:03d}_MNIBrain"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    data = template_folder()
    sources = {}
    for key in ("t1", "gm", "wm"):
        # anti-aliasing before the 1 mm -> ~5 mm resampling, as a scanner's larger voxels would average
        volume = sitk.Cast(sitk.ReadImage(str(data / TEMPLATE.format(key))), sitk.sitkFloat32)
        sources[key] = sitk.SmoothingRecursiveGaussian(volume, 1.5)
    for seed, (split, acquisition) in enumerate([("Tr", a) for a in TRAIN] + [("Ts", a) for a in TEST]):
        case = f"mni_{seed:02d}_{acquisition.name}"
        write_case(
            sources,
            acquisition,
            folder / f"images{split}" / f"{case}_0000.nii.gz",
            folder / f"labels{split}" / f"{case}.nii.gz",
            seed,
        )
    atomic_write_json(
        folder / "dataset.json",
        {
            "channel_names": {"0": "T1"},
            "labels": LABELS,
            "numTraining": len(TRAIN),
            "file_ending": ".nii.gz",
            "name": "MNIBrain",
            "description": "MNI ICBM152 2009a (nilearn's copy) resampled onto varied scanner grids",
            "licence": "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, MNI, McGill University",
        },
    )
    return folder


def _geometry(path: Path) -> tuple:
    """(size, spacing, origin, direction) from the header."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()


def assert_same_grid(path: Path, reference: Path) -> None:
    """``path`` has ``reference``'s size, spacing, origin and direction (NIfTI stores them as float32)."""
    (size, spacing, origin, direction), expected = _geometry(path), _geometry(reference)
    assert size == expected[0], f"{path.name}: size {size} != {expected[0]}"
    for name, value, want, atol in (
        ("spacing", spacing, expected[1], 1e-4),
        ("origin", origin, expected[2], 1e-3),
        ("direction", direction, expected[3], 1e-5),
    ):
        np.testing.assert_allclose(value, want, atol=atol, err_msg=f"{path.name}: {name}")


def _volumes_ml(path: Path) -> np.ndarray:
    """Grey- and white-matter volume (ml) of a label map."""
    image = sitk.ReadImage(str(path))
    counts = np.bincount(sitk.GetArrayFromImage(image).ravel(), minlength=3)[1:3]
    return counts * np.prod(image.GetSpacing()) / 1000.0


def test_builder_varies_geometry_not_anatomy(tmp_path):
    """The cases differ in grid (7 spacings, 6 directions, one improper) and image, not in anatomy: their grey- and
    white-matter volumes stay within 10 % of the 1 mm template's."""
    folder = write_real_anatomy_dataset(tmp_path)
    labels = sorted((folder / "labelsTr").glob("*.nii.gz")) + sorted((folder / "labelsTs").glob("*.nii.gz"))
    assert len(labels) == len(TRAIN) + len(TEST)
    geometries = [_geometry(p) for p in labels]
    assert len({g[1] for g in geometries}) == 7 and len({np.round(g[3], 4).tobytes() for g in geometries}) == 6
    assert any(np.linalg.det(np.reshape(g[3], (3, 3))) < 0 for g in geometries)  # FSL's radiological storage
    assert all(max(g[0]) <= 45 for g in geometries)
    grey, white = (
        sitk.GetArrayFromImage(sitk.ReadImage(str(template_folder() / TEMPLATE.format(k)))) / 255.0
        for k in ("gm", "wm")
    )
    reference = np.bincount(np.argmax(np.stack([1.0 - grey - white, grey, white]), 0).ravel())[1:3] / 1000.0
    for path in labels:
        np.testing.assert_allclose(_volumes_ml(path), reference, rtol=0.1, err_msg=path.name)
        assert_same_grid(path, folder / path.parent.name.replace("labels", "images") / f"{path.name[:-7]}_0000.nii.gz")


@pytest.mark.e2e
@pytest.mark.slow
def test_real_brain_trains_and_predicts_on_every_grid(tmp_path):
    """Stock plan/preprocess -> plans add -> nnUNetv2_train -> nnUNetv2_predict on a real brain: every prediction
    (test and fold-0 validation) has its input's size, spacing, origin and direction, and labels in the label set.

    20 steps of LightMedSeg (32^3 patches, learning rate 0.01) already find the brain (merged-foreground Dice 0.82 to
    0.93 in three runs; all-foreground scores about 0.5), so the predictions must also be more than noise; grey versus
    white matter is not asserted (one run predicted no white matter). That Dice does not catch a flipped axis (a flip
    of the symmetric template still scores about 0.8): the headers do.
    """
    ws = Workspace(tmp_path / "ws", log=tmp_path / "commands.log")
    folder = write_real_anatomy_dataset(ws.raw)
    prepare_dataset(ws, DATASET_ID)  # nnunet-fm check-dataset, then stock nnUNetv2_plan_and_preprocess
    schedule = ["num_epochs=2", "num_iterations_per_epoch=10", "num_val_iterations_per_epoch=1"]
    settings = [*schedule, "batch_size=2", "patch_size=[32,32,32]", "initial_lr=0.01", "warmup_epochs=0"]
    configuration = add_plans(ws, DATASET_ID, FAMILY, settings)
    trainer = load_template(FAMILY).trainer
    ws.run(
        "nnUNetv2_train",
        *(str(DATASET_ID), configuration, "0", "-tr", trainer, "-device", "cpu"),
        extra_env={"nnUNet_n_proc_DA": "0"},
    )
    out = predict(ws, DATASET_ID, configuration, trainer, 0, tmp_path / "predictions", extra_args=("--disable_tta",))
    images = sorted((folder / "imagesTs").glob("*_0000.nii.gz"))
    predictions = sorted(out.glob("*.nii.gz"))
    assert [p.name for p in predictions] == [p.name.replace("_0000", "") for p in images]
    for image, prediction in zip(images, predictions):
        assert_same_grid(prediction, image)
        predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction)))
        assert set(np.unique(predicted).tolist()) <= set(LABELS.values()), prediction.name
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTs" / prediction.name))) > 0
        brain_dice = 2.0 * np.sum(truth & (predicted > 0)) / (truth.sum() + np.sum(predicted > 0))
        assert brain_dice > 0.65, (prediction.name, brain_dice)
    # nnU-Net's fold-0 validation exported its predictions on their training cases' grids too
    validation = sorted(
        (ws.model_folder(DATASET_ID, trainer, configuration) / "fold_0" / "validation").glob("*.nii.gz")
    )
    assert validation
    for prediction in validation:
        assert_same_grid(prediction, folder / "labelsTr" / prediction.name)
