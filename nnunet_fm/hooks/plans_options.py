"""Read trainer options from the plans configuration (the one place users customise training)."""

from __future__ import annotations

from typing import Any

import torch

from nnunet_fm.errors import UserInputError
from nnunet_fm.options import OPTIONS


class PlansOptionsMixin:
    """Options come from the plans configuration, then ``fm_defaults``, then the registry default.

    ``fm_fixed`` holds values a trainer variant pins (e.g. ``_5shot`` pins ``few_shot_k``); they win over plans.
    This mixin owns the trainer ``__init__`` (nnU-Net records init args by introspection, so the signature
    must stay exactly nnUNetTrainer's).
    """

    fm_defaults: dict[str, Any] = {}
    fm_fixed: dict[str, Any] = {}

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.label_manager.has_regions:
            raise UserInputError(
                f"{type(self).__name__} trains with classes, not regions; dataset.json of "
                f"{self.plans_manager.dataset_name} defines region labels. Use stock nnUNetTrainer for regions."
            )
        for name in ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "save_every"):
            setattr(self, name, int(self.fm_option(name)))
        self.enable_deep_supervision = False

    def fm_option(self, name: str) -> Any:
        """Value of a documented option for this trainer and configuration."""
        if name not in OPTIONS:
            raise KeyError(f"'{name}' is not a documented option (nnunet_fm.options).")
        if name in self.fm_fixed:
            return self.fm_fixed[name]
        configuration = self.configuration_manager.configuration
        if name in configuration:
            return configuration[name]
        return self.fm_defaults.get(name, OPTIONS[name].default)
