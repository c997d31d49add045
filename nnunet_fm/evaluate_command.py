"""Vessel-grade evaluation: nnU-Net's per-class metrics plus clDice, Betti errors and HD95 (``nnunet-fm evaluate``).

Two conventions (``--conventions``): ``nnunet`` (the default, this module) and ``topcow`` (the TopCoW challenge's
evaluation, :mod:`nnunet_fm.topcow_metrics`). In ``nnunet`` conventions, per class (label or region, from the
dataset.json via nnU-Net's LabelManager) and for the binary-merged foreground (every foreground label -> 1), each
case gets nnU-Net's own metrics (Dice, IoU, TP, FP, FN, TN, n_pred, n_ref, as ``compute_metrics``) and:

* ``clDice`` (Shit et al. 2021): tprec = |S_pred ∩ V_ref| / |S_pred|, tsens = |S_ref ∩ V_pred| / |S_ref|,
  clDice = their harmonic mean; skeletons by scikit-image's ``skeletonize`` (Lee 1994 thinning in 3D) on the
  array in (x, y, z) axis order, as TopCoW's reference code thins it (thinning depends on the axis order).
* ``Betti0_error`` / ``Betti1_error``: |b(prediction) - b(reference)| for the 0th (components) and 1st (loops)
  Betti numbers, 26-connected foreground and 6-connected background (8 / 4 in 2D).
* ``HD95``: in mm (the image spacing): the 95th percentile of the pooled surface distances (prediction's surface
  voxels to the reference's surface, and the reference's to the prediction's; surfaces = voxels with a
  6-connected background neighbour).

Conventions (:data:`CONVENTIONS`, also written into ``summary.json``): see there.
"""

from __future__ import annotations

import json
import multiprocessing
import warnings
from pathlib import Path

import numpy as np

from nnunet_fm.atomic_io import atomic_write_json
from nnunet_fm.errors import UserInputError
from nnunet_fm.mask_metrics import (
    FOREGROUND_MEAN_RULE,
    betti1_error,
    binary_region,
    class_mask,
    class_overlap,
    plain_classes,
    read_case,
    topology_metrics,
)

TOPOLOGY_METRICS = ("clDice", "Betti0_error", "HD95")
CONVENTION_NAMES = ("nnunet", "topcow")
CONVENTIONS = {
    "name": "nnunet",
    "clDice": "per class and binary; NaN when reference and prediction are both empty (left out of means, like "
    "nnU-Net's Dice); 0 when only one of them is empty; skeletons thinned in (x, y, z) axis order (TopCoW's)",
    "Betti0_error": "|components(prediction) - components(reference)| with 26-connectivity; 0 when both are empty",
    "Betti1_error": "|b1(prediction) - b1(reference)|, b1 = b0 + b2 - Euler characteristic (26-connected "
    "foreground, 6-connected background, one voxel of zero padding); 0 when both are empty",
    "HD95": "mm (image spacing); 95th percentile of the pooled surface distances prediction->reference and "
    "reference->prediction (6-connected surfaces); NaN when either mask is empty (left out of means)",
    "binary": "all foreground labels merged into one class",
    "ignore_label": "voxels with the ignore label in the reference are removed from both masks",
    "means": "per class and binary: np.nanmean over cases",
    "foreground_mean": FOREGROUND_MEAN_RULE,
}


def case_metrics(
    reference_file: str,
    prediction_file: str,
    image_reader_writer,
    labels_or_regions: list,
    ignore_label: int | None = None,
    conventions: str = "nnunet",
) -> dict:
    """One case: nnU-Net's overlap metrics per class plus the vessel metrics, and the same for ``binary``.

    ``conventions="topcow"`` hands over to :func:`nnunet_fm.topcow_metrics.topcow_case_metrics`.
    """
    if conventions == "topcow":
        from nnunet_fm.topcow_metrics import topcow_case_metrics

        return topcow_case_metrics(
            reference_file, prediction_file, image_reader_writer, labels_or_regions, ignore_label
        )
    seg_ref, seg_pred, keep, spacing, two_d = read_case(
        reference_file, prediction_file, image_reader_writer, ignore_label
    )
    if two_d:  # nnunet conventions score 2D images as the single-slice volumes nnU-Net reads
        seg_ref, seg_pred, spacing = seg_ref[None], seg_pred[None], (999.0 * max(spacing), *spacing)
        keep = keep[None] if keep is not None else None
    labels_or_regions = plain_classes(labels_or_regions)
    binary = binary_region(labels_or_regions)
    regions = list(labels_or_regions) + ([] if binary in labels_or_regions else [binary])
    n_kept = int(keep.sum()) if keep is not None else seg_ref.size
    result: dict = {"reference_file": reference_file, "prediction_file": prediction_file, "metrics": {}}
    done: list = []
    for r in regions:
        ref, pred = class_mask(seg_ref, r), class_mask(seg_pred, r)
        if keep is not None:
            ref, pred = ref & keep, pred & keep
        entry = class_overlap(ref, pred, n_kept)
        same = next(
            (d for m_ref, m_pred, d in done if np.array_equal(m_ref, ref) and np.array_equal(m_pred, pred)), None
        )
        if same is None:  # a class equal to the merged foreground is scored once
            same = topology_metrics(ref, pred, spacing)
            same["Betti1_error"] = betti1_error(ref, pred)
            done.append((ref, pred, same))
        entry.update(same)
        result["metrics"][r] = entry
    result["binary"] = result["metrics"][binary] if binary in labels_or_regions else result["metrics"].pop(binary)
    return result


