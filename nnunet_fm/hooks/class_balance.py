"""CE class weights from the training labels' class frequencies, and the loss they feed."""

from __future__ import annotations

import numpy as np
import torch

from nnunet_fm.hooks.class_counts import ClassCountsMixin, class_frequencies
from nnunet_fm.hooks.loss import SliceMaskedLoss
from nnunet_fm.options import Option
from nnunet_fm.slice_axis import configured_slice_axis


def class_weights(counts: np.ndarray, bg_weight: float, use_mfb: bool) -> np.ndarray:
    """CE weights: median-frequency balancing (median(f) / f_c) or ones; background set to ``bg_weight``."""
    if use_mfb:
        frequencies = class_frequencies(counts)
        weights = np.median(frequencies) / frequencies
    else:
        weights = np.ones(len(counts))
    weights[0] = bg_weight
    return weights


class ClassBalanceMixin(ClassCountsMixin):
    """Computes class statistics from the used training cases and builds the plugin loss from them.

    The loss is nnU-Net's Dice + CE (MemoryEfficientSoftDiceLoss, RobustCrossEntropyLoss) with CE class
    weights, wrapped so logits are clamped, computed in fp32 and masked per slice (``depth_min_fg_frac``).
    """

    fm_options = (
        Option("bg_weight", 0.05, "Cross-entropy weight of the background class.", "float", minimum=0.0),
        Option("use_mfb", True, "Median-frequency balancing of cross-entropy class weights.", "bool"),
        Option(
            "depth_min_fg_frac",
            0.0005,
            "Slices whose foreground fraction is below this contribute nothing to CE or Dice (0 disables).",
            "float",
            minimum=0.0,
            maximum=1.0,
        ),
        Option(
            "dice_present_classes_only",
            False,
            "Average soft Dice over the foreground classes present in each sample's labels (vesselbridge3d).",
            "bool",
        ),
        Option(
            "logit_clamp",
            20.0,
            "Clamp logits to +-this before the loss (0 disables; loss in fp32).",
            "float",
            minimum=0.0,
        ),
    )

    def fm_class_weights(self) -> np.ndarray:
        return class_weights(
            self.fm_class_counts(), float(self.fm_option("bg_weight")), bool(self.fm_option("use_mfb"))
        )

    def _build_loss(self):
        weights = self.fm_class_weights()  # its do_split() sets dataset_class before the counts load cases
        self.print_to_log_file(f"CE class weights: {np.round(weights, 4).tolist()}")
        return SliceMaskedLoss.dice_ce(
            ce_weight=torch.tensor(weights, dtype=torch.float32, device=self.device),
            ignore_label=self.label_manager.ignore_label,
            depth_min_fg_frac=float(self.fm_option("depth_min_fg_frac")),
            logit_clamp=float(self.fm_option("logit_clamp")),
            batch_dice=self.configuration_manager.batch_dice,
            ddp=self.is_ddp,
            present_classes_only=bool(self.fm_option("dice_present_classes_only")),
            slice_axis=configured_slice_axis(self.plans_manager, self.configuration_manager),
        )
