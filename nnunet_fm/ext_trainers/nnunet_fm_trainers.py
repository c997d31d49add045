"""Flat shim for nnU-Net's ``nnUNet_extTrainer`` lookup: re-exports every trainer of ``nnunet_fm.registry``.

nnU-Net imports every module of this folder as a top-level module and takes a trainer with
``getattr(module, name)``; the classes are bound here as module globals, so that lookup finds them. Each class
itself lives once, in ``nnunet_fm.trainers``.
"""

from nnunet_fm.registry import trainer_classes

_TRAINERS = trainer_classes()
globals().update(_TRAINERS)
__all__ = sorted(_TRAINERS)
