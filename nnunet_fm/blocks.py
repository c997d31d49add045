"""Generic building blocks shared by the nnunet-fm networks.

Everything here works on channels-first tensors (``[N, C, *spatial]``) unless stated otherwise and
is dimension-agnostic where it can be (``spatial_dims`` 2 or 3). Blocks that change the in-plane
resolution of 3D tensors treat dim 2 as depth (``D``) and dims 3, 4 as the image plane (``H, W``):
strides and upsampling factors of ``(1, 2, 2)`` never touch the slice axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import gcd

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ConvNormAct",
    "SqueezeExcite",
    "IntOrTuple",
    "as_tuple",
    "conv_nd",
    "group_norm",
    "resize_inplane",
    "upsample_inplane",
]

IntOrTuple = int | Sequence[int]


def as_tuple(value: IntOrTuple, n: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"expected an int or {n} ints, got {value}")
    return value


def conv_nd(spatial_dims: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    """Return ``nn.Conv2d`` or ``nn.Conv3d`` for ``spatial_dims`` 2 or 3."""
    if spatial_dims == 2:
        return nn.Conv2d
    if spatial_dims == 3:
        return nn.Conv3d
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


def group_norm(channels: int, groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with at most ``groups`` groups, reduced to a divisor of ``channels`` if needed."""
    return nn.GroupNorm(gcd(int(channels), int(groups)), channels)


def upsample_inplane(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Upsample ``[N, C, D, H, W]`` by ``factor`` in H and W only (trilinear, depth untouched)."""
    return F.interpolate(x, scale_factor=(1.0, float(factor), float(factor)), mode="trilinear")


def resize_inplane(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize ``[N, C, D, H, W]`` to in-plane ``size = (H', W')`` (trilinear, depth untouched)."""
    h, w = int(size[0]), int(size[1])
    if x.shape[-2:] == (h, w):
        return x
    return F.interpolate(x, size=(x.shape[2], h, w), mode="trilinear")


class ConvNormAct(nn.Sequential):
    """Convolution -> GroupNorm -> activation (SiLU by default), 2D or 3D, 'same' padding.

    ``kernel_size``/``stride`` may be per-dimension tuples, e.g. ``(1, 3, 3)`` for an in-plane conv.
    ``groups=in_channels`` gives a depthwise conv. The conv has no bias (the norm follows it).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple = 3,
        stride: IntOrTuple = 1,
        groups: int = 1,
        spatial_dims: int = 3,
        norm_groups: int = 8,
        act_layer: type[nn.Module] | None = nn.SiLU,
    ) -> None:
        k = as_tuple(kernel_size, spatial_dims)
        conv = conv_nd(spatial_dims)(
            in_channels,
            out_channels,
            kernel_size=k,
            stride=as_tuple(stride, spatial_dims),
            padding=tuple(s // 2 for s in k),
            groups=groups,
            bias=False,
        )
        act = act_layer() if act_layer is not None else nn.Identity()
        super().__init__(conv, group_norm(out_channels, norm_groups), act)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation channel gating for ``[N, C, *spatial]`` tensors of any spatial rank.

    Global average pool -> Linear(C, C/reduction) -> SiLU -> Linear -> sigmoid -> rescale channels.
    """

    def __init__(
        self, channels: int, reduction: int = 4, act_layer: type[nn.Module] = nn.SiLU, min_hidden: int = 1
    ) -> None:
        super().__init__()
        hidden = max(min_hidden, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=tuple(range(2, x.ndim)))
        s = torch.sigmoid(self.fc2(self.act(self.fc1(s))))
        return x * s.view(*s.shape, *([1] * (x.ndim - 2)))
