"""What the plugin's trainers rely on a network to provide, declared as protocols instead of ``hasattr`` checks.

- :class:`SegmentationNetwork`: ``output_heads()`` lists the final classifier layers (prior-bias init).
- :class:`FrozenEncoderNetwork`: an ``encoder`` whose ``load_weights(spec)`` loads pretrained weights
  (called by the trainer's ``initialize()``, never at build time, so checkpoints carry every weight).

The sub-cube protocol of two-pass training belongs to its family
(:class:`nnunet_fm.architectures.dinov3_cube_two_pass.SubCubeNetwork`). nnU-Net's own networks satisfy none of
them; the hooks fall back to nnU-Net's conventions (``decoder.seg_layers``, ``decoder.deep_supervision``) for those.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class SegmentationNetwork(Protocol):
    def output_heads(self) -> list[nn.Module]: ...


@runtime_checkable
class FrozenEncoder(Protocol):
    def load_weights(self, spec: Any) -> str: ...


@runtime_checkable
class FrozenEncoderNetwork(Protocol):
    encoder: FrozenEncoder


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module inside ``torch.compile`` (``_orig_mod``) and DDP / DataParallel (``.module``) wrappers."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while True:
        if isinstance(network, wrappers):
            network = network.module
        elif isinstance(getattr(network, "_orig_mod", None), nn.Module):
            network = network._orig_mod
        else:
            return network


def output_heads(network: nn.Module) -> list[nn.Module]:
    """Classifier layers of a network: its ``output_heads()``, or nnU-Net's ``decoder.seg_layers``."""
    network = unwrap(network)
    if isinstance(network, SegmentationNetwork):
        return list(network.output_heads())
    decoder = getattr(network, "decoder", None)
    return list(getattr(decoder, "seg_layers", []))


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(trainable, frozen)`` parameter counts."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in module.parameters()) - trainable
