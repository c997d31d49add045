"""Flat shim for nnU-Net's ``nnUNet_extTrainer`` lookup: re-exports the plugin's trainers.

nnU-Net imports every module of this folder as a top-level module; each class itself lives once, in
``nnunet_fm.trainers``.
"""

from nnunet_fm.trainers.unet import nnUNetTrainerFMUNet

__all__ = ["nnUNetTrainerFMUNet"]