def nanmean(values: list) -> float:
    """Mean ignoring NaN; NaN (without numpy's warning) when every value is NaN or there are none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(np.asarray(values, dtype=float))) if len(values) else float("nan")


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


def _case_names(folder_ref: Path, folder_pred: Path, ending: str, chill: bool) -> list[str]:
    """The predicted case files to score, after checking they pair with the references."""
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
    return predictions


def foreground_mean(class_means: list[dict], names: list[str]) -> dict:
    """Per metric, the mean of the defined class means (:data:`FOREGROUND_MEAN_RULE`)."""
    return {m: nanmean([means[m] for means in class_means]) for m in names}


def evaluate_folder(
    folder_ref: str | Path,
    folder_pred: str | Path,
    dataset_json_file: str | Path,
    plans_file: str | Path | None = None,
    output_file: str | Path | None = None,
    num_processes: int | None = None,
    chill: bool = False,
    conventions: str = "nnunet",
) -> dict:
    """Score every prediction against its reference; write and return ``summary.json`` (nnU-Net's layout + extras).

    Like ``nnUNetv2_evaluate_folder``: labels/regions and ignore label from the dataset.json through nnU-Net's
    LabelManager (the plans' label manager class when ``plans_file`` is given), the reader for the file ending,
    ``num_processes`` workers (a spawn pool as nnU-Net's; in this process when 1; default nnU-Net's
    ``default_num_processes``), ``chill`` to score only the predicted cases. ``conventions``: ``"nnunet"`` or
    ``"topcow"`` (TopCoW's evaluation rules, :mod:`nnunet_fm.topcow_metrics`). Output (JSON keys as strings):
    ``metric_per_case`` [{prediction_file, reference_file, metrics: {class: {...}}, binary: {...}; topcow adds
    class_average}], ``mean`` {class: {...}}, ``foreground_mean``, ``binary`` (the mean merged-foreground
    metrics), topcow's ``class_average`` (mean of the cases' class averages) and ``conventions``. Default
    ``output_file``: ``folder_pred/summary.json``.
    """
    from nnunetv2.configuration import default_num_processes
    from nnunetv2.evaluation.evaluate_predictions import label_or_region_to_key
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if conventions not in CONVENTION_NAMES:
        raise UserInputError(f"--conventions {conventions!r}: choose one of {', '.join(CONVENTION_NAMES)}.")
    folder_ref, folder_pred, dataset_json_file = Path(folder_ref), Path(folder_pred), Path(dataset_json_file)
    plans_file = Path(plans_file) if plans_file is not None else None
    dataset_json = _check_inputs(folder_ref, folder_pred, dataset_json_file, plans_file)
    output_file = Path(output_file) if output_file is not None else folder_pred / "summary.json"
    if output_file.suffix != ".json":
        raise UserInputError(f"-o {output_file}: the summary file must end with .json.")
    ending = dataset_json["file_ending"]
    predictions = _case_names(folder_ref, folder_pred, ending, chill)

    reader = determine_reader_writer_from_dataset_json(dataset_json, str(folder_ref / predictions[0]), verbose=False)()
    if plans_file is not None:
        label_manager = PlansManager(str(plans_file)).get_label_manager(dataset_json)
    else:
        label_manager = LabelManager(
            dataset_json["labels"], regions_class_order=dataset_json.get("regions_class_order")
        )
    regions = plain_classes(
        label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels
    )
    jobs = [
        (str(folder_ref / name), str(folder_pred / name), reader, regions, label_manager.ignore_label, conventions)
        for name in predictions
    ]
    num_processes = default_num_processes if num_processes is None else num_processes
    if num_processes <= 1 or len(jobs) == 1:
        results = [case_metrics(*job) for job in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
            results = pool.starmap(case_metrics, jobs)

    names = list(results[0]["metrics"][regions[0]])
    means = {r: {m: nanmean([c["metrics"][r][m] for c in results]) for m in names} for r in regions}
    binary_names = list(results[0]["binary"])
    summary = {
        "foreground_mean": foreground_mean([means[r] for r in regions if r != 0], names),
        "binary": {m: nanmean([c["binary"][m] for c in results]) for m in binary_names},
        "mean": {label_or_region_to_key(r): v for r, v in means.items()},
    }
    if conventions == "topcow":
        from nnunet_fm.topcow_metrics import CONVENTIONS as TOPCOW_CONVENTIONS

        average_names = list(results[0]["class_average"])
        summary["class_average"] = {m: nanmean([c["class_average"][m] for c in results]) for m in average_names}
        summary["conventions"] = TOPCOW_CONVENTIONS
    else:
        summary["conventions"] = CONVENTIONS
    for case in results:
        case["metrics"] = {label_or_region_to_key(r): v for r, v in case["metrics"].items()}
    summary["metric_per_case"] = results
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
