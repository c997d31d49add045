"""Prior-bias initialisation: classifier biases set to log class frequency."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nnunet_fm.hooks.class_counts import ClassCountsMixin, class_frequencies
from nnunet_fm.network_interfaces import output_heads
from nnunet_fm.options import Option


@torch.no_grad()
def set_prior_bias(heads: list[nn.Module], counts: np.ndarray) -> torch.Tensor:
    """Set each head's bias to log f_c; returns the bias vector."""
    bias = torch.as_tensor(np.log(class_frequencies(counts)), dtype=torch.float32)
    for head in heads:
        if getattr(head, "bias", None) is None or head.bias.numel() != bias.numel():
            raise ValueError(f"Output head {head} has no bias with {bias.numel()} entries for the prior.")
        head.bias.copy_(bias.to(head.bias.device))
    return bias


class PriorBiasMixin(ClassCountsMixin):
    """After the network is built, set its classifier biases to the training-label prior."""

    fm_options = (Option("init_prior_bias", True, "Initialise classifier biases to log class frequency.", "bool"),)

    def initialize(self):
        super().initialize()
        if self.fm_option("init_prior_bias"):
            heads = output_heads(self.network)
            bias = set_prior_bias(heads, self.fm_class_counts())
            self.print_to_log_file(
                f"Prior bias log(f_c) {np.round(bias.numpy(), 3).tolist()} set on {len(heads)} output head(s)"
            )
