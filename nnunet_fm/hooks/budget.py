"""Epoch length in passes over the training cases, so that "N epochs" means what a paper means by it.

nnU-Net's epoch is a fixed 250 iterations; the published recipes this plugin reproduces define an epoch as
one pass over the training volumes (vesselbridge3d ``train.py``: one random crop per labelled volume per
epoch; LightMedSeg §4). With ``num_iterations_per_epoch: null`` an epoch is ``ceil(n_train / batch_size)``
iterations of the global batch, computed once the (few-shot) training cases are known.
"""

from __future__ import annotations

import math

from nnunet_fm.hooks.extension_points import Contribution
from nnunet_fm.options import Option


def iterations_per_pass(num_cases: int, batch_size: int) -> int:
    """Iterations in which a batch of ``batch_size`` sees ``num_cases`` cases once (at least 1)."""
    return max(1, math.ceil(num_cases / max(1, batch_size)))


class EpochBudgetMixin:
    """Sets the iterations per epoch from the plans, or from the number of cases when they are null."""

    fm_contributions = (Contribution("start", "fm_apply_epoch_budget", order=20),)

    fm_options = (
        Option(
            "num_iterations_per_epoch",
            250,
            "Training iterations per epoch; null = one pass over the training cases (ceil(n_train / batch_size)).",
            "int",
            nullable=True,
            minimum=1,
        ),
        Option(
            "num_val_iterations_per_epoch",
            50,
            "Validation iterations per epoch; null = one pass over the validation cases (ceil(n_val / batch_size)).",
            "int",
            nullable=True,
            minimum=1,
        ),
    )

    def fm_apply_epoch_budget(self) -> None:
        """Resolve null iteration counts; needs the split, so it runs at the start of training."""
        train_keys, val_keys = self.do_split()
        batch = int(self.configuration_manager.batch_size)  # global batch: DDP ranks share it
        train, val = self.fm_option("num_iterations_per_epoch"), self.fm_option("num_val_iterations_per_epoch")
        self.num_iterations_per_epoch = int(train) if train is not None else iterations_per_pass(len(train_keys), batch)
        self.num_val_iterations_per_epoch = int(val) if val is not None else iterations_per_pass(len(val_keys), batch)
        steps = self.num_epochs * self.num_iterations_per_epoch
        grown = self.batch_size / self.fm_plans_batch_size  # what batch_size contributions added
        per_step = round(batch * grown)
        self.print_to_log_file(
            f"Budget: {self.num_epochs} epochs x {self.num_iterations_per_epoch} iterations = {steps} optimiser steps "
            f"({steps * per_step} patches of batch {per_step}; {len(train_keys)} training case(s)); validation "
            f"{self.num_val_iterations_per_epoch} iteration(s) per epoch on {len(val_keys)} case(s)."
        )
