"""Synthetic vessel data: deterministic, plausible, and bad raw datasets named case by case."""

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_fm.dataset_check import check_raw_dataset
from nnunet_fm.demo_data import DemoSpec, make_case, write_demo_dataset
from nnunet_fm.errors import UserInputError

SPEC = DemoSpec(shape=(12, 32, 32), spacing=(2.0, 0.8, 0.8))


def test_cases_are_deterministic_per_seed_and_hold_two_vessel_classes():
    image, labels = make_case(5, 0, SPEC)
    image2, labels2 = make_case(5, 0, SPEC)
    np.testing.assert_array_equal(labels, labels2)
    np.testing.assert_array_equal(image, image2)
    assert not np.array_equal(make_case(6, 0, SPEC)[1], labels)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert 0.005 < (labels > 0).mean() < 0.3
    assert image[labels == 1].mean() > image[labels == 0].mean() + 150  # contrast-filled vessels


def _dataset(tmp_path):
    return write_demo_dataset(tmp_path, 7, num_train=2, num_test=1, spec=SPEC, seed=1)


def test_written_dataset_is_valid_and_anisotropic(tmp_path):
    folder = _dataset(tmp_path)
    assert check_raw_dataset(folder) == ["vessel_000", "vessel_001"]
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "artery": 1, "vein": 2} and meta["numTraining"] == 2
    image = sitk.ReadImage(str(folder / "imagesTr" / "vessel_000_0000.nii.gz"))
    assert image.GetSpacing() == pytest.approx((0.8, 0.8, 2.0)) and image.GetSize() == (32, 32, 12)
    with pytest.raises(UserInputError, match="not empty"):
        _dataset(tmp_path)


def test_unlabelled_cases_hide_their_labels_behind_ignore(tmp_path):
    folder = write_demo_dataset(tmp_path, 8, num_train=2, num_test=1, spec=SPEC, seed=1, num_unlabelled=2)
    assert check_raw_dataset(folder) == ["vessel_000", "vessel_001", "vessel_002", "vessel_003"]
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"]["ignore"] == 3 and meta["numTraining"] == 4
    record = json.loads((folder / "fm_cases.json").read_text())
    assert record == {"labelled": ["vessel_000", "vessel_001"], "unlabelled": ["vessel_002", "vessel_003"]}
    for index in (2, 3):
        shown = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / f"vessel_{index:03d}.nii.gz")))
        hidden = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsHidden" / f"vessel_{index:03d}.nii.gz")))
        assert (shown == 3).all()
        np.testing.assert_array_equal(hidden, make_case(1, index, SPEC)[1])  # the truth, kept for scoring
    # the labelled and test cases are the ones of the same seed without hidden labels, test case after them
    plain = write_demo_dataset(tmp_path / "plain", 8, num_train=2, num_test=1, spec=SPEC, seed=1)
    for case in ("vessel_000", "vessel_001"):
        assert (folder / "labelsTr" / f"{case}.nii.gz").read_bytes() == (
            plain / "labelsTr" / f"{case}.nii.gz"
        ).read_bytes()
    assert sorted(p.name for p in (folder / "labelsTs").iterdir()) == ["vessel_004.nii.gz"]
    assert not (folder / ".unlabelled_images").exists()
    with pytest.raises(UserInputError, match="--unlabelled -1"):
        write_demo_dataset(tmp_path / "bad", 9, num_train=2, spec=SPEC, num_unlabelled=-1)


def _corrupt_and_check(folder, message):
    snapshot = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with pytest.raises(UserInputError, match=message):
        check_raw_dataset(folder)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == snapshot  # nothing modified


def test_bad_raw_datasets_are_named_case_by_case(tmp_path):
    folder = _dataset(tmp_path)
    label = folder / "labelsTr" / "vessel_001.nii.gz"
    small = sitk.GetImageFromArray(np.zeros((12, 32, 30), np.uint8))
    small.SetSpacing((0.8, 0.8, 2.0))
    sitk.WriteImage(small, str(label))
    _corrupt_and_check(folder, r"case 'vessel_001': vessel_001.nii.gz has shape \(30, 32, 12\)")
    wrong_spacing = sitk.GetImageFromArray(np.zeros((12, 32, 32), np.uint8))
    wrong_spacing.SetSpacing((0.8, 0.8, 3.0))
    sitk.WriteImage(wrong_spacing, str(label))
    _corrupt_and_check(folder, "has spacing")
    bad_values = sitk.GetImageFromArray(np.full((12, 32, 32), 7, np.uint8))
    bad_values.SetSpacing((0.8, 0.8, 2.0))
    sitk.WriteImage(bad_values, str(label))
    _corrupt_and_check(folder, r"label values \[7\].*not declared")
    shutil.copy(folder / "labelsTr" / "vessel_000.nii.gz", label)
    meta = json.loads((folder / "dataset.json").read_text())
    meta["channel_names"] = {"0": "CT", "1": "CT2"}
    (folder / "dataset.json").write_text(json.dumps(meta))
    _corrupt_and_check(folder, r"case 'vessel_000': missing channel file\(s\) \['vessel_000_0001.nii.gz'\]")
