"""``nnunet-fm evaluate --conventions topcow`` against every expected value of TopCoW's metric tests.

The arrays are those of ``CoWBenchmark/TopCoW_Eval_Metrics`` ``test_assets/seg_metrics/{2D,3D}`` and of its tests
``topcow24_eval/metrics/seg_metrics/test_clDice.py``, ``test_cls_avg_b0.py`` and ``test_cls_avg_hd95.py``, built
here in code; the expected numbers are that suite's. Arrays are written in SimpleITK's (z, y, x) array order.
"""

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_fm.cli import main

HD_TOL = 1e-4  # mm; TopCoW's distances are float32


def grid(text: str) -> np.ndarray:
    """A 2D int array from rows of whitespace-separated numbers."""
    return np.array([[int(v) for v in row.split()] for row in text.strip().splitlines()], dtype=np.uint8)


def slice3d(text: str) -> np.ndarray:
    """A one-slice volume (1, y, x): TopCoW's '2D' assets are 3D images of depth 1."""
    return grid(text)[None]


def evaluate(tmp_path, cases: dict, conventions: str = "topcow", two_d: bool = False) -> dict:
    """Write ``cases`` {name: (reference, prediction, spacing_xyz)} and score them; {name: case entry} + summary."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir(exist_ok=True)
    pred_dir.mkdir(exist_ok=True)
    labels = set()
    for name, (ref, pred, spacing) in cases.items():
        for folder, array in ((ref_dir, ref), (pred_dir, pred)):
            image = sitk.GetImageFromArray(np.asarray(array, np.uint8))
            image.SetSpacing(spacing)
            sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))
        labels |= set(np.unique(ref).tolist()) | set(np.unique(pred).tolist())
    meta = {
        "labels": {"background": 0, **{f"label{v}": v for v in sorted(labels - {0}) or [1]}},
        "file_ending": ".nii.gz",
        "channel_names": {"0": "CT"},
    }
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    out = tmp_path / "summary.json"
    argv = ["evaluate", str(ref_dir), str(pred_dir), "-djfile", str(tmp_path / "dataset.json"), "-np", "1"]
    assert main([*argv, "-o", str(out), "--conventions", conventions]) == 0
    summary = json.loads(out.read_text())
    per_case = {c["prediction_file"].rsplit("/", 1)[-1][: -len(".nii.gz")]: c for c in summary["metric_per_case"]}
    return {"summary": summary, **per_case}


# ----------------------------------------------------------------------------------------------------- clDice
T_GT = """
0 0 0 1 1
0 0 0 1 1
1 1 1 1 1
1 1 1 1 1
0 0 0 0 0
"""
T_PRED = """
0 0 0 0 0
0 0 0 0 0
0 0 0 0 0
1 1 1 1 1
0 0 0 0 0
"""
T_GT_MULTI = """
0 0 0 6 6
0 0 0 1 6
2 3 1 5 1
2 1 2 5 5
0 0 0 0 0
"""
T_PRED_MULTI = """
0 0 0 0 0
0 0 0 0 0
0 0 0 0 0
5 1 5 1 5
0 0 0 0 0
"""
ELONG_GT = """
0 1 1 1 1 0
1 1 1 1 1 1
0 1 1 1 1 0
"""
ELONG_PRED = """
0 0 0 0 0 0
1 1 1 1 1 1
0 0 0 0 0 0
"""
FIG51_GT = """
0 6 6 6 6 0
0 6 6 0 0 0
0 6 6 0 0 0
"""
FIG51_PRED_1 = """
0 6 6 6 0 0
0 6 6 0 0 0
0 6 6 0 0 0
"""
FIG51_PRED_2 = """
0 6 6 0 0 0
0 6 6 0 0 0
0 6 6 0 0 0
"""
UNIT = (1.0, 1.0, 1.0)


def test_cldice_cases_of_topcow(tmp_path):
    cases = {
        "elong": (slice3d(ELONG_GT), slice3d(ELONG_PRED), UNIT),
        "tshape": (slice3d(T_GT), slice3d(T_PRED), UNIT),
        "tshape_multiclass": (slice3d(T_GT_MULTI), slice3d(T_PRED_MULTI), UNIT),
        "fig51_1": (slice3d(FIG51_GT), slice3d(FIG51_PRED_1), UNIT),
        "fig51_2": (slice3d(FIG51_GT), slice3d(FIG51_PRED_2), UNIT),
    }
    result = evaluate(tmp_path, cases)
    elong = result["elong"]["binary"]
    assert (elong["clDice_tprec"], elong["clDice_tsens"], elong["clDice"]) == (6 / 6, 4 / 4, 1)
    for name in ("tshape", "tshape_multiclass"):  # the multiclass T merges to the same binary masks
        tshape = result[name]["binary"]
        assert (tshape["clDice_tprec"], tshape["clDice_tsens"]) == (5 / 5, 3 / 4)
        assert tshape["clDice"] == pytest.approx((3 / 2) / (7 / 4), abs=1e-12)  # 0.857143
    assert result["fig51_1"]["binary"]["clDice"] == pytest.approx(0.8571428571428571, abs=1e-12)
    assert result["fig51_2"]["binary"]["clDice"] == pytest.approx(0.6666666666666666, abs=1e-12)
    assert all("clDice" not in entry for entry in result["tshape_multiclass"]["metrics"].values())  # binary only


def test_cldice_of_the_skimage_ellipse_in_2d(tmp_path):
    x, y = np.ogrid[0:9, 0:9]
    ellipse = (1.0 / 3 * (x - 4) ** 2 + (y - 4) ** 2 < 3**2).astype(np.uint8)  # TopCoW's array, indexed [x, y]
    v_rod, h_rod = np.zeros((9, 9), np.uint8), np.zeros((9, 9), np.uint8)
    v_rod[:, 4], h_rod[4, :] = 1, 1
    cases = {  # 2D images; SimpleITK's array is [y, x], the transpose of TopCoW's [x, y]
        "vertical": (v_rod.T, ellipse.T, (1.0, 1.0)),
        "horizontal": (h_rod.T, ellipse.T, (1.0, 1.0)),
    }
    result = evaluate(tmp_path, cases)
    vertical, horizontal = result["vertical"]["binary"], result["horizontal"]["binary"]
    assert (vertical["clDice_tprec"], vertical["clDice_tsens"]) == (4 / 4, 9 / 9)
    assert (horizontal["clDice_tprec"], horizontal["clDice_tsens"]) == (1 / 4, 5 / 9)
    assert horizontal["clDice"] == pytest.approx(2 * (1 / 4) * (5 / 9) / (1 / 4 + 5 / 9))


@pytest.mark.parametrize("conventions", ["nnunet", "topcow"])
def test_tshape_thinning_follows_the_reference_axis_order_in_both_modes(tmp_path, conventions):
    result = evaluate(tmp_path, {"tshape": (slice3d(T_GT), slice3d(T_PRED), UNIT)}, conventions)
    assert result["tshape"]["binary"]["clDice"] == pytest.approx(0.857143, abs=1e-6)  # (z, y, x) thinning: 0.75


# --------------------------------------------------------------------------------------------------- Betti-0
def _b0(entry: dict) -> dict:
    return {k: v["Betti0_error"] for k, v in entry["metrics"].items() if not math.isnan(v["Betti0_error"])}


def _cube_with_tunnels() -> np.ndarray:
    """scikit-image's Euler-number example cube (7^3, two tunnels and two holes), inverted: three components."""
    n, c = 7, 3
    cube = np.ones((n, n, n), dtype=bool)
    cube[c, :, c] = False
    cube[int(3 * n / 4), c - 1, c - 1] = False
    cube[int(3 * n / 4), c, c] = False
    cube[:, c, int(3 * n / 4)] = False
    return (~cube).astype(np.uint8)


