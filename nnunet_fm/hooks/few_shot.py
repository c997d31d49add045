"""Few-shot case selection and empty-case dropping, recorded in the output folder and stable on resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nnunet_fm.atomic_io import atomic_write_json
from nnunet_fm.errors import UserInputError
from nnunet_fm.file_names import FEWSHOT_RECORD_NAME
from nnunet_fm.hooks.extension_points import contributions
from nnunet_fm.options import Option


def choose_cases(candidates: list[str], k: int | None, seed: int) -> list[str]:
    """Deterministic choice of ``k`` cases (sorted) from ``candidates``; all of them when k is None."""
    ordered = sorted(str(c) for c in candidates)
    if k is None or k >= len(ordered):
        return ordered
    if k < 1:
        raise UserInputError(f"few_shot_k must be >= 1 or null, got {k}.")
    picked = np.random.RandomState(seed).choice(len(ordered), size=k, replace=False)
    return sorted(ordered[i] for i in picked)


def case_has_foreground(properties: dict) -> bool:
    """True when nnU-Net's preprocessing found any foreground voxel (``class_locations``)."""
    return any(len(locations) > 0 for locations in properties.get("class_locations", {}).values())


class FewShotMixin:
    """``do_split`` keeps the fold's validation cases and trains on ``few_shot_k`` of its training cases."""

    fm_options = (
        Option(
            "few_shot_k",
            None,
            "Train on K labelled cases of the fold (null = all). Recorded in fewshot_cases.json.",
            "int",
            nullable=True,
            minimum=1,
        ),
        Option("few_shot_seed", 0, "Seed of the deterministic few-shot case choice.", "int"),
        Option("drop_empty", True, "Skip training cases without any foreground voxel.", "bool"),
    )

    def do_split(self):
        if getattr(self, "_fm_split", None) is not None:
            return self._fm_split  # nnU-Net asks several times per run; read the split and record once
        tr_keys, val_keys = super().do_split()
        unlabelled = self.fm_unlabelled_training_cases(list(tr_keys))  # kept aside: never dropped or counted in k
        candidates = [k for k in tr_keys if k not in unlabelled]
        if self.fm_option("drop_empty"):
            candidates = self._fm_drop_empty(candidates)
        k, seed = self.fm_option("few_shot_k"), int(self.fm_option("few_shot_seed"))
        if k is not None and int(k) > len(candidates):
            self.print_to_log_file(
                f"WARNING: few_shot_k={k} but only {len(candidates)} usable training cases; using all of them."
            )
        chosen = self._fm_recorded_or_new(candidates, None if k is None else int(k), seed)
        self._fm_split = (chosen + unlabelled, list(val_keys))
        return self._fm_split

    def fm_unlabelled_training_cases(self, keys: list[str]) -> list[str]:
        """The ``keys`` that an ``unlabelled_cases`` contribution (a semi-supervised hook) names, in key order."""
        named = {k for c in contributions(type(self), "unlabelled_cases") for k in getattr(self, c.method)(keys)}
        return [k for k in keys if k in named]

    def _fm_drop_empty(self, keys: list[str]) -> list[str]:
        dataset = self.dataset_class(self.preprocessed_dataset_folder, list(keys))
        kept = [key for key in keys if case_has_foreground(dataset.load_case(key)[3])]
        dropped = sorted(set(keys) - set(kept))
        if dropped:
            self.print_to_log_file(f"drop_empty: skipping {len(dropped)} case(s) without foreground: {dropped}")
        if not kept:
            raise UserInputError(f"drop_empty removed every training case of fold {self.fold}: none has foreground.")
        return kept

    def _fm_recorded_or_new(self, candidates: list[str], k: int | None, seed: int) -> list[str]:
        record = Path(self.output_folder) / FEWSHOT_RECORD_NAME
        if record.is_file():
            saved = json.loads(record.read_text())
            if saved.get("few_shot_k") == k and saved.get("few_shot_seed") == seed:
                missing = sorted(set(saved["cases"]) - set(candidates))
                if missing:
                    raise UserInputError(
                        f"{record} lists cases {missing} that are not training cases of this fold "
                        "any more; move the file away to re-select."
                    )
                self.print_to_log_file(f"Few-shot cases re-used from {record}: {saved['cases']}")
                return list(saved["cases"])
            raise UserInputError(
                f"{record} was written with few_shot_k={saved.get('few_shot_k')}, few_shot_seed="
                f"{saved.get('few_shot_seed')} but the plans now say {k}, {seed}. Train into a new configuration "
                "(plans add --name ...) or remove the file."
            )
        chosen = choose_cases(candidates, k, seed)
        if self.local_rank == 0:
            atomic_write_json(
                record,
                {
                    "few_shot_k": k,
                    "few_shot_seed": seed,
                    "fold": self.fold,
                    "num_candidates": len(candidates),
                    "cases": chosen,
                },
            )
        self.print_to_log_file(f"Few-shot training cases (k={k}, seed={seed}): {chosen}")
        return chosen
