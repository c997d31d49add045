"""Vessel metrics (clDice, Betti-0 error, HD95) against hand-worked values, and ``nnunet-fm evaluate``."""

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_fm.cli import main
from nnunet_fm.errors import UserInputError
from nnunet_fm.evaluate_command import evaluate_folder, summary_scores
from nnunet_fm.mask_metrics import betti0_error, cl_dice, hd95, skeleton, topology_metrics

SHAPE = (20, 20, 20)


def _tube() -> np.ndarray:
    """Straight tube along axis 0: radius 3 (29 voxels a slice) on slices 2..17, 464 voxels."""
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return ((y - 10) ** 2 + (x - 10) ** 2 <= 9) & (z >= 2) & (z < 18)


def _rod(y: int, x: int) -> np.ndarray:
    """One-voxel-thick line along axis 0 on slices 3..16 (14 voxels), all of it surface."""
    rod = np.zeros(SHAPE, bool)
    rod[3:17, y, x] = True
    return rod


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_tube_against_itself_is_perfect():
    tube = _tube()
    assert tube.sum() == 464
    assert topology_metrics(tube, tube, (1.0, 1.0, 1.0)) == {"clDice": 1.0, "Betti0_error": 0, "HD95": 0.0}


def test_cut_tube_breaks_topology_and_clDice_drops_more_than_Dice():
    tube = _tube()
    cut = tube.copy()
    cut[9:11] = False  # two slices removed: two pieces, 406 voxels left
    centreline = np.argwhere(skeleton(tube))  # thinned in (x, y, z) order: slices 4..15
    assert (centreline[:, 1:] == 10).all() and sorted(centreline[:, 0]) == list(range(4, 16))  # 12 voxels
    # tprec = 1 (cut inside tube); tsens = 10/12 (2 centreline voxels in the gap); clDice = 2*(5/6)/(1+5/6) = 10/11
    metrics = topology_metrics(tube, cut, (1.0, 1.0, 1.0))
    assert metrics["Betti0_error"] == 1
    assert metrics["clDice"] == pytest.approx(10 / 11)
    dice = _dice(tube, cut)
    assert dice == pytest.approx(2 * 406 / (464 + 406))
    assert 1 - metrics["clDice"] > 1 - dice  # 0.0909 > 0.0667


@pytest.mark.parametrize(("axis_shift", "expected_mm"), [((0, 2), 3.0), ((2, 0), 1.6)])
def test_hd95_of_a_shifted_rod_is_the_shift_in_mm_at_anisotropic_spacing(axis_shift, expected_mm):
    spacing = (2.0, 0.8, 1.5)  # per array axis (z, y, x)
    ref, pred = _rod(8, 5), _rod(8 + axis_shift[0], 5 + axis_shift[1])
    # every voxel is surface; each one's nearest voxel of the other rod is the one on its slice, 2 voxels away
    assert hd95(ref, pred, spacing) == pytest.approx(expected_mm)
    assert topology_metrics(ref, pred, spacing) == {
        "clDice": 0.0,
        "Betti0_error": 0,
        "HD95": pytest.approx(expected_mm),
    }


def test_empty_conventions():
    empty, tube = np.zeros(SHAPE, bool), _tube()
    both = topology_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert math.isnan(both["clDice"]) and both["Betti0_error"] == 0 and math.isnan(both["HD95"])
    for ref, pred in ((tube, empty), (empty, tube)):
        one = topology_metrics(ref, pred, (1.0, 1.0, 1.0))
        assert one["clDice"] == 0.0 and one["Betti0_error"] == 1 and math.isnan(one["HD95"])


def test_components_use_26_connectivity():
    corners = np.zeros((4, 4, 4), bool)
    corners[1, 1, 1] = corners[2, 2, 2] = True  # touch at a corner only: one component at 26-, two at 6-connectivity
    single = np.zeros_like(corners)
    single[0, 0, 0] = True
    assert betti0_error(single, corners) == 0
    apart = corners.copy()
    apart[2, 2, 2], apart[3, 3, 3] = False, True
    assert betti0_error(single, apart) == 1
    assert cl_dice(corners, corners) == 1.0


