"""Stock nnU-Net U-Net (from the parent plans) with the plugin's few-shot hooks: the few-shot baseline."""

from __future__ import annotations

from nnunet_fm.trainers.base import nnUNetTrainerFMBase


class nnUNetTrainerUNetFewShot(nnUNetTrainerFMBase):
    """PlainConvUNet/ResEnc from the plans, nnU-Net's SGD + poly schedule, no deep supervision.

    Hook defaults are neutral (no class re-weighting, no slice masking, no prior bias) so that, with
    ``few_shot_k`` unset, it trains like stock nnUNetTrainer without deep supervision.
    """

    fm_defaults = {
        "bg_weight": 1.0,
        "use_mfb": False,
        "depth_min_fg_frac": 0.0,
        "init_prior_bias": False,
        "drop_empty": False,
        "grad_clip": 12.0,
        "amp_dtype": "float16",
        "logit_clamp": 0.0,
    }