TWO_ISLANDS = np.array([[[1, 0, 0], [1, 0, 1], [1, 0, 0], [1, 0, 0]], [[0, 0, 1], [1, 0, 1], [1, 0, 0], [1, 0, 0]]])
TWO_ISLANDS_MULTI = np.array(
    [[[1, 0, 0], [1, 0, 2], [1, 0, 0], [1, 0, 0]], [[0, 0, 1], [2, 0, 2], [2, 0, 0], [2, 0, 0]]]
)
CROSS = np.array([[[0, 1, 0], [0, 1, 0], [1, 0, 1], [0, 1, 0]], [[0, 1, 0], [1, 0, 1], [1, 0, 1], [0, 1, 0]]])


def _donut(right_label: int = 1) -> np.ndarray:
    """5x7x9 (x, y, z) volume: a 3x4 ring on slices z = 2..4 (30 voxels); its right column may carry another label."""
    ring = grid("0 0 0 0 0\n0 0 0 0 0\n0 1 1 1 0\n0 1 0 1 0\n0 1 0 1 0\n0 1 1 1 0\n0 0 0 0 0")
    ring[2:6, 3] *= right_label
    volume = np.zeros((9, 7, 5), np.uint8)
    volume[2:5] = ring
    return volume


def _eight_cubes(prediction: bool) -> np.ndarray:
    """8x8x8 volume of eight 4^3 cubes labelled 1..8; the prediction's 4 is missing, 2 hollow, 6 and 8 donuts."""
    volume = np.zeros((8, 8, 8), np.uint8)
    for label in range(1, 9):
        z, y, x = (label - 1) // 4, (label - 1) // 2 % 2, (label - 1) % 2
        volume[4 * z : 4 * z + 4, 4 * y : 4 * y + 4, 4 * x : 4 * x + 4] = label
    if prediction:
        volume[volume == 4] = 0
        volume[1:3, 1:3, 5:7] = 0  # label 2: a closed 2x2x2 cavity
        volume[4:8, 1:3, 5:7] = 0  # label 6: a tunnel through z
        volume[4:8, 5:7, 5:7] = 0  # label 8: a tunnel through z
    return volume


