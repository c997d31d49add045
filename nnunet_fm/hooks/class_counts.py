"""Voxel counts per class over the training cases actually used (read by class weights and the prior bias)."""

from __future__ import annotations

import warnings

import numpy as np


def label_counts(segmentations, num_classes: int, ignore_label: int | None) -> np.ndarray:
    """Voxel count per class over label arrays (ignore-label and padding voxels are not counted)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for seg in segmentations:
        values = np.asarray(seg).astype(np.int64).ravel()
        values = values[(values >= 0) & (values < num_classes) & (values != (ignore_label or -1))]
        counts += np.bincount(values, minlength=num_classes)[:num_classes]
    return counts


def class_frequencies(counts: np.ndarray) -> np.ndarray:
    """f_c = max(count_c, 1) / total: finite and positive even for classes absent from the labels."""
    counts = np.asarray(counts, dtype=np.float64)
    return np.maximum(counts, 1.0) / max(counts.sum(), 1.0)


class ClassCountsMixin:
    """``fm_class_counts()``: label voxel counts of the (few-shot) training cases, computed once per trainer."""

    def fm_class_counts(self) -> np.ndarray:
        """Voxel count per class over the training cases of this fold (ignore label left out)."""
        if getattr(self, "_fm_counts", None) is None:
            cases, _ = self.do_split()
            dataset = self.dataset_class(self.preprocessed_dataset_folder, list(cases))
            segs = (np.asarray(dataset.load_case(key)[1][:]) for key in cases)
            num_classes = self.label_manager.num_segmentation_heads
            self._fm_counts = label_counts(segs, num_classes, self.label_manager.ignore_label)
            absent = [c for c in range(num_classes) if self._fm_counts[c] == 0]
            if absent:
                message = (
                    f"classes {absent} do not occur in the {len(cases)} training case(s) used; their weights "
                    "and priors are computed from a count of 1 voxel"
                )
                warnings.warn(message, stacklevel=2)
                self.print_to_log_file("WARNING: " + message)
            self.print_to_log_file(f"Training label voxel counts per class: {self._fm_counts.tolist()}")
        return self._fm_counts
