"""TopCoW conventions for ``nnunet-fm evaluate --conventions topcow``: the vessel metrics as the TopCoW challenge.

The reference is ``CoWBenchmark/TopCoW_Eval_Metrics`` (``topcow24_eval/``, commit 25ca839); file:line below point
into ``topcow24_eval/metrics/seg_metrics/`` there.

* Classes scored in a case: those present in the reference or the prediction (``generate_cls_avg_dict.py:76``);
  a class absent from both is NaN (left out of every mean). ``class_average`` of a case: the mean over the scored
  classes (``generate_cls_avg_dict.py:116-146``); a case with no foreground at all scores 0 for the class average
  and for ``binary`` (``generate_cls_avg_dict.py:87-109``).
* Dice: 0 when the class is missing on either side (``cls_avg_dice.py:37-40``), else 2|A∩B| / (|A| + |B|).
* Betti0_error: |b0(pred) - b0(ref)|, 26-connected components (``cls_avg_b0.py:49-60, 100-115``).
* HD95 / HD (mm): masks padded by one voxel (``cls_avg_hd95.py:87-88``); surface = ``sitk.LabelContour``
  (fullyConnected=True), distances = |``SignedMaurerDistanceMap``| of the other mask's surface with the image
  spacing, float32 (``cls_avg_hd95.py:204-218``); the distances of each surface's voxels to the other surface form
  two directed sets; HD95 = the larger of their 95th percentiles, HD = the larger maximum
  (``cls_avg_hd95.py:162-173``); 90 mm for both when either mask is empty (``cls_avg_hd95.py:107-109``,
  ``constants.py:44``).
* clDice only on the binary-merged masks (``clDice.py:42-43``); an empty skeleton scores 0 (``clDice.py:23-24``)
  and so does tprec + tsens = 0 (``clDice.py:57-58``); skeletons in (x, y, z) order.
* Betti1_error (TopCoW 2023 also scored b1; not in the 2024 code): as in the ``nnunet`` conventions.

2D images (nnU-Net's single-slice reading of a 2D file) are scored in 2D, as TopCoW's tests do after
``sitk.Extract``: 2D contours and distances, 8-connected components, 2D thinning.
"""

from __future__ import annotations

import numpy as np

from nnunet_fm.mask_metrics import (
    FOREGROUND_MEAN_RULE,
    betti_numbers,
    binary_region,
    bounding_box,
    cl_dice_parts,
    class_mask,
    class_overlap,
    plain_classes,
    read_case,
)

#: HD95 and HD of a class present on one side only (TopCoW's ``HD95_UPPER_BOUND``, in mm)
HD95_UPPER_BOUND = 90.0
#: metrics averaged over the classes present in a case (TopCoW's ``ClsAvg*``)
AVERAGED = ("Dice", "Betti0_error", "Betti1_error", "HD95", "HD")
CONVENTIONS = {
    "name": "topcow",
    "reference": "CoWBenchmark/TopCoW_Eval_Metrics, topcow24_eval/metrics/seg_metrics (commit 25ca839)",
    "classes": "a class is scored in a case when present in the reference or the prediction; absent from both: "
    "NaN (left out of means)",
    "Dice": "0 when the class is missing from the reference or the prediction, else 2|A∩B|/(|A|+|B|)",
    "clDice": "binary-merged masks only (no per-class clDice); an empty skeleton scores 0, so does "
    "tprec + tsens = 0; skeletons thinned in (x, y, z) axis order",
    "Betti0_error": "|b0(prediction) - b0(reference)|, 26-connected components",
    "Betti1_error": "|b1(prediction) - b1(reference)|, b1 = b0 + b2 - Euler characteristic (26-connected "
    "foreground, 6-connected background, one voxel of zero padding)",
    "HD95": "mm; surfaces by sitk.LabelContour(fullyConnected=True), distances by |SignedMaurerDistanceMap| "
    "(image spacing, float32) after one voxel of padding; max of the 95th percentiles of the two directed "
    "distance sets; 90 when either mask is empty",
    "HD": "as HD95 with the maxima (100th percentiles); 90 when either mask is empty",
    "class_average": "per case: Dice, Betti0_error, Betti1_error, HD95 and HD averaged over the scored classes; "
    "0 for a case with no foreground in reference and prediction",
    "binary": "all foreground labels merged into one class; every metric 0 when both merged masks are empty",
    "2D": "2D images are scored in 2D (2D contours and distances, 8-connectivity, 2D thinning)",
    "ignore_label": "voxels with the ignore label in the reference are removed from both masks (TopCoW has none)",
    "means": "per class, binary and class_average: np.nanmean over cases",
    "foreground_mean": FOREGROUND_MEAN_RULE,
}


