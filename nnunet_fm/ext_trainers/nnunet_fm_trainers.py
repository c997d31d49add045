"""Flat shim for nnU-Net's ``nnUNet_extTrainer`` lookup: re-exports the plugin's trainers.

nnU-Net imports every module of this folder as a top-level module; each class itself lives once, in
``nnunet_fm.trainers``.
"""

from nnunet_fm.trainers.dinov3_cube import nnUNetTrainerDINOv3Cube
from nnunet_fm.trainers.dinov3_ffa import (
    nnUNetTrainerDINOv3FFA,
    nnUNetTrainerDINOv3FFA_1shot,
    nnUNetTrainerDINOv3FFA_3shot,
    nnUNetTrainerDINOv3FFA_5shot,
)
from nnunet_fm.trainers.lightmedseg import nnUNetTrainerLightMedSeg
from nnunet_fm.trainers.unet import nnUNetTrainerFMUNet

__all__ = [
    "nnUNetTrainerDINOv3Cube",
    "nnUNetTrainerDINOv3FFA",
    "nnUNetTrainerDINOv3FFA_1shot",
    "nnUNetTrainerDINOv3FFA_3shot",
    "nnUNetTrainerDINOv3FFA_5shot",
    "nnUNetTrainerFMUNet",
    "nnUNetTrainerLightMedSeg",
]
