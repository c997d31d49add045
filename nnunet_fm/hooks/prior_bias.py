"""Prior-bias initialisation: classifier biases set to log class frequency."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nnunet_fm.hooks.class_balance import class_frequencies
from nnunet_fm.options import Option


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module inside DDP and torch.compile wrappers."""
    network = getattr(network, "module", network)
    return getattr(network, "_orig_mod", network)


def output_heads(network: nn.Module) -> list[nn.Module]:
    """Classifier layers of a network: its ``output_heads()``, or nnU-Net's ``decoder.seg_layers``."""
    network = unwrap(network)
    if hasattr(network, "output_heads"):
        return list(network.output_heads())
    decoder = getattr(network, "decoder", None)
    return list(getattr(decoder, "seg_layers", []))


@torch.no_grad()
def set_prior_bias(heads: list[nn.Module], counts: np.ndarray) -> torch.Tensor:
    """Set each head's bias to log f_c; returns the bias vector."""
    bias = torch.as_tensor(np.log(class_frequencies(counts)), dtype=torch.float32)
    for head in heads:
        if getattr(head, "bias", None) is None or head.bias.numel() != bias.numel():
            raise ValueError(f"Output head {head} has no bias with {bias.numel()} entries for the prior.")
        head.bias.copy_(bias.to(head.bias.device))
    return bias


class PriorBiasMixin:
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
