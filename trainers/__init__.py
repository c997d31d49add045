"""nnUNetTrainer subclasses; discovered by nnU-Net through the shim folder ``nnunet_fm/ext_trainers``."""
