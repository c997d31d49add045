"""The DINOv3-FFA configuration feeds the encoder what the reference does (issue: encoder intensities, row 3).

vesselbridge3d min-max-normalises each raw slice (``train.py`` ~197-207); nnU-Net's CT normalisation clips to
foreground percentiles first. ``plans add --template dinov3_ffa`` preprocesses with an affine (unmasked z-score)
scheme, so the encoder's red channel equals the per-slice min-max of the raw image.
"""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from nnunet_fm.demo import add_plans
from nnunet_fm.encoders import zchannel_slices

pytestmark = pytest.mark.e2e
DATASET_ID = 951  # the planned_workspace fixture's dataset (tests/conftest.py)


def _encoder_red_channel(volume: np.ndarray) -> np.ndarray:
    """Channel 0 of the encoder's RGB input for a [D, H, W] volume, the (DINOv3: ImageNet) normalisation undone."""
    x = torch.from_numpy(volume[None, None].astype(np.float32))
    rgb = zchannel_slices(x, torch.zeros(volume.shape[0]), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    return (rgb[:, 0] * IMAGENET_DEFAULT_STD[0] + IMAGENET_DEFAULT_MEAN[0]).numpy()


def _per_slice_minmax(volume: np.ndarray) -> np.ndarray:
    low = volume.min(axis=(1, 2), keepdims=True)
    high = volume.max(axis=(1, 2), keepdims=True)
    return (volume - low) / np.maximum(high - low, 1e-8)


def _preprocessed_case(ws, data_identifier: str, case: str) -> tuple[np.ndarray, dict]:
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    folder = ws.preprocessed / ws.dataset_folder(DATASET_ID).name / data_identifier
    dataset = infer_dataset_class(str(folder))(str(folder), [case])
    data, _, _, properties = dataset.load_case(case)
    return np.asarray(data[0]), properties


def test_ffa_encoder_sees_per_slice_minmax_of_the_raw_image(planned_workspace):
    ws = planned_workspace
    tiny = ['encoder_kwargs={"embed_dim":32,"depth":2,"num_heads":2}', "taps=[0,1,1]", "agg_heads=2", "inplane_size=48"]
    configuration = add_plans(ws, DATASET_ID, "dinov3_ffa", tiny, name="3d_encoder_input")
    plans = json.loads((ws.preprocessed / ws.dataset_folder(DATASET_ID).name / "nnUNetPlans.json").read_text())
    config = plans["configurations"][configuration]
    assert config["normalization_schemes"] == ["ZScoreNormalization"] and config["use_mask_for_norm"] == [False]
    assert config["patch_size"] == [16, 48, 48]  # whole 48x48 slices, depth = the median depth (<= 64)

    raw_file = sorted((ws.dataset_folder(DATASET_ID) / "imagesTr").glob("*_0000.nii.gz"))[0]
    case = raw_file.name.removesuffix("_0000.nii.gz")
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(raw_file))).astype(np.float64)  # [D, H, W], same spacing
    affine, properties = _preprocessed_case(ws, config["data_identifier"], case)
    box = properties["bbox_used_for_cropping"]
    raw = raw[tuple(slice(lo, hi) for lo, hi in box)]
    assert affine.shape == raw.shape
    expected = _per_slice_minmax(raw)
    assert np.abs(_encoder_red_channel(affine) - expected).max() < 1e-5

    # the parent's CT normalisation clips to foreground percentiles: the encoder would see another image
    clipped, _ = _preprocessed_case(ws, plans["configurations"]["3d_fullres"]["data_identifier"], case)
    assert np.abs(_encoder_red_channel(clipped) - expected).max() > 1e-2
