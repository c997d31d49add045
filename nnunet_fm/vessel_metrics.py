"""Vessel-grade evaluation: nnU-Net's per-class metrics plus clDice, Betti-0 error and HD95 (``nnunet-fm evaluate``).

Per class (label or region, from the dataset.json via nnU-Net's LabelManager) and for the binary-merged foreground
(every foreground label -> 1), each case gets nnU-Net's own metrics (``compute_metrics``: Dice, IoU, TP, FP, FN,
TN, n_pred, n_ref) and:

* ``clDice`` (Shit et al. 2021): tprec = |S_pred ∩ V_ref| / |S_pred|, tsens = |S_ref ∩ V_pred| / |S_ref|,
  clDice = their harmonic mean; skeletons S by scikit-image's 3D thinning (Lee 1994, ``skeletonize``).
* ``Betti0_error``: |#connected components of the prediction - #components of the reference|, 26-connectivity.
* ``HD95``: in mm (the image spacing): the 95th percentile of the symmetric surface distances (distances of the
  prediction's surface voxels to the reference's surface, pooled with those of the reference's surface to the
  prediction's; surfaces = voxels with a 6-connected background neighbour).

Conventions (:data:`CONVENTIONS`, also written into ``summary.json``): see there. Means ignore NaN
(``np.nanmean``) like nnU-Net's; ``foreground_mean`` is the plain mean of the class means, as nnU-Net's.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

from nnunet_fm.atomic_io import atomic_write_json
from nnunet_fm.errors import UserInputError

TOPOLOGY_METRICS = ("clDice", "Betti0_error", "HD95")
CONVENTIONS = {
    "clDice": "NaN when reference and prediction are both empty (left out of means, like nnU-Net's Dice); "
    "0 when only one of them is empty",
    "Betti0_error": "|components(prediction) - components(reference)| with 26-connectivity; 0 when both are empty",
    "HD95": "mm (image spacing); 95th percentile of the pooled surface distances prediction->reference and "
    "reference->prediction; NaN when either mask is empty (left out of means)",
    "binary": "all foreground labels merged into one class",
    "ignore_label": "voxels with the ignore label in the reference are removed from both masks",
    "means": "per class and binary: np.nanmean over cases; foreground_mean: mean of the class means (nnU-Net)",
}


def _structure(ndim: int, full: bool) -> np.ndarray:
    """26-connectivity (3x3x3 ones) when ``full``, else 6-connectivity (3D; 8 and 4 in 2D)."""
    return ndimage.generate_binary_structure(ndim, ndim if full else 1)


def _crop(*masks: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of the union of ``masks`` with a one-voxel margin (the metrics are unchanged by this crop)."""
    union = np.logical_or.reduce(masks)
    box = ndimage.find_objects(union.astype(np.uint8))[0]
    return tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, union.shape))


def cl_dice(mask_ref: np.ndarray, mask_pred: np.ndarray) -> float:
    """Centreline Dice of two boolean masks; NaN when both are empty, 0 when only one is."""
    ref, pred = np.asarray(mask_ref, bool), np.asarray(mask_pred, bool)
    if not ref.any() and not pred.any():
        return float("nan")
    if not ref.any() or not pred.any():
        return 0.0
    from skimage.morphology import skeletonize

    skel_ref, skel_pred = skeletonize(ref), skeletonize(pred)
    tprec = (skel_pred & ref).sum() / skel_pred.sum() if skel_pred.any() else 0.0
    tsens = (skel_ref & pred).sum() / skel_ref.sum() if skel_ref.any() else 0.0
    return float(2 * tprec * tsens / (tprec + tsens)) if tprec + tsens > 0 else 0.0


def components(mask: np.ndarray) -> int:
    """Number of connected components of a boolean mask, 26-connectivity in 3D (8 in 2D)."""
    return int(ndimage.label(np.asarray(mask, bool), structure=_structure(np.ndim(mask), full=True))[1])


