"""Pseudo-label scoring, selection, voxel filtering, rounds and bad input (nothing written)."""

import json

import numpy as np
import pytest

from nnunet_fm.errors import UserInputError
from nnunet_fm.pseudolabel import (
    MANIFEST_NAME,
    CaseScore,
    case_confidence,
    confident_labels,
    labelled_source,
    next_steps,
    pseudolabel,
    select_cases,
)
from nnunet_fm.unlabelled import check_unlabelled_folder, ignore_label

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
    with pytest.raises(UserInputError, match=r"case 'b': missing channel file\(s\) \['b_0001.nii.gz'\]"):
        check_unlabelled_folder(tmp_path, META)
    (tmp_path / "b_0001.nii.gz").write_bytes(b"")
    assert check_unlabelled_folder(tmp_path, META) == ["a", "b"]
    (tmp_path / "c_0000.mha").write_bytes(b"")
    with pytest.raises(UserInputError, match="file ending '.nii.gz'"):
        check_unlabelled_folder(tmp_path, META)
    with pytest.raises(UserInputError, match="does not exist"):
        check_unlabelled_folder(tmp_path / "missing", META)


def test_ignore_label_is_declared_only_when_needed():
    classes = {"labels": {"background": 0, "artery": 1, "vein": 2}}
    assert ignore_label(classes, needed=False) is None  # no threshold: nothing ignored, nothing declared
    assert ignore_label(classes) == 3
    assert ignore_label({"labels": {**classes["labels"], "ignore": 5}}, needed=False) == 5  # the dataset's own
    with pytest.raises(UserInputError, match="region labels"):
        ignore_label({"labels": {"background": 0, "whole": [1, 2]}})


