"""The plugin's trainer base: nnUNetTrainer plus every shared hook, each a one-concern mixin."""

from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_fm.hooks.augmentation import AugmentationMixin
from nnunet_fm.hooks.budget import EpochBudgetMixin
from nnunet_fm.hooks.checkpoint import AtomicCheckpointMixin
from nnunet_fm.hooks.class_balance import ClassBalanceMixin
from nnunet_fm.hooks.crop_sampling import ForegroundOversamplingMixin
from nnunet_fm.hooks.few_shot import FewShotMixin
from nnunet_fm.hooks.mean_teacher import MeanTeacherMixin
from nnunet_fm.hooks.network import FrozenEncoderWeightsMixin, PlansNetworkMixin
from nnunet_fm.hooks.optim import AdamWWarmupCosineMixin
from nnunet_fm.hooks.patch_filter import ForegroundFilterMixin
from nnunet_fm.hooks.plans_options import PlansOptionsMixin
from nnunet_fm.hooks.prior_bias import PriorBiasMixin
from nnunet_fm.hooks.splits import SmallDatasetSplitMixin
from nnunet_fm.hooks.train_step import AmpClipTrainStepMixin
from nnunet_fm.hooks.worker_cleanup import WorkerCleanupMixin


class nnUNetTrainerFMBase(
    PlansOptionsMixin,
    WorkerCleanupMixin,
    MeanTeacherMixin,
    ForegroundOversamplingMixin,
    AtomicCheckpointMixin,
    EpochBudgetMixin,
    AugmentationMixin,
    FewShotMixin,
    SmallDatasetSplitMixin,
    ForegroundFilterMixin,
    ClassBalanceMixin,
    PriorBiasMixin,
    PlansNetworkMixin,
    AmpClipTrainStepMixin,
    nnUNetTrainer,
):
    """nnUNetTrainer with few-shot sampling, patch filtering, class balancing, slice masking and prior bias.

    Options are read from the plans configuration (see ``nnunet_fm.options``); the network is whatever the
    configuration's ``architecture`` names. Optimiser: nnU-Net's SGD + poly unless a subclass adds
    ``AdamWWarmupCosineMixin``. The hooks meet at the trainer's declared extension points
    (``nnunet_fm.hooks.extension_points``), so the order of the mixins below changes nothing
    (tests/test_hook_order.py).
    """


class nnUNetTrainerFMAdamW(AdamWWarmupCosineMixin, nnUNetTrainerFMBase):
    """Base trainer with AdamW, linear warmup and cosine decay over trainable parameters only."""


class nnUNetTrainerFMFrozenEncoder(FrozenEncoderWeightsMixin, nnUNetTrainerFMAdamW):
    """AdamW trainer for networks with a frozen pretrained ``encoder`` (weights loaded in ``initialize()``)."""