def test_betti0_cases_of_topcow(tmp_path):
    diagonal, diagonal_123 = np.zeros((3, 3, 3), np.uint8), np.zeros((3, 3, 3), np.uint8)
    for i in range(3):
        diagonal[i, i, i], diagonal_123[i, i, i] = 1, i + 1
    blank_gt, blank_pred = np.zeros((3, 3, 3), np.uint8), np.zeros((3, 3, 3), np.uint8)
    blank_pred[0] = 7  # SimpleITK index [:, :, 0]
    blank_gt[1, 0, 2] = blank_gt[1, 2, 0] = 8  # SimpleITK indices [2, 0, 1] and [0, 2, 1]
    empty = np.zeros((1, 3, 6), np.uint8)
    cases = {
        "diagonal": (diagonal, diagonal_123, UNIT),
        "blank_slices": (blank_gt, blank_pred, UNIT),
        "rgb": (slice3d("0 0 3 2 1\n" * 5), slice3d("4 0 3 0 1\n" * 5), UNIT),
        "single_blob": (np.ones((2, 2, 2)), np.array([[[0, 1], [1, 1]], [[1, 1], [1, 1]]]), UNIT),
        "two_islands": (TWO_ISLANDS, TWO_ISLANDS_MULTI, UNIT),
        "donut": (_donut(), _donut(right_label=6), UNIT),
        "eight_cubes": (_eight_cubes(False), _eight_cubes(True), UNIT),
        "no_labels": (empty, empty, UNIT),
        "blank_gt": (empty, slice3d(ELONG_PRED), UNIT),
    }
    result = evaluate(tmp_path, cases)
    assert _b0(result["diagonal"]) == {"1": 0, "2": 1, "3": 1}
    assert _b0(result["blank_slices"]) == {"7": 1, "8": 2}
    expected = {  # {label: B0err}, ClsAvgB0err, MergedBin
        "rgb": ({"1": 0, "2": 1, "3": 0, "4": 1}, 0.5, 2),
        "single_blob": ({"1": 0}, 0.0, 0),
        "two_islands": ({"1": 0, "2": 2}, 1, 0),
        "donut": ({"1": 0, "6": 1}, 1 / 2, 0),
        "eight_cubes": ({"1": 0, "2": 0, "3": 0, "4": 1, "5": 0, "6": 0, "7": 0, "8": 0}, 1 / 8, 0),
        "no_labels": ({}, 0, 0),
        "blank_gt": ({"1": 1}, 1, 1),
    }
    for name, (per_label, class_average, merged) in expected.items():
        assert _b0(result[name]) == per_label, name
        assert result[name]["class_average"]["Betti0_error"] == pytest.approx(class_average), name
        assert result[name]["binary"]["Betti0_error"] == merged, name


