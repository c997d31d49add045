"""nnUNetTrainerDINOv3Cube: frozen DINOv3 on sub-cubes with exact two-pass training."""

from __future__ import annotations

import torch

from nnunet_fm.trainers.base import nnUNetTrainerFMAdamW
from nnunet_fm.two_pass import two_pass_step


class nnUNetTrainerDINOv3Cube(nnUNetTrainerFMAdamW):
    """``two_pass: true`` (default): global loss on the reassembled patch, gradients back-propagated cube by cube.

    ``two_pass: false`` is ordinary backprop through all cubes at once (same gradients, more memory).
    """

    def forward_backward(self, data: torch.Tensor, target) -> torch.Tensor:
        if not self.fm_option("two_pass"):
            return super().forward_backward(data, target)
        with self.fm_autocast():
            return two_pass_step(self.network, data, target, self.loss, scale_loss=self.scale_loss)
