"""nnUNetTrainerDINOv3FFA: frozen DINOv3 + 3D adapter + FFA aggregator + UNETR-Lite + refine/HR heads."""

from __future__ import annotations

from nnunet_fm.trainers.base import nnUNetTrainerFMFrozenEncoder


class nnUNetTrainerDINOv3FFA(nnUNetTrainerFMFrozenEncoder):
    """Few-shot vessel trainer of DESIGN §3; every option is a plans key (see ``nnunet-fm plans list``)."""

    fm_network = "nnunet_fm.architectures.dinov3_ffa.DINOv3FFA"
    fm_defaults = {"few_shot_k": 5}  # the reference trains on 5 labelled volumes


class nnUNetTrainerDINOv3FFA_1shot(nnUNetTrainerDINOv3FFA):
    fm_fixed = {"few_shot_k": 1}


class nnUNetTrainerDINOv3FFA_3shot(nnUNetTrainerDINOv3FFA):
    fm_fixed = {"few_shot_k": 3}


class nnUNetTrainerDINOv3FFA_5shot(nnUNetTrainerDINOv3FFA):
    fm_fixed = {"few_shot_k": 5}