def test_betti0_counts_of_topcow_shapes(tmp_path):
    """TopCoW's component counts (and sizes, as n_pred) of single masks, scored against an empty reference."""
    padded_islands, padded_cross = np.zeros((4, 6, 5), np.uint8), np.zeros((4, 6, 5), np.uint8)
    padded_islands[1:3, 1:5, 1:4], padded_cross[1:3, 1:5, 1:4] = TWO_ISLANDS, CROSS
    shapes = {  # name: (mask, b0, voxels)
        "zeros": (np.zeros((42, 42, 42), np.uint8), 0, 0),
        "ones": (np.ones((42, 42, 42), np.uint8), 1, 42**3),
        "skimage_cube": (_cube_with_tunnels(), 3, 2 + 7 + 7),
        "two_islands": (TWO_ISLANDS, 2, 3 + 7),
        "two_islands_padded": (padded_islands, 2, 3 + 7),
        "donut": (_donut(), 1, 10 * 3),
        "cross": (CROSS, 1, 6 + 5),
        "cross_padded": (padded_cross, 1, 6 + 5),
    }
    cases = {name: (np.zeros_like(mask), mask, UNIT) for name, (mask, _, _) in shapes.items()}
    result = evaluate(tmp_path, cases)
    for name, (_, b0, voxels) in shapes.items():
        assert result[name]["binary"]["Betti0_error"] == b0, name
        assert result[name]["binary"]["n_pred"] == voxels, name


def test_betti1_errors_per_label_and_merged(tmp_path):
    result = evaluate(tmp_path, {"eight_cubes": (_eight_cubes(False), _eight_cubes(True), UNIT)})
    betti1 = {k: v["Betti1_error"] for k, v in result["eight_cubes"]["metrics"].items()}
    # hollow label 2 has a cavity but no loop; donuts 6 and 8 have one loop each; the merge has one loop
    assert betti1 == {"1": 0, "2": 0, "3": 0, "4": 0, "5": 0, "6": 1, "7": 0, "8": 1}
    assert result["eight_cubes"]["binary"]["Betti1_error"] == 1
    assert result["eight_cubes"]["class_average"]["Betti1_error"] == pytest.approx(2 / 8)