def _contour_and_distance(mask: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """TopCoW's surface of a mask (boolean array) and the float32 distance (mm) of every voxel to that surface."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))  # SimpleITK's axes are the array's reversed
    surface = sitk.LabelContour(image, fullyConnected=True)
    distance = sitk.Abs(sitk.SignedMaurerDistanceMap(surface, squaredDistance=False, useImageSpacing=True))
    return sitk.GetArrayFromImage(surface) > 0, sitk.GetArrayFromImage(distance)


def hausdorff(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, float]:
    """(HD95, HD) in mm under TopCoW's rules; both 90 when either mask is empty.

    Computed on the masks' joint bounding box padded by one voxel of background, which leaves every contour
    and distance as on TopCoW's padded full image.
    """
    ref, pred = np.asarray(mask_ref, bool), np.asarray(mask_pred, bool)
    if not ref.any() or not pred.any():
        return HD95_UPPER_BOUND, HD95_UPPER_BOUND
    box = bounding_box(ref, pred, margin=0)
    ref, pred = np.pad(ref[box], 1), np.pad(pred[box], 1)
    surface_ref, distance_ref = _contour_and_distance(ref, spacing)
    surface_pred, distance_pred = _contour_and_distance(pred, spacing)
    ref_to_pred = distance_pred[surface_ref].astype(np.float64)
    pred_to_ref = distance_ref[surface_pred].astype(np.float64)
    hd95 = max(np.percentile(ref_to_pred, 95), np.percentile(pred_to_ref, 95))
    return float(hd95), float(max(ref_to_pred.max(), pred_to_ref.max()))


def topcow_class_metrics(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: tuple[float, ...], n_kept: int) -> dict:
    """nnU-Net's overlap entries with TopCoW's Dice, plus Betti0_error, Betti1_error, HD95 and HD of one class."""
    entry = class_overlap(mask_ref, mask_pred, n_kept)
    if not mask_ref.any() and not mask_pred.any():
        entry.update({m: float("nan") for m in ("Betti0_error", "Betti1_error", "HD95", "HD")})
        return entry
    b_ref, b_pred = betti_numbers(mask_ref), betti_numbers(mask_pred)
    entry["Betti0_error"] = abs(b_pred[0] - b_ref[0])
    entry["Betti1_error"] = abs(b_pred[1] - b_ref[1])
    entry["HD95"], entry["HD"] = hausdorff(mask_ref, mask_pred, spacing)
    return entry


def topcow_case_metrics(
    reference_file: str,
    prediction_file: str,
    image_reader_writer,
    labels_or_regions: list,
    ignore_label: int | None = None,
) -> dict:
    """One case under TopCoW's rules: per class ``metrics``, ``binary`` (with clDice) and ``class_average``."""
    seg_ref, seg_pred, keep, spacing, _ = read_case(reference_file, prediction_file, image_reader_writer, ignore_label)
    labels_or_regions = plain_classes(labels_or_regions)
    n_kept = int(keep.sum()) if keep is not None else seg_ref.size
    result: dict = {"reference_file": reference_file, "prediction_file": prediction_file, "metrics": {}}
    present = []
    for r in labels_or_regions:
        ref, pred = class_mask(seg_ref, r), class_mask(seg_pred, r)
        if keep is not None:
            ref, pred = ref & keep, pred & keep
        result["metrics"][r] = topcow_class_metrics(ref, pred, spacing, n_kept)
        if ref.any() or pred.any():
            present.append(result["metrics"][r])
    result["class_average"] = {m: float(np.mean([p[m] for p in present])) if present else 0.0 for m in AVERAGED}

    binary = binary_region(labels_or_regions)
    ref, pred = class_mask(seg_ref, binary), class_mask(seg_pred, binary)
    if keep is not None:
        ref, pred = ref & keep, pred & keep
    merged = topcow_class_metrics(ref, pred, spacing, n_kept)
    merged["clDice"], merged["clDice_tprec"], merged["clDice_tsens"] = cl_dice_parts(ref, pred)
    if not ref.any() and not pred.any():  # TopCoW: a case without foreground scores 0 throughout
        merged.update({m: 0.0 for m in ("Dice", "Betti0_error", "Betti1_error", "HD95", "HD")})
    result["binary"] = merged
    return result
