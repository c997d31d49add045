"""Metrics of one reference/prediction mask pair and the case reading they share (no conventions here).

clDice (skeletons thinned in TopCoW's (x, y, z) axis order), Betti numbers and their errors, HD95 on
6-connected surfaces, nnU-Net's overlap counts, class masks and case reading. The conventions that combine them
live in :mod:`nnunet_fm.evaluate_command` (``nnunet``) and :mod:`nnunet_fm.topcow_metrics` (``topcow``).
"""

from __future__ import annotations

import os

import numpy as np
from scipy import ndimage

from nnunet_fm.errors import UserInputError

FOREGROUND_MEAN_RULE = (
    "foreground_mean: per metric, the mean of the class means that are defined; a class whose metric is NaN in "
    "every case is left out (NaN only when every class is); nnU-Net's plain mean would turn NaN"
)


def _structure(ndim: int, full: bool) -> np.ndarray:
    """26-connectivity (3x3x3 ones) when ``full``, else 6-connectivity (3D; 8 and 4 in 2D)."""
    return ndimage.generate_binary_structure(ndim, ndim if full else 1)


def bounding_box(*masks: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Bounding box of the union of ``masks`` grown by ``margin`` voxels (clipped to the array); None if empty."""
    union = np.logical_or.reduce(masks) if len(masks) > 1 else masks[0]
    box = []
    for axis in range(union.ndim):
        hits = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        if hits.size == 0:
            return None
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, union.shape[axis])))
    return tuple(box)


def skeleton(mask: np.ndarray) -> np.ndarray:
    """scikit-image skeleton of a boolean mask, thinned with the axes reversed ((z, y, x) arrays as (x, y, z)).

    Lee thinning (3D) visits voxels in array order, so its skeleton depends on the axis order; TopCoW's reference
    code (``topcow24_eval/utils/utils_nii_mha_sitk.py``, ``load_image_and_array_as_uint8``: ``transpose((2, 1, 0))``)
    thins SimpleITK images in (x, y, z) order, and so does this. 2D masks use scikit-image's 2D thinning.
    """
    from skimage.morphology import skeletonize

    mask = np.asarray(mask, bool)
    return skeletonize(mask.T).T


def _cl_score(skel: np.ndarray, volume: np.ndarray) -> float:
    """Share of the skeleton inside the volume; 0 for an empty skeleton."""
    n = int(skel.sum())
    return float((skel & volume).sum() / n) if n else 0.0


def cl_dice_parts(mask_ref: np.ndarray, mask_pred: np.ndarray) -> tuple[float, float, float]:
    """(clDice, topology precision, topology sensitivity) of two boolean masks; an empty skeleton scores 0."""
    ref, pred = np.asarray(mask_ref, bool), np.asarray(mask_pred, bool)
    box = bounding_box(ref, pred)
    if box is None:
        return 0.0, 0.0, 0.0
    ref, pred = ref[box], pred[box]
    tprec = _cl_score(skeleton(pred), ref) if pred.any() else 0.0
    tsens = _cl_score(skeleton(ref), pred) if ref.any() else 0.0
    cl = 2 * tprec * tsens / (tprec + tsens) if tprec + tsens > 0 else 0.0
    return float(cl), tprec, tsens


def cl_dice(mask_ref: np.ndarray, mask_pred: np.ndarray) -> float:
    """Centreline Dice of two boolean masks; NaN when both are empty, 0 when only one is."""
    ref, pred = np.asarray(mask_ref, bool), np.asarray(mask_pred, bool)
    if not ref.any() and not pred.any():
        return float("nan")
    return cl_dice_parts(ref, pred)[0]


def components(mask: np.ndarray) -> int:
    """Number of connected components of a boolean mask, 26-connectivity in 3D (8 in 2D)."""
    return int(ndimage.label(np.asarray(mask, bool), structure=_structure(np.ndim(mask), full=True))[1])


def betti0_error(mask_ref: np.ndarray, mask_pred: np.ndarray) -> int:
    """|#components(pred) - #components(ref)|, 26-connectivity (3x3x3 structure); 0 when both are empty."""
    return abs(components(mask_pred) - components(mask_ref))


def betti_numbers(mask: np.ndarray) -> tuple[int, int, int]:
    """(b0, b1, b2) of a 2D or 3D boolean mask: components, loops (tunnels / holes) and cavities.

    Foreground 26-connected (8 in 2D), background 6-connected (4 in 2D), one voxel of zero padding;
    b1 = b0 + b2 - Euler characteristic (scikit-image's ``euler_number``); b2 = 0 in 2D.
    """
    from skimage.measure import euler_number

    mask = np.asarray(mask, bool)
    box = bounding_box(mask)
    if box is None:
        return 0, 0, 0
    padded = np.pad(mask[box], 1)
    b0 = int(ndimage.label(padded, structure=_structure(mask.ndim, full=True))[1])
    b2 = int(ndimage.label(~padded, structure=_structure(mask.ndim, full=False))[1]) - 1 if mask.ndim == 3 else 0
    chi = int(euler_number(padded, connectivity=mask.ndim))
    return b0, b0 + b2 - chi, b2


def betti1_error(mask_ref: np.ndarray, mask_pred: np.ndarray) -> int:
    """|b1(pred) - b1(ref)| (loops; :func:`betti_numbers`); 0 when both are empty."""
    return abs(betti_numbers(mask_pred)[1] - betti_numbers(mask_ref)[1])


def _surface_points(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Coordinates in mm of the voxels with a 6-connected (4 in 2D) background neighbour."""
    surface = mask & ~ndimage.binary_erosion(mask, structure=_structure(mask.ndim, full=False))
    return np.argwhere(surface) * np.asarray(spacing, float)


def hd95(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: tuple[float, ...]) -> float:
    """95th percentile of the symmetric surface distances in mm (``spacing`` per array axis); NaN if a mask is empty."""
    from scipy.spatial import cKDTree

    ref, pred = np.asarray(mask_ref, bool), np.asarray(mask_pred, bool)
    if not ref.any() or not pred.any():
        return float("nan")
    box = bounding_box(ref, pred)  # a one-voxel margin keeps the surfaces of masks touching the crop unchanged
    points_ref, points_pred = _surface_points(ref[box], spacing), _surface_points(pred[box], spacing)
    to_ref = cKDTree(points_ref).query(points_pred)[0]
    to_pred = cKDTree(points_pred).query(points_ref)[0]
    return float(np.percentile(np.concatenate([to_ref, to_pred]), 95))


def topology_metrics(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: tuple[float, ...]) -> dict:
    """clDice, Betti0_error and HD95 (mm) of two boolean masks on the same grid (empty conventions: CONVENTIONS)."""
    ref, pred = np.asarray(mask_ref, bool), np.asarray(mask_pred, bool)
    if ref.shape != pred.shape or len(spacing) != ref.ndim:
        raise ValueError(f"masks {ref.shape} / {pred.shape} and spacing {tuple(spacing)} do not match")
    box = bounding_box(ref, pred)
    if box is not None:
        ref, pred = ref[box], pred[box]
    return {"clDice": cl_dice(ref, pred), "Betti0_error": betti0_error(ref, pred), "HD95": hd95(ref, pred, spacing)}


def class_overlap(mask_ref: np.ndarray, mask_pred: np.ndarray, n_kept: int) -> dict:
    """Dice, IoU, FP, TP, FN, TN, n_pred, n_ref as nnU-Net's ``compute_metrics`` (``n_kept`` = voxels scored).

    The masks come with the ignored voxels already removed; Dice and IoU are NaN when both masks are empty.
    """
    tp = int(np.count_nonzero(mask_ref & mask_pred))
    fp, fn = int(np.count_nonzero(mask_pred)) - tp, int(np.count_nonzero(mask_ref)) - tp
    empty = tp + fp + fn == 0
    return {
        "Dice": float("nan") if empty else 2 * tp / (2 * tp + fp + fn),
        "IoU": float("nan") if empty else tp / (tp + fp + fn),
        "FP": fp,
        "TP": tp,
        "FN": fn,
        "TN": n_kept - tp - fp - fn,
        "n_pred": fp + tp,
        "n_ref": fn + tp,
    }


def plain_classes(labels_or_regions: list) -> list[int | tuple[int, ...]]:
    """Labels as Python ints and regions as tuples of ints (nnU-Net's LabelManager may hand out numpy ints)."""
    return [tuple(int(v) for v in r) if isinstance(r, (tuple, list)) else int(r) for r in labels_or_regions]


def binary_region(labels_or_regions: list) -> tuple[int, ...]:
    """Every foreground label of the classes, as one nnU-Net region (a tuple of labels)."""
    labels = {v for r in labels_or_regions for v in (r if isinstance(r, tuple) else (r,))}
    return tuple(sorted(labels - {0}))


def class_mask(seg: np.ndarray, label_or_region: int | tuple[int, ...]) -> np.ndarray:
    """Boolean mask of a label or of a region (any of its labels), as nnU-Net's ``region_or_label_to_mask``."""
    if isinstance(label_or_region, tuple):
        return np.isin(seg, label_or_region)
    return seg == label_or_region


def read_case(reference_file: str, prediction_file: str, image_reader_writer, ignore_label: int | None) -> tuple:
    """(reference, prediction, keep mask or None, spacing, 2D flag) of one case; refuses differing grids.

    A 2D image is one nnU-Net's readers turn into a single slice with a dummy first-axis spacing of 999 times
    the largest in-plane spacing; the arrays and spacing returned for it are 2D.
    """
    seg_ref, properties = image_reader_writer.read_seg(reference_file)
    seg_pred, _ = image_reader_writer.read_seg(prediction_file)
    case = os.path.basename(prediction_file)
    if seg_ref.shape != seg_pred.shape:
        raise UserInputError(
            f"Case '{case}': prediction shape {tuple(seg_pred.shape[1:])} differs from the reference's "
            f"{tuple(seg_ref.shape[1:])}; predictions must lie on the reference's grid (nnUNetv2_predict writes them "
            "so). Check that the two folders hold the same cases."
        )
    seg_ref, seg_pred = seg_ref[0], seg_pred[0]
    spacing = tuple(float(s) for s in properties["spacing"])
    two_d = seg_ref.ndim == 3 and seg_ref.shape[0] == 1 and spacing[0] >= 998 * max(spacing[1:])
    if two_d:
        seg_ref, seg_pred, spacing = seg_ref[0], seg_pred[0], spacing[1:]
    keep = seg_ref != ignore_label if ignore_label is not None else None
    return seg_ref, seg_pred, keep, spacing, two_d
