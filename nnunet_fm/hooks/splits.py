"""Cross-validation folds for datasets with fewer than five cases, the few-shot case nnU-Net cannot split.

nnU-Net's default split is 5-fold (``generate_crossval_split``), which scikit-learn refuses for fewer than five
cases. With 2-4 cases the plugin writes leave-one-out folds to ``splits_final.json`` (nnU-Net's own file and
format, so stock commands and ``nnUNetv2_find_best_configuration`` use them too); with one case only fold
``all`` exists.
"""

from __future__ import annotations

import json
from pathlib import Path

from nnunet_fm.atomic_io import atomic_write_json
from nnunet_fm.errors import UserInputError

NNUNET_FOLDS = 5


def leave_one_out_splits(case_ids: list[str]) -> list[dict[str, list[str]]]:
    """One fold per case: that case validates, the others train (nnU-Net's splits_final.json format)."""
    ordered = sorted(case_ids)
    return [{"train": [c for c in ordered if c != held_out], "val": [held_out]} for held_out in ordered]


def few_case_note(num_cases: int) -> str | None:
    """What a user with ``num_cases`` training cases must know about folds (None when nnU-Net's 5 folds work)."""
    if num_cases >= NNUNET_FOLDS:
        return None
    if num_cases <= 1:
        return f"{num_cases} training case: cross-validation folds do not exist; train with fold 'all'."
    return (
        f"{num_cases} training cases (< {NNUNET_FOLDS}): plugin trainers use leave-one-out folds "
        f"0..{num_cases - 1} (written to splits_final.json), or train with fold 'all'."
    )


class SmallDatasetSplitMixin:
    """Writes leave-one-out ``splits_final.json`` for 2-4 cases before nnU-Net's ``do_split`` reads it."""

    def do_split(self):
        if self.fold != "all":
            self._fm_small_dataset_splits()
        return super().do_split()

    def _fm_small_dataset_splits(self) -> None:
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        splits_file = Path(self.preprocessed_dataset_folder_base) / "splits_final.json"
        if splits_file.is_file():
            folds = len(json.loads(splits_file.read_text()))
            if int(self.fold) >= folds:  # nnU-Net would silently train on a random 80:20 split instead
                raise UserInputError(
                    f"{splits_file} defines folds 0..{folds - 1}; fold {self.fold} does not exist. Use one of them "
                    "or fold 'all'."
                )
            return
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        cases = list(self.dataset_class.get_identifiers(self.preprocessed_dataset_folder))
        if len(cases) >= NNUNET_FOLDS:
            return  # nnU-Net's own 5-fold split
        dataset = self.plans_manager.dataset_name
        if len(cases) <= 1:
            raise UserInputError(
                f"{dataset} has {len(cases)} training case: there are no cross-validation folds. Train with fold "
                f"'all': nnUNetv2_train {dataset} {self.configuration_name} all -tr {type(self).__name__}"
            )
        if int(self.fold) >= len(cases):
            raise UserInputError(
                f"{dataset} has {len(cases)} training cases, so its leave-one-out folds are 0..{len(cases) - 1}; "
                f"fold {self.fold} does not exist. Use one of them or fold 'all'."
            )
        atomic_write_json(splits_file, leave_one_out_splits(cases))
        self.print_to_log_file(
            f"{len(cases)} training cases (< {NNUNET_FOLDS}): wrote leave-one-out folds to {splits_file}"
        )