def betti0_error(mask_ref: np.ndarray, mask_pred: np.ndarray) -> int:
    """|#components(pred) - #components(ref)|, 26-connectivity (3x3x3 structure); 0 when both are empty."""
    return abs(components(mask_pred) - components(mask_ref))


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_structure(mask.ndim, full=False))


def hd95(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: tuple[float, ...]) -> float:
    """95th percentile of the symmetric surface distances in mm (``spacing`` per array axis); NaN if a mask is empty."""
    ref, pred = np.asarray(mask_ref, bool), np.asarray(mask_pred, bool)
    if not ref.any() or not pred.any():
        return float("nan")
    surface_ref, surface_pred = _surface(ref), _surface(pred)
    to_ref = ndimage.distance_transform_edt(~surface_ref, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~surface_pred, sampling=spacing)
    return float(np.percentile(np.concatenate([to_ref[surface_pred], to_pred[surface_ref]]), 95))


def topology_metrics(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: tuple[float, ...]) -> dict:
    """clDice, Betti0_error and HD95 (mm) of two boolean masks on the same grid (empty conventions: CONVENTIONS)."""
    ref, pred = np.asarray(mask_ref, bool), np.asarray(mask_pred, bool)
    if ref.shape != pred.shape or len(spacing) != ref.ndim:
        raise ValueError(f"masks {ref.shape} / {pred.shape} and spacing {tuple(spacing)} do not match")
    if ref.any() or pred.any():
        box = _crop(ref, pred)
        ref, pred = ref[box], pred[box]
    return {"clDice": cl_dice(ref, pred), "Betti0_error": betti0_error(ref, pred), "HD95": hd95(ref, pred, spacing)}


def _plain(labels_or_regions: list) -> list[int | tuple[int, ...]]:
    """Labels as Python ints and regions as tuples of ints (nnU-Net's LabelManager may hand out numpy ints)."""
    return [tuple(int(v) for v in r) if isinstance(r, (tuple, list)) else int(r) for r in labels_or_regions]


def _binary_region(labels_or_regions: list) -> tuple[int, ...]:
    """Every foreground label of the classes, as one nnU-Net region (a tuple of labels)."""
    labels = {v for r in labels_or_regions for v in (r if isinstance(r, tuple) else (r,))}
    return tuple(sorted(labels - {0}))


