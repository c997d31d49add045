"""Flat shim for nnU-Net's ``nnUNet_extTrainer`` lookup: re-exports every trainer of ``nnunet_fm.registry``.

nnU-Net imports every module of this folder as a top-level module and takes a trainer with
``getattr(module, name)``; the classes are bound here as module globals, so that lookup finds them. Each class
itself lives once, in ``nnunet_fm.trainers``. Importing it also installs the plugin's excepthook
(``nnunet_fm.errors``): nnU-Net's commands then report a plugin error as ``nnunet-fm`` does.
"""

from nnunet_fm.errors import install_excepthook
from nnunet_fm.registry import trainer_classes

install_excepthook()  # nnUNetv2_train: a plugin error is one message and exit 2, not a traceback

_TRAINERS = trainer_classes()
globals().update(_TRAINERS)
__all__ = sorted(_TRAINERS)