# ------------------------------------------------------------------------------------------------------ HD95
FIG63_GT = np.zeros((14, 14), np.uint8)
FIG63_GT[2:5, 2:5], FIG63_GT[12, 12] = 1, 1
FIG63_PRED = np.zeros((14, 14), np.uint8)
FIG63_PRED[2:5, 2:5] = 1
FIG10_GT = np.zeros((11, 11), np.uint8)
FIG10_GT[3:8, 3:8] = 1
FIG10_PRED = FIG10_GT.copy()
FIG10_PRED[1:3, 5] = FIG10_PRED[8:10, 5] = FIG10_PRED[5, 1:3] = FIG10_PRED[5, 8:10] = 1
FIG50_GT = np.zeros((11, 11), np.uint8)
FIG50_GT[3:10, 6:10], FIG50_GT[7:10, 3:6] = 1, 1
FIG50_PRED_1, FIG50_PRED_2 = FIG50_GT.copy(), FIG50_GT.copy()
FIG50_PRED_1[3, 9] = 0
FIG50_PRED_2[3:5, 9] = 0
FIG59_GT = np.zeros((11, 11), np.uint8)
FIG59_GT[3:10, 3:10] = 1
FIG59_PRED_1, FIG59_PRED_2 = FIG59_GT.copy(), FIG59_GT.copy()
FIG59_PRED_1[5:8, 5:8] = 0
FIG59_PRED_2[4:9, 4:9] = 0


def _itk_tutorial() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The SimpleITK notebook's filled circle and its two tori (64x64, radius 20)."""

    def gauss(threshold: int) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.GaussianSource(sitk.sitkUInt8, [64, 64], [20, 20], [30, 30]) > threshold)

    seg = gauss(200)
    return seg, seg & ~gauss(240), seg & ~gauss(250)


def _hd(entry: dict, label: str) -> tuple[float, float]:
    values = entry["binary"] if label == "MergedBin" else entry["metrics"][label]
    return values["HD95"], values["HD"]


def test_hd95_2d_cases_of_topcow(tmp_path):
    seg, torus_1, torus_2 = _itk_tutorial()
    two_d = (1.0, 1.0)
    cases = {
        "fig63": (FIG63_GT, FIG63_PRED, two_d),
        "fig10": (FIG10_GT, FIG10_PRED, two_d),
        "fig50_1": (FIG50_GT, FIG50_PRED_1, two_d),
        "fig50_2": (FIG50_GT, FIG50_PRED_2, two_d),
        "fig59_1": (FIG59_GT, FIG59_PRED_1, two_d),
        "fig59_2": (FIG59_GT, FIG59_PRED_2, two_d),
        "itk_1": (torus_1, seg, two_d),
        "itk_2": (torus_2, seg, two_d),
    }
    result = evaluate(tmp_path, cases)
    hd95, hd = _hd(result["fig63"], "1")
    assert (round(hd, 2), round(hd95, 2)) == (11.31, 6.79)
    assert _hd(result["fig10"], "1") == pytest.approx((2.0, 2.0), abs=HD_TOL)
    assert _hd(result["fig50_1"], "1") == pytest.approx((0.0, 1.0), abs=HD_TOL)
    hd95, hd = _hd(result["fig50_2"], "1")
    assert hd95 // 0.1 / 10 == 0.8 and hd == pytest.approx(1.0, abs=HD_TOL)  # 0.8499..., rounded down
    assert _hd(result["fig59_1"], "1") == pytest.approx((1.0, 1.0), abs=HD_TOL)
    assert _hd(result["fig59_2"], "1") == pytest.approx((0.0, 0.0), abs=HD_TOL)
    assert _hd(result["itk_1"], "1")[1] == pytest.approx(6.0, abs=HD_TOL)
    assert _hd(result["itk_2"], "1")[1] == pytest.approx(8.9442720413208, abs=HD_TOL)


