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
from timm.layers import DropPath, LayerNorm, LayerScale, Mlp
from torch import nn

__all__ = [
    "ConvNeXtBlock3d",
    "ConvNeXtPyramid3d",
    "ConvNormAct",
    "FiLM",
    "GatedSkipFusion",
    "SqueezeExcite",
    "UpBlock3d",
    "conv_nd",
    "group_norm",
    "resize_inplane",
    "upsample_inplane",
]

IntOrTuple = int | Sequence[int]


def _tuple(value: IntOrTuple, n: int) -> tuple[int, ...]:
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
        k = _tuple(kernel_size, spatial_dims)
        conv = conv_nd(spatial_dims)(
            in_channels,
            out_channels,
            kernel_size=k,
            stride=_tuple(stride, spatial_dims),
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

    def __init__(self, channels: int, reduction: int = 4, act_layer: type[nn.Module] = nn.SiLU) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=tuple(range(2, x.ndim)))
        s = torch.sigmoid(self.fc2(self.act(self.fc1(s))))
        return x * s.view(*s.shape, *([1] * (x.ndim - 2)))


class FiLM(nn.Module):
    """Unconditional feature-wise affine modulation ``(1 + gamma) * x + beta`` on dim 1.

    ``gamma`` and ``beta`` are per-channel parameters initialised to zero, so the layer starts as
    the identity. Works for any tensor rank ``>= 2`` with channels on dim 1.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * (1.0 + self.gamma.view(shape)) + self.beta.view(shape)


class ConvNeXtBlock3d(nn.Module):
    """ConvNeXt-style 3D block with a parallel depth branch.

    ``dwconv(kernel)`` + ``dwconv(depth_kernel)`` (summed, both depthwise on the input channels,
    same stride) -> channels-last LayerNorm -> MLP ``in -> mlp_ratio*in -> out`` with GELU ->
    layer scale -> DropPath -> residual. The residual goes through a strided 1x1x1 conv when the
    channel count or resolution changes. With very few input channels (e.g. 2 at a network input)
    the LayerNorm output carries little information; the 1x1x1 shortcut keeps the linear signal.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        stride: IntOrTuple = 1,
        kernel_size: IntOrTuple = (3, 7, 7),
        depth_kernel_size: IntOrTuple = (3, 1, 1),
        mlp_ratio: float = 4.0,
        layer_scale_init: float = 1e-6,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        stride = _tuple(stride, 3)
        k, kd = _tuple(kernel_size, 3), _tuple(depth_kernel_size, 3)
        self.dwconv = nn.Conv3d(in_channels, in_channels, k, stride, tuple(s // 2 for s in k), groups=in_channels)
        self.dwconv_depth = nn.Conv3d(
            in_channels, in_channels, kd, stride, tuple(s // 2 for s in kd), groups=in_channels
        )
        self.norm = LayerNorm(in_channels)
        # hidden width from the input width, as vesselbridge3d's ConvNeXtAniso3DBlock (train.py ~449)
        self.mlp = Mlp(in_channels, int(mlp_ratio * in_channels), out_channels, act_layer=nn.GELU)
        self.ls = LayerScale(out_channels, init_values=layer_scale_init)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if in_channels != out_channels or any(s != 1 for s in stride):
            self.shortcut: nn.Module = nn.Conv3d(in_channels, out_channels, 1, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x) + self.dwconv_depth(x)
        y = self.ls(self.mlp(self.norm(y.permute(0, 2, 3, 4, 1))))
        return self.shortcut(x) + self.drop_path(y.permute(0, 4, 1, 2, 3))


class ConvNeXtPyramid3d(nn.Module):
    """Pyramid of :class:`ConvNeXtBlock3d` stages returning one feature map per stage.

    Stage ``i`` has ``depth`` blocks of ``channels[i]`` channels; its first block downsamples by
    ``stride`` (default ``(1, 2, 2)``: in-plane only). With the defaults the outputs are at 1/2, 1/4,
    ... of the input's in-plane size.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int] = (48, 64),
        depth: int = 2,
        stride: IntOrTuple = (1, 2, 2),
        drop_path: float = 0.0,
        **block_kwargs,
    ) -> None:
        super().__init__()
        if depth < 1 or len(channels) < 1:
            raise ValueError("ConvNeXtPyramid3d needs at least one stage of at least one block")
        self.channels = tuple(int(c) for c in channels)
        stages = []
        prev = in_channels
        for ch in self.channels:
            blocks = [
                ConvNeXtBlock3d(
                    prev if i == 0 else ch,
                    ch,
                    stride=stride if i == 0 else 1,
                    drop_path=drop_path,
                    **block_kwargs,
                )
                for i in range(depth)
            ]
            stages.append(nn.Sequential(*blocks))
            prev = ch
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class UpBlock3d(nn.Module):
    """UNETR-Lite style decoder step on ``[N, C, D, H, W]`` tensors.

    ``x`` is upsampled in-plane by ``factor`` (trilinear), ``skip`` is resized to match; both are
    projected to ``out_channels`` by 1x1x1 convs, concatenated, passed through two
    ``(1, 3, 3)`` ConvNormAct layers and a squeeze-excitation.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        factor: int = 2,
        kernel_size: IntOrTuple = (1, 3, 3),
        se_reduction: int = 4,
        norm_groups: int = 8,
    ) -> None:
        super().__init__()
        self.factor = int(factor)
        self.proj_x = nn.Conv3d(in_channels, out_channels, 1)
        self.proj_skip = nn.Conv3d(skip_channels, out_channels, 1)
        self.conv1 = ConvNormAct(2 * out_channels, out_channels, kernel_size, norm_groups=norm_groups)
        self.conv2 = ConvNormAct(out_channels, out_channels, kernel_size, norm_groups=norm_groups)
        self.se = SqueezeExcite(out_channels, se_reduction)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = upsample_inplane(x, self.factor)
        skip = resize_inplane(skip, x.shape[-2:])
        x = torch.cat([self.proj_x(x), self.proj_skip(skip)], dim=1)
        return self.se(self.conv2(self.conv1(x)))


class GatedSkipFusion(nn.Module):
    """Fuse a coarse feature ``a`` with a finer one ``f``: ``a + sigmoid(W[a, P f]) * P f``.

    ``a`` is resized in-plane to ``f``'s size first; ``P`` (1x1x1, no bias) maps ``f`` to ``a``'s channels
    and ``W`` (1x1x1) produces the gate: ``gate_channels`` per voxel (1 in vesselbridge3d's ``f3_gate3d``;
    ``None`` = one per channel). Output: ``a``'s channels at ``f``'s size.
    """

    def __init__(self, channels: int, fine_channels: int, gate_channels: int | None = 1) -> None:
        super().__init__()
        self.proj = nn.Conv3d(fine_channels, channels, 1, bias=False)
        self.gate = nn.Conv3d(2 * channels, gate_channels or channels, 1)

    def forward(self, a: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        a = resize_inplane(a, f.shape[-2:])
        pf = self.proj(f)
        return a + torch.sigmoid(self.gate(torch.cat([a, pf], dim=1))) * pf