def _dataset(raw, name, cases, labels=None):
    folder = raw / name
    (folder / "imagesTr").mkdir(parents=True)
    for case in cases:
        (folder / "imagesTr" / f"{case}_0000.nii.gz").write_bytes(b"")
    meta = {"channel_names": {"0": "CT"}, "labels": labels or {"background": 0, "a": 1}, "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


def test_later_rounds_copy_the_original_labelled_cases_not_earlier_pseudo_labels(tmp_path, monkeypatch):
    raw, results = tmp_path / "raw", tmp_path / "results"
    monkeypatch.setenv("nnUNet_raw", str(raw))
    original = _dataset(raw, "Dataset501_X", ["c1", "c2", "c3"])
    model = results / "Dataset501_X" / "T__nnUNetPlans__3d"
    (model / "fold_0").mkdir(parents=True)
    (model / "fold_0" / "fewshot_cases.json").write_text(json.dumps({"cases": ["c2"]}))
    first = labelled_source(model, "0", ".nii.gz")
    assert (first.folder, first.cases, first.round) == (original, ["c2"], 0)

    labels = {"background": 0, "a": 1, "ignore": 2}
    round_one = _dataset(raw, "Dataset601_PL", ["c2", "pl_u1"], labels)
    manifest = {"round": 1, "source_dataset": str(original), "labelled_cases": ["c2"]}
    (round_one / MANIFEST_NAME).write_text(json.dumps(manifest))
    model_one = results / "Dataset601_PL" / "T__nnUNetPlans__3d"
    (model_one / "fold_all").mkdir(parents=True)
    second = labelled_source(model_one, "all", ".nii.gz")
    assert (second.folder, second.cases, second.round) == (original, ["c2"], 1)
    assert "ignore" not in second.dataset_json["labels"]  # the original's label set, not round one's

    original.joinpath("dataset.json").unlink()
    with pytest.raises(UserInputError, match="no longer exists"):
        labelled_source(model_one, "all", ".nii.gz")


def test_bad_voxel_threshold_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    with pytest.raises(UserInputError, match=r"--voxel-threshold must be in \[0, 1\)"):
        pseudolabel(tmp_path / "model", tmp_path, 601, voxel_threshold=1.0)
    assert list(tmp_path.iterdir()) == []


def test_next_steps_plan_the_new_dataset_like_the_models_dataset(tmp_path):
    model = tmp_path / "Dataset501_X" / "nnUNetTrainerDINOv3FFA__nnUNetResEncUNetMPlans__3d_fm"
    steps = next_steps(model, tmp_path / "Dataset601_PL")
    assert "nnUNetv2_move_plans_between_datasets -s 501 -t 601 -sp nnUNetResEncUNetMPlans" in steps
    assert "nnUNetv2_train 601 3d_fullres all -p nnUNetResEncUNetMPlans --npz" in steps


def test_pseudo_label_dice_scores_kept_cases_over_annotated_voxels(tmp_path):
    import SimpleITK as sitk

    from nnunet_fm.tools.sfr_report import pseudo_label_dice

    source, pseudo = tmp_path / "src", tmp_path / "pl"
    for folder in (source / "labelsTr", pseudo / "labelsTr"):
        folder.mkdir(parents=True)
    truth = np.array([[[0, 1, 1, 2, 2, 0]]], dtype=np.uint8)
    guess = np.array([[[0, 1, 3, 2, 0, 0]]], dtype=np.uint8)  # voxel 2 ignored, voxel 4 misses class 2
    sitk.WriteImage(sitk.GetImageFromArray(truth), str(source / "labelsTr" / "u1.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(guess), str(pseudo / "labelsTr" / "pl_u1.nii.gz"))
    meta = {"labels": {"background": 0, "a": 1, "b": 2, "ignore": 3}, "file_ending": ".nii.gz"}
    (pseudo / "dataset.json").write_text(json.dumps(meta))
    cases = [{"case": "u1", "new_id": "pl_u1", "kept": True}, {"case": "u2", "new_id": "pl_u2", "kept": False}]
    (pseudo / MANIFEST_NAME).write_text(json.dumps({"pseudo_cases": cases}))
    scores = pseudo_label_dice(pseudo, source)
    assert scores["per_class_dice"] == {"1": 1.0, "2": pytest.approx(2 / 3, abs=1e-4)}
    # vessel metrics over annotated voxels: class 2 skeletons {3, 4} (truth) and {3} -> tsens 1/2, tprec 1
    assert scores["per_class_cldice"] == {"1": 1.0, "2": pytest.approx(2 / 3, abs=1e-4)}
    # merged: truth {1, 3, 4} vs {1, 3}: Dice 4/5, components 2 and 2; surface distances 0,0,0,0,1 -> HD95 0.8
    assert scores["binary_dice"] == pytest.approx(0.8) and scores["binary_cldice"] == pytest.approx(0.8)
    assert scores["binary_betti0_error"] == 0 and scores["binary_hd95"] == pytest.approx(0.8)


def test_sigterm_interrupts_the_command_but_lets_forked_workers_exit_quietly():
    """nnU-Net terminates its export pool with SIGTERM when done: no worker may print a traceback."""
    import multiprocessing
    import os
    import signal
    import time

    from nnunet_fm.pseudolabel import _sigterm_as_interrupt

    ctx = multiprocessing.get_context("fork")
    running = ctx.Event()

    def worker() -> None:
        running.set()
        time.sleep(30)

    before = signal.getsignal(signal.SIGTERM)
    with _sigterm_as_interrupt():
        assert signal.getsignal(signal.SIGTERM) is not before
        child = ctx.Process(target=worker)
        child.start()
        assert running.wait(10)
        child.terminate()  # SIGTERM, as Pool.terminate() sends
        child.join(10)
        assert child.exitcode == 128 + signal.SIGTERM  # os._exit in the worker, no KeyboardInterrupt traceback
        with pytest.raises(KeyboardInterrupt, match="signal 15"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back


def test_sfr_table_shows_vessel_metrics_beside_dice_and_dashes_for_old_rows():
    from nnunet_fm.tools.sfr_report import to_markdown

    new = {"model": "M", "trained on": "3 labelled", "mean_dice": 0.5, "per_class_dice": {"1": 0.6, "2": 0.4}}
    new.update(per_class_cldice={"1": 0.7, "2": 0.3}, binary_cldice=0.55, binary_betti0_error=3.0)
    old = {"model": "M", "trained on": "old run", "mean_dice": 0.5, "per_class_dice": {"1": 0.6, "2": 0.4}}
    lines = to_markdown([new, old]).splitlines()
    assert lines[0] == (
        "| model | trained on | mean Dice | artery | vein | binary clDice | artery clDice | vein clDice "
        "| binary Betti-0 error |"
    )
    assert lines[2] == "| M | 3 labelled | 0.5000 | 0.6000 | 0.4000 | 0.5500 | 0.7000 | 0.3000 | 3.00 |"
    assert lines[3] == "| M | old run | 0.5000 | 0.6000 | 0.4000 | - | - | - | - |"