def _fig54(prediction: bool) -> np.ndarray:
    """11x11x5 volume: slice z holds label z + 1; the reference a 5x4 block, the prediction five variations."""
    volume = np.zeros((5, 11, 11), np.uint8)
    if not prediction:
        volume[:, 3:7, 3:8] = np.arange(1, 6)[:, None, None]
        return volume
    volume[0, 4:8, 4:9] = 1
    volume[1, 4:7, 4:9] = 2
    volume[1, 9, 1:6] = 2
    volume[2] = 3 * grid(
        """
        0 0 0 0 0 0 0 0 0 0 0
        0 0 0 0 0 1 0 0 0 0 0
        0 0 0 0 1 1 1 0 0 0 0
        0 0 0 0 1 1 1 0 0 0 0
        0 0 1 0 1 1 1 1 1 1 0
        0 1 1 1 1 1 1 1 1 0 0
        0 0 0 0 1 1 1 0 0 0 0
        0 0 0 0 1 1 1 0 0 0 0
        0 0 0 0 0 1 0 0 0 0 0
        0 0 0 0 0 1 0 0 0 0 0
        0 0 0 0 0 0 0 0 0 0 0
        """
    )
    volume[3, 3, 5] = 4
    volume[3, 4:6, 4:7] = 4
    volume[3, 6, 4] = volume[3, 6, 6] = volume[3, 7, 6] = 4
    volume[4, 2:7, 4:6] = 5
    volume[4, 5:7, 6:9] = 5
    volume[4, 7, 5:9] = 5
    return volume