def case_metrics(
    reference_file: str,
    prediction_file: str,
    image_reader_writer,
    labels_or_regions: list,
    ignore_label: int | None = None,
) -> dict:
    """One case: nnU-Net's ``compute_metrics`` per class plus the topology metrics, and the same for ``binary``."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics, region_or_label_to_mask

    seg_ref, properties = image_reader_writer.read_seg(reference_file)
    seg_pred, _ = image_reader_writer.read_seg(prediction_file)
    case = os.path.basename(prediction_file)
    if seg_ref.shape != seg_pred.shape:
        raise UserInputError(
            f"Case '{case}': prediction shape {tuple(seg_pred.shape[1:])} differs from the reference's "
            f"{tuple(seg_ref.shape[1:])}; predictions must lie on the reference's grid (nnUNetv2_predict writes them "
            "so). Check that the two folders hold the same cases."
        )
    labels_or_regions = _plain(labels_or_regions)
    binary = _binary_region(labels_or_regions)
    regions = list(labels_or_regions) + ([] if binary in labels_or_regions else [binary])
    result = compute_metrics(reference_file, prediction_file, image_reader_writer, regions, ignore_label)
    seg_ref, seg_pred = seg_ref[0], seg_pred[0]
    keep = seg_ref != ignore_label if ignore_label is not None else np.ones(seg_ref.shape, bool)
    spacing = tuple(float(s) for s in properties["spacing"])
    masks = {
        r: (region_or_label_to_mask(seg_ref, r) & keep, region_or_label_to_mask(seg_pred, r) & keep) for r in regions
    }
    done: dict = {}
    for r, (ref, pred) in masks.items():  # a class equal to the merged foreground is scored once
        same = next((d for d in done if np.array_equal(masks[d][0], ref) and np.array_equal(masks[d][1], pred)), None)
        done[r] = done[same] if same is not None else topology_metrics(ref, pred, spacing)
        result["metrics"][r].update(done[r])
    result["binary"] = result["metrics"][binary] if binary in labels_or_regions else result["metrics"].pop(binary)
    return result


def _nanmean(values: list) -> float:
    with warnings.catch_warnings():  # all-NaN (every case empty) -> NaN, without numpy's warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(np.asarray(values, dtype=float)))


def _check_inputs(folder_ref: Path, folder_pred: Path, dataset_json_file: Path, plans_file: Path | None) -> dict:
    for name, folder in (("reference", folder_ref), ("prediction", folder_pred)):
        if not folder.is_dir():
            raise UserInputError(
                f"The {name} folder {folder} does not exist; give an existing folder of segmentations."
            )
    for flag, file in (("-djfile", dataset_json_file), ("-pfile", plans_file)):
        if file is not None and not file.is_file():
            raise UserInputError(
                f"{flag} {file} does not exist; pass the file of the model folder "
                "(nnUNet_results/DatasetXXX_NAME/TRAINER__PLANS__CONFIGURATION/) or of the dataset."
            )
    try:
        dataset_json = json.loads(dataset_json_file.read_text())
    except json.JSONDecodeError as exc:
        raise UserInputError(
            f"-djfile {dataset_json_file} is not valid JSON ({exc}); pass nnU-Net's dataset.json."
        ) from exc
    missing = [key for key in ("labels", "file_ending") if key not in dataset_json]
    if missing:
        raise UserInputError(f"-djfile {dataset_json_file} lacks {missing}; pass nnU-Net's dataset.json.")
    return dataset_json


def evaluate_folder(
    folder_ref: str | Path,
    folder_pred: str | Path,
    dataset_json_file: str | Path,
    plans_file: str | Path | None = None,
    output_file: str | Path | None = None,
    num_processes: int | None = None,
    chill: bool = False,
) -> dict:
    """Score every prediction against its reference; write and return ``summary.json`` (nnU-Net's layout + extras).

    Like ``nnUNetv2_evaluate_folder``: labels/regions and ignore label from the dataset.json through nnU-Net's
    LabelManager (the plans' label manager class when ``plans_file`` is given), the reader for the file ending,
    ``num_processes`` workers (a spawn pool as nnU-Net's; in this process when 1; default nnU-Net's
    ``default_num_processes``), ``chill`` to score only the
    predicted cases. Output (JSON keys as strings): ``metric_per_case`` [{prediction_file, reference_file,
    metrics: {class: {...}}, binary: {...}}], ``mean`` {class: {...}}, ``foreground_mean``, ``binary`` (the mean
    merged-foreground metrics) and ``conventions``. Default ``output_file``: ``folder_pred/summary.json``.
    """
    from nnunetv2.configuration import default_num_processes
    from nnunetv2.evaluation.evaluate_predictions import label_or_region_to_key
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder_ref, folder_pred, dataset_json_file = Path(folder_ref), Path(folder_pred), Path(dataset_json_file)
    plans_file = Path(plans_file) if plans_file is not None else None
    dataset_json = _check_inputs(folder_ref, folder_pred, dataset_json_file, plans_file)
    output_file = Path(output_file) if output_file is not None else folder_pred / "summary.json"
    if output_file.suffix != ".json":
        raise UserInputError(f"-o {output_file}: the summary file must end with .json.")
    ending = dataset_json["file_ending"]
    references = sorted(p.name for p in folder_ref.iterdir() if p.name.endswith(ending))
    predictions = sorted(p.name for p in folder_pred.iterdir() if p.name.endswith(ending))
    if not references:
        raise UserInputError(
            f"No reference files ending in '{ending}' (the dataset.json's file_ending) in {folder_ref}."
        )
    unmatched = sorted(set(predictions) - set(references))
    if unmatched:
        raise UserInputError(
            f"Prediction(s) {unmatched[:5]} have no reference in {folder_ref}; add their reference segmentations "
            "or remove them from the prediction folder."
        )
    missing = sorted(set(references) - set(predictions))
    if missing and not chill:
        raise UserInputError(
            f"{len(missing)} reference case(s) have no prediction in {folder_pred}: {missing[:5]}; predict them, or "
            "pass --chill to score only the predicted cases."
        )
    if not predictions:
        raise UserInputError(f"No predictions ending in '{ending}' in {folder_pred}.")

    reader = determine_reader_writer_from_dataset_json(dataset_json, str(folder_ref / references[0]), verbose=False)()
    if plans_file is not None:
        label_manager = PlansManager(str(plans_file)).get_label_manager(dataset_json)
    else:
        label_manager = LabelManager(
            dataset_json["labels"], regions_class_order=dataset_json.get("regions_class_order")
        )
    regions = _plain(label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels)
    jobs = [
        (str(folder_ref / name), str(folder_pred / name), reader, regions, label_manager.ignore_label)
        for name in predictions
    ]
    num_processes = default_num_processes if num_processes is None else num_processes
    if num_processes <= 1 or len(jobs) == 1:
        results = [case_metrics(*job) for job in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
            results = pool.starmap(case_metrics, jobs)

    names = list(results[0]["metrics"][regions[0]])
    means = {r: {m: _nanmean([c["metrics"][r][m] for c in results]) for m in names} for r in regions}
    foreground_mean = {m: float(np.mean([means[r][m] for r in regions if r != 0])) for m in names}
    binary = {m: _nanmean([c["binary"][m] for c in results]) for m in names}
    for case in results:
        case["metrics"] = {label_or_region_to_key(r): v for r, v in case["metrics"].items()}
        recursive_fix_for_json_export(case)
    summary = {
        "foreground_mean": foreground_mean,
        "binary": binary,
        "mean": {label_or_region_to_key(r): v for r, v in means.items()},
        "metric_per_case": results,
        "conventions": CONVENTIONS,
    }
    recursive_fix_for_json_export(summary)
    atomic_write_json(output_file, summary)
    return summary


def _rounded(value: float, digits: int = 4) -> float:
    return round(float(value), digits)


def summary_scores(summary: dict) -> dict:
    """The plugin's score record from a ``summary.json`` dict (ours or stock nnU-Net's, which lacks the extras).

    Keys: ``per_class_dice``, ``mean_dice`` (foreground mean); with the topology metrics also ``per_class_cldice``,
    ``per_class_betti0_error``, ``per_class_hd95``; with the binary entry ``binary_dice``, ``binary_cldice``,
    ``binary_betti0_error`` and ``binary_hd95`` (means over cases, NaN-free means as in the summary).
    """
    mean = summary["mean"]
    scores = {
        "per_class_dice": {k: _rounded(v["Dice"]) for k, v in mean.items()},
        "mean_dice": _rounded(summary["foreground_mean"]["Dice"]),
    }
    for metric in TOPOLOGY_METRICS:
        if all(metric in v for v in mean.values()):
            scores[f"per_class_{metric.lower()}"] = {k: _rounded(v[metric]) for k, v in mean.items()}
    if "binary" in summary:
        for metric in ("Dice", *TOPOLOGY_METRICS):
            scores[f"binary_{metric.lower()}"] = _rounded(summary["binary"][metric])
    return scores


def score_folder(
    folder_ref: str | Path,
    folder_pred: str | Path,
    dataset_json_file: str | Path,
    plans_file: str | Path | None = None,
    num_processes: int | None = None,
) -> dict:
    """Evaluate a prediction folder (``evaluate_folder``, summary.json beside the predictions); its score record."""
    return summary_scores(evaluate_folder(folder_ref, folder_pred, dataset_json_file, plans_file, None, num_processes))
