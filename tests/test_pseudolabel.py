"""Pseudo-label scoring, selection, voxel filtering and bad input (nothing written)."""

import numpy as np
import pytest

from nnunet_fm.errors import UserInputError
from nnunet_fm.pseudolabel import CaseScore, case_confidence, check_unlabelled_folder, confident_labels, select_cases

META = {"channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "a": 1}, "file_ending": ".nii.gz"}


def test_confidence_is_mean_max_probability_over_predicted_foreground():
    probabilities = np.zeros((2, 1, 1, 4))
    probabilities[:, 0, 0] = [[0.9, 0.2, 0.4, 0.1], [0.1, 0.8, 0.6, 0.9]]  # fg predicted at voxels 1..3
    confidence, count = case_confidence(probabilities)
    assert count == 3 and confidence == pytest.approx((0.8 + 0.6 + 0.9) / 3)
    assert case_confidence(np.stack([np.ones((1, 1, 2)), np.zeros((1, 1, 2))])) == (0.0, 0)


def test_selection_by_threshold_or_fraction_never_keeps_empty_predictions():
    scores = [CaseScore("a", 0.9, 10), CaseScore("b", 0.7, 5), CaseScore("c", 0.95, 0), CaseScore("d", 0.5, 3)]
    assert select_cases(scores, 0.6, None) == ["a", "b"]
    assert select_cases(scores, None, 0.5) == ["a", "b"]
    assert select_cases(scores, 0.99, None) == []
    with pytest.raises(UserInputError):
        select_cases(scores, None, 1.5)


def test_unsure_voxels_get_the_ignore_label():
    probabilities = np.array([[[[0.9, 0.45, 0.2]]], [[[0.1, 0.55, 0.8]]]])
    labels, fraction = confident_labels(probabilities, 0.6, ignore_value=2)
    np.testing.assert_array_equal(labels[0, 0], [0, 2, 1])
    assert fraction == pytest.approx(1 / 3)


def test_unlabelled_folder_must_match_channels_and_file_ending(tmp_path):
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(UserInputError, match=r"case 'b' lacks \['b_0001.nii.gz'\]"):
        check_unlabelled_folder(tmp_path, META)
    (tmp_path / "b_0001.nii.gz").write_bytes(b"")
    assert check_unlabelled_folder(tmp_path, META) == ["a", "b"]
    (tmp_path / "c_0000.mha").write_bytes(b"")
    with pytest.raises(UserInputError, match="file ending '.nii.gz'"):
        check_unlabelled_folder(tmp_path, META)
    with pytest.raises(UserInputError, match="does not exist"):
        check_unlabelled_folder(tmp_path / "missing", META)