def test_hd95_3d_cases_of_topcow(tmp_path):
    spacing_gt = np.zeros((3, 3, 3), np.uint8)  # SimpleITK [x, y, z] -> array [z, y, x]
    spacing_pred = np.zeros((3, 3, 3), np.uint8)
    spacing_gt[0, 0, 2], spacing_pred[0, 0, 0] = 1, 1
    spacing_gt[0, 1, 0], spacing_pred[0, 0, 1] = 2, 2
    spacing_gt[1], spacing_pred[2] = 3, 3
    nipy_gt = np.array(  # 2x3x4 (x, y, z) at spacing (1, 2, 3)
        [[[0, 0], [0, 2], [0, 0]], [[0, 0], [0, 2], [0, 3]], [[1, 1], [0, 2], [0, 0]], [[1, 1], [0, 0], [1, 0]]]
    )
    nipy_pred = np.array(
        [[[0, 0], [3, 0], [2, 3]], [[0, 0], [0, 0], [2, 0]], [[1, 1], [0, 0], [2, 0]], [[1, 1], [0, 0], [0, 0]]]
    )
    cases = {
        "fig50_small": (
            np.array([[[0, 10], [10, 10]], [[0, 15], [15, 15]]]),
            np.array([[[0, 0], [10, 10]], [[0, 0], [0, 15]]]),
            UNIT,
        ),
        "fig54": (_fig54(False), _fig54(True), UNIT),
        "spacing": (spacing_gt, spacing_pred, (3.0, 4.0, 5.0)),
        "nipy": (nipy_gt, nipy_pred, (1.0, 2.0, 3.0)),
        "filled": (np.full((2, 2, 2), 15), np.full((2, 2, 2), 15), UNIT),
        "one_sided": (np.array([[[0, 10], [10, 10]]]), np.array([[[0, 15], [15, 15]]]), UNIT),
    }
    result = evaluate(tmp_path, cases)
    small = result["fig50_small"]
    assert _hd(small, "10")[0] // 0.1 / 10 == 0.8 and _hd(small, "10")[1] == pytest.approx(1.0, abs=HD_TOL)
    assert _hd(small, "15") == pytest.approx((1.0, 1.0), abs=HD_TOL)
    expected = {
        "fig54": {
            "1": (1.0207106769084933, 1.4142135381698608),
            "2": (3.184441375732422, 3.605551242828369),
            "3": (2.0, 3.0),
            "4": (1.4142135381698608, 1.4142135381698608),
            "5": (1.0500000000000007, 2.0),
            "ClsAvg": (1.7338731181621554, 2.286795663833618),
            "MergedBin": (3.0, 3.605551242828369),
        },
        "spacing": {"1": (6.0, 6.0), "2": (5.0, 5.0), "3": (5.0, 5.0)},
        "nipy": {
            "1": (3.1999999999999993, 4.0),
            "2": (2.2360680103302, 2.2360680103302),
            "3": (3.7045746207237245, 3.7416574954986572),
            "ClsAvg": (3.0468808770179745, 3.3259085019429526),
            "MergedBin": (2.69442720413208, 3.0),
        },
        "filled": {"15": (0.0, 0.0), "ClsAvg": (0.0, 0.0), "MergedBin": (0.0, 0.0)},
        "one_sided": {"10": (90.0, 90.0), "15": (90.0, 90.0)},  # TopCoW's HD95_UPPER_BOUND for FP / FN
    }
    for name, values in expected.items():
        for label, (hd95, hd) in values.items():
            if label == "ClsAvg":
                got = (result[name]["class_average"]["HD95"], result[name]["class_average"]["HD"])
            else:
                got = _hd(result[name], label)
            assert got == pytest.approx((hd95, hd), abs=HD_TOL), (name, label)
    fig54 = result["fig54"]["metrics"]
    assert (round(fig54["1"]["HD"] // 0.1 / 10, 1), fig54["1"]["HD95"] // 0.01 / 100) == (1.4, 1.02)
    assert (fig54["2"]["HD"] // 0.1 / 10, fig54["2"]["HD95"] // 0.1 / 10) == (3.6, 3.1)
    assert (fig54["4"]["HD"] // 0.1 / 10, fig54["4"]["HD95"] // 0.1 / 10) == (1.4, 1.4)
    assert fig54["5"]["HD95"] // 0.01 / 100 == 1.05
    nipy = result["nipy"]["metrics"]
    assert (round(nipy["1"]["HD95"], 1), round(nipy["2"]["HD95"], 3), round(nipy["3"]["HD95"], 2)) == (3.2, 2.236, 3.7)
    assert (round(nipy["2"]["HD"], 3), round(nipy["3"]["HD"], 3)) == (2.236, 3.742)


# ------------------------------------------------------------------------------------------------ summary.json
def test_topcow_summary_layout_and_class_averages(tmp_path):
    from nnunetv2.evaluation.evaluate_predictions import load_summary_json

    cases = {
        "rgb": (slice3d("0 0 3 2 1\n" * 5), slice3d("4 0 3 0 1\n" * 5), UNIT),
        "only_one": (slice3d("1 1 0 0 0\n" * 5), slice3d("1 1 0 0 0\n" * 5), UNIT),
    }
    result = evaluate(tmp_path, cases)
    summary = result["summary"]
    assert set(summary) == {"metric_per_case", "mean", "foreground_mean", "binary", "class_average", "conventions"}
    assert summary["conventions"]["name"] == "topcow" and "90" in summary["conventions"]["HD95"]
    rgb = result["rgb"]
    assert [rgb["metrics"][k]["Dice"] for k in ("1", "2", "3", "4")] == [1.0, 0.0, 1.0, 0.0]  # missing side: 0
    assert rgb["class_average"]["Dice"] == pytest.approx(0.5) and rgb["class_average"]["HD95"] == pytest.approx(45)
    only_one = result["only_one"]
    assert math.isnan(only_one["metrics"]["2"]["Dice"]) and math.isnan(only_one["metrics"]["2"]["HD95"])
    assert only_one["class_average"] == {"Dice": 1.0, "Betti0_error": 0.0, "Betti1_error": 0.0, "HD95": 0.0, "HD": 0.0}
    assert summary["class_average"]["Dice"] == pytest.approx((0.5 + 1.0) / 2)
    assert summary["mean"]["2"]["Dice"] == 0.0  # the case without label 2 is left out
    assert summary["mean"]["1"]["HD95"] == 0.0 and summary["mean"]["4"]["HD95"] == 90.0
    assert load_summary_json(str(tmp_path / "summary.json"))["mean"][1]["Dice"] == 1.0  # nnU-Net reads it back


def test_unknown_conventions_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tmp_path), str(tmp_path), "-djfile", "x.json", "--conventions", "brats"])
    assert exit_info.value.code == 2 and "invalid choice: 'brats'" in capsys.readouterr().err