def _write(folder, name, array, spacing_xyz=(1.5, 0.8, 2.0)):
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing_xyz)  # numpy axes (z, y, x) get (2.0, 0.8, 1.5)
    sitk.WriteImage(image, str(folder / name))


def _folders(tmp_path):
    """Case a: artery (1) shifted 2 voxels along x, vein (2) exact. Case b: artery exact, no vein anywhere."""
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    artery, vein = _rod(5, 5), _rod(14, 14)
    _write(ref, "a.nii.gz", artery * 1 + vein * 2)
    _write(pred, "a.nii.gz", _rod(5, 7) * 1 + vein * 2)
    _write(ref, "b.nii.gz", artery * 1)
    _write(pred, "b.nii.gz", artery * 1)
    dataset_json = tmp_path / "dataset.json"
    meta = {"labels": {"background": 0, "artery": 1, "vein": 2}, "file_ending": ".nii.gz", "channel_names": {"0": "CT"}}
    dataset_json.write_text(json.dumps(meta))
    return ref, pred, dataset_json


def test_evaluate_command_writes_nnunet_layout_with_vessel_metrics(tmp_path, capsys):
    from nnunetv2.evaluation.evaluate_predictions import load_summary_json

    ref, pred, dataset_json = _folders(tmp_path)
    out = tmp_path / "summary.json"
    assert main(["evaluate", str(ref), str(pred), "-djfile", str(dataset_json), "-np", "2", "-o", str(out)]) == 0
    assert f"Wrote {out} (2 case(s)" in capsys.readouterr().out
    summary = json.loads(out.read_text())
    assert set(summary) == {"metric_per_case", "mean", "foreground_mean", "binary", "conventions"}
    case_a = next(c for c in summary["metric_per_case"] if c["prediction_file"].endswith("a.nii.gz"))
    assert case_a["reference_file"] == str(ref / "a.nii.gz") and set(case_a["metrics"]) == {"1", "2"}
    artery = case_a["metrics"]["1"]
    assert {"Dice", "IoU", "TP", "FP", "FN", "TN", "n_pred", "n_ref", "clDice", "Betti0_error", "HD95"} <= set(artery)
    assert artery["Dice"] == 0.0 and artery["HD95"] == pytest.approx(3.0) and artery["n_ref"] == 14
    assert case_a["binary"]["HD95"] == pytest.approx(3.0)  # half the surface voxels 3 mm off, half exact
    mean = summary["mean"]
    assert mean["1"]["HD95"] == pytest.approx(1.5) and mean["1"]["clDice"] == pytest.approx(0.5)  # (3, 0); (0, 1)
    assert mean["2"]["clDice"] == 1.0 and mean["2"]["Dice"] == 1.0  # case b's NaN (no vein) left out
    assert summary["foreground_mean"]["clDice"] == pytest.approx(0.75)
    assert summary["binary"]["HD95"] == pytest.approx(1.5) and summary["binary"]["Betti0_error"] == 0.0
    assert "NaN" in summary["conventions"]["clDice"]
    assert load_summary_json(str(out))["mean"][1]["Dice"] == pytest.approx(0.5)  # nnU-Net reads it back

    scores = summary_scores(summary)
    assert scores["per_class_cldice"] == {"1": 0.5, "2": 1.0} and scores["binary_betti0_error"] == 0.0
    assert scores["mean_dice"] == pytest.approx(0.75) and scores["binary_hd95"] == pytest.approx(1.5)


def test_stock_summary_without_vessel_metrics_still_scores():
    stock = {"mean": {"1": {"Dice": 0.5}, "2": {"Dice": 0.7}}, "foreground_mean": {"Dice": 0.6}}
    assert summary_scores(stock) == {"per_class_dice": {"1": 0.5, "2": 0.7}, "mean_dice": 0.6}


