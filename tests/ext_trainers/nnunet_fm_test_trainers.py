"""Test-only trainers, found by nnU-Net through nnUNet_extTrainer exactly like users' trainers."""

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.network_architecture.nnUNetTrainerNoDeepSupervision import (
    nnUNetTrainerNoDeepSupervision,
)


class _OneShortEpoch:
    """Shortens any stock trainer to 1 epoch of 2 iterations (1 validation iteration)."""

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 1, 2, 1


class nnUNetTrainer_fmtest(_OneShortEpoch, nnUNetTrainer):
    """Stock nnU-Net (network, loss, SGD, deep supervision), shortened."""


class nnUNetTrainerNoDeepSupervision_fmtest(_OneShortEpoch, nnUNetTrainerNoDeepSupervision):
    """Stock nnUNetTrainerNoDeepSupervision, shortened."""
