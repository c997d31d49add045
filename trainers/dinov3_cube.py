"""nnUNetTrainerDINOv3Cube: frozen DINOv3 on sub-cubes with exact two-pass training."""

from __future__ import annotations

import torch

from nnunet_fm.architectures.dinov3_cube_two_pass import two_pass_step
from nnunet_fm.hooks.extension_points import Contribution
from nnunet_fm.options import Option
from nnunet_fm.trainers.base import nnUNetTrainerFMFrozenEncoder


class nnUNetTrainerDINOv3Cube(nnUNetTrainerFMFrozenEncoder):
    """``two_pass: true`` (default): global loss on the reassembled patch, gradients back-propagated cube by cube.

    ``two_pass: false`` is ordinary backprop through all cubes at once (same gradients, more memory).
    """

    fm_contributions = (Contribution("train_step", "fm_two_pass_step", switch="two_pass=true"),)
    fm_options = (
        Option(
            "two_pass",
            True,
            "Exact two-pass training at constant decoder memory (false = ordinary backprop).",
            "bool",
        ),
    )
    # the abstract fixes no class weighting or few-shot protocol: neutral hooks, all training cases
    fm_defaults = {
        "initial_lr": 1e-3,
        "bg_weight": 1.0,
        "use_mfb": False,
        "depth_min_fg_frac": 0.0,
        "init_prior_bias": False,
        "drop_empty": False,
        # a frozen 2D encoder on axial slices: the FFA reference's in-plane augmentation, no mirroring
        "augmentation": "reference",
        "mirror_axes": None,
    }

    def fm_two_pass_step_active(self) -> bool:
        return bool(self.fm_option("two_pass"))

    def fm_two_pass_step(self, data: torch.Tensor, target) -> torch.Tensor:
        """The exact two-pass step (:func:`~nnunet_fm.architectures.dinov3_cube_two_pass.two_pass_step`) under the
        trainer's autocast."""
        with self.fm_autocast():
            return two_pass_step(self.network, data, target, self.loss, scale_loss=self.scale_loss)