def test_bad_inputs_name_the_case_and_the_fix(tmp_path, capsys):
    ref, pred, dataset_json = _folders(tmp_path)
    (pred / "b.nii.gz").unlink()
    with pytest.raises(UserInputError, match=r"have no prediction .*\['b.nii.gz'\].*--chill"):
        evaluate_folder(ref, pred, dataset_json)
    chill = evaluate_folder(ref, pred, dataset_json, num_processes=1, chill=True)
    assert [c["prediction_file"] for c in chill["metric_per_case"]] == [str(pred / "a.nii.gz")]
    _write(pred, "b.nii.gz", np.zeros((20, 20, 19)))
    with pytest.raises(UserInputError, match=r"Case 'b.nii.gz': prediction shape \(20, 20, 19\) differs"):
        evaluate_folder(ref, pred, dataset_json, num_processes=1)
    _write(pred, "c.nii.gz", np.zeros(SHAPE))
    with pytest.raises(UserInputError, match=r"\['c.nii.gz'\] have no reference"):
        evaluate_folder(ref, pred, dataset_json)
    assert main(["evaluate", str(ref), str(pred), "-djfile", str(tmp_path / "missing.json")]) == 2
    assert "-djfile" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nope"), str(pred), "-djfile", str(dataset_json)]) == 2
    assert "reference folder" in capsys.readouterr().err


def test_foreground_mean_leaves_out_a_class_that_is_nan_in_every_case(tmp_path):
    """No vein in any case: the vein's Dice, clDice and HD95 are NaN everywhere; foreground_mean is the artery's."""
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    _write(ref, "a.nii.gz", _rod(5, 5) * 1)
    _write(pred, "a.nii.gz", _rod(5, 7) * 1)  # 3 mm off: Dice 0, HD95 3
    _write(ref, "b.nii.gz", _rod(5, 5) * 1)
    _write(pred, "b.nii.gz", _rod(5, 5) * 1)
    dataset_json = tmp_path / "dataset.json"
    meta = {"labels": {"background": 0, "artery": 1, "vein": 2}, "file_ending": ".nii.gz", "channel_names": {"0": "CT"}}
    dataset_json.write_text(json.dumps(meta))
    summary = evaluate_folder(ref, pred, dataset_json, num_processes=1)
    assert all(math.isnan(summary["mean"]["2"][m]) for m in ("Dice", "clDice", "HD95"))
    for metric, artery in (("Dice", 0.5), ("clDice", 0.5), ("HD95", 1.5), ("Betti1_error", 0.0)):
        assert summary["foreground_mean"][metric] == pytest.approx(artery), metric
    assert "left out" in summary["conventions"]["foreground_mean"]


def test_betti_numbers_of_a_donut_a_hollow_cube_and_a_2d_ring():
    from nnunet_fm.mask_metrics import betti1_error, betti_numbers

    donut = np.zeros((5, 7, 7), bool)
    donut[1:4, 1:6, 1:6] = True
    donut[1:4, 2:5, 2:5] = False  # a tube along axis 0: one loop
    hollow = np.zeros((6, 6, 6), bool)
    hollow[1:5, 1:5, 1:5] = True
    hollow[2:4, 2:4, 2:4] = False  # one cavity, no loop
    ring = np.ones((5, 5), bool)
    ring[2, 2] = False
    assert betti_numbers(donut) == (1, 1, 0)
    assert betti_numbers(hollow) == (1, 0, 1)
    assert betti_numbers(ring) == (1, 1, 0)
    assert betti_numbers(np.zeros((4, 4, 4), bool)) == (0, 0, 0)
    assert betti1_error(hollow, donut) == 1 and betti1_error(donut, donut) == 0


@pytest.mark.parametrize("conventions", ["nnunet", "topcow"])
def test_overlap_metrics_equal_nnunet_compute_metrics_with_an_ignore_label(tmp_path, conventions):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_fm.evaluate_command import case_metrics

    reference = _rod(5, 5) * 1 + _rod(14, 14) * 2
    reference[3:6, 5, 5] = 3  # the ignore label over part of the artery
    prediction = _rod(5, 6) * 1 + _rod(14, 14) * 2
    _write(tmp_path, "ref.nii.gz", reference)
    _write(tmp_path, "pred.nii.gz", prediction)
    files = (str(tmp_path / "ref.nii.gz"), str(tmp_path / "pred.nii.gz"), SimpleITKIO())
    ours = case_metrics(*files, [1, 2], 3, conventions)
    stock = compute_metrics(*files, [1, 2], 3)
    for label in (1, 2):
        expected = {k: float(v) for k, v in stock["metrics"][label].items()}
        assert {k: float(ours["metrics"][label][k]) for k in expected} == expected
