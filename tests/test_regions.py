"""Region datasets (BraTS-style whole tumour / tumour core / enhancing tumour) and the plugin's class trainers."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_fm.errors import UserInputError
from nnunet_fm.ext_trainers import nnunet_fm_trainers

DATASET_ID = 951  # the planned_workspace fixture's dataset (tests/conftest.py)
BRATS_REGIONS = {"background": 0, "whole_tumour": [1, 2, 3], "tumour_core": [2, 3], "enhancing": 3}


def _region_dataset_json(dataset_json: dict) -> dict:
    return {**dataset_json, "labels": BRATS_REGIONS, "regions_class_order": [1, 2, 3]}


@pytest.mark.parametrize("trainer_name", sorted(nnunet_fm_trainers.__all__))
def test_plugin_trainers_refuse_region_datasets_and_name_the_alternative(nnunet_env, trainer_name):
    folder = nnunet_env.preprocessed / nnunet_env.dataset_folder(DATASET_ID).name
    plans = {**json.loads((folder / "nnUNetPlans.json").read_text()), "continue_training": False}
    dataset_json = _region_dataset_json(json.loads((folder / "dataset.json").read_text()))
    trainer_cls = getattr(nnunet_fm_trainers, trainer_name)
    with pytest.raises(UserInputError) as caught:
        trainer_cls(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))
    message = str(caught.value)
    for needed in ("regions", "Dataset951", "stock nnUNetTrainer", "integer class labels", "-djfile"):
        assert needed in message, needed


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_region_scores_from_class_predictions_with_stock_evaluation(tmp_path):
    """The route the message recommends: class predictions scored as BraTS regions by nnU-Net's own evaluation."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    rng = np.random.default_rng(0)
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir(), pred_dir.mkdir()
    truth, predicted = {}, {}
    for case in ("BRATS_001", "BRATS_002"):
        ref = np.zeros((8, 16, 16), dtype=np.uint8)
        ref[2:6, 3:13, 3:13] = 2  # oedema
        ref[3:5, 5:11, 5:11] = 1  # necrosis
        ref[3:5, 7:9, 7:9] = 3  # enhancing
        pred = ref.copy()
        flip = rng.random(ref.shape) < 0.15
        pred[flip] = rng.integers(0, 4, flip.sum())
        for arr, folder in ((ref, ref_dir), (pred, pred_dir)):
            sitk.WriteImage(sitk.GetImageFromArray(arr), str(folder / f"{case}.nii.gz"))
        truth[case], predicted[case] = ref, pred
    manager = LabelManager(BRATS_REGIONS, regions_class_order=[1, 2, 3])
    result = compute_metrics_on_folder(
        str(ref_dir),
        str(pred_dir),
        str(tmp_path / "summary.json"),
        SimpleITKIO(),
        ".nii.gz",
        manager.foreground_regions,
        num_processes=1,
    )
    for region in manager.foreground_regions:
        members = np.atleast_1d(region)
        expected = np.mean([_dice(np.isin(truth[c], members), np.isin(predicted[c], members)) for c in truth])
        assert result["mean"][region]["Dice"] == pytest.approx(expected, abs=1e-6)
    whole = result["mean"][(1, 2, 3)]["Dice"]
    assert whole > result["mean"][3]["Dice"]  # the union is easier than the small enhancing core
