"""3D convolutional blocks of DINOv3-FFA: adapter, decoder and heads.

FiLM, the ConvNeXt-style 3D pyramidal adapter (``ConvNeXtBlock3d``, ``ConvNeXtPyramid3d``), the
UNETR-Lite decoder (``UpBlock3d``, ``GatedSkipFusion``, ``UNETRLiteDecoder``) and the output heads
(``DepthGatedRefineHead``, ``ChunkedHRHead2d``) used by :class:`nnunet_fm.architectures.dinov3_ffa.DINOv3FFA`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm, LayerScale, Mlp
from torch import nn
from torch.utils.checkpoint import checkpoint

from nnunet_fm.blocks import ConvNormAct, IntOrTuple, SqueezeExcite, as_tuple, resize_inplane, upsample_inplane

__all__ = [
    "ChunkedHRHead2d",
    "ConvNeXtBlock3d",
    "ConvNeXtPyramid3d",
    "DepthGatedRefineHead",
    "FiLM",
    "GatedSkipFusion",
    "UNETRLiteDecoder",
    "UpBlock3d",
]


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
        stride = as_tuple(stride, 3)
        k, kd = as_tuple(kernel_size, 3), as_tuple(depth_kernel_size, 3)
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


class UNETRLiteDecoder(nn.Module):
    """Decoder from aggregated taps ``(a_lo, a_mid, a_hi)`` at 1/16 and adapter ``f3`` at 1/4.

    ``bottom = SiLU(GN(1x1(a_hi)))`` -> up-block (x2, skip ``a_mid``) -> up-block (x2, skip =
    gated fusion of ``a_lo`` upsampled to ``f3``'s size with ``f3``) -> (1,3,3) ConvNormAct ->
    1x1 classifier. Returns logits at ``f3``'s (1/4) in-plane resolution.
    """

    def __init__(
        self, dim: int, f3_channels: int, num_classes: int, width: int = 128, skip_gate_channels: int | None = 1
    ) -> None:
        super().__init__()
        self.bottom = ConvNormAct(dim, width, 1)
        self.up1 = UpBlock3d(width, dim, width)
        self.fuse = GatedSkipFusion(dim, f3_channels, skip_gate_channels)
        self.up2 = UpBlock3d(width, dim, width)
        self.refine = ConvNormAct(width, width, (1, 3, 3))
        self.classifier = nn.Conv3d(width, num_classes, 1)

    def forward(self, a_lo: torch.Tensor, a_mid: torch.Tensor, a_hi: torch.Tensor, f3: torch.Tensor):
        x = self.up1(self.bottom(a_hi), a_mid)
        x = self.up2(x, self.fuse(a_lo, f3))
        x = resize_inplane(x, f3.shape[-2:])
        return self.classifier(self.refine(x))


class DepthGatedRefineHead(nn.Module):
    """Refine 1/4-res logits at the (1/2) resolution of the projected adapter feature ``f2p``.

    ``x = [up(logits), f2p]``; ``g = sigmoid(1x1(x))``; ``h = CNA(1,3,3)(x)``; ``h2d = CNA(1,3,3)(h)``;
    ``h3d = CNA(1,3,3)(conv(3,1,1)(h))``; ``out = 1x1(SE(h2d + g * h3d))``. The gate has ``gate_channels``
    channels: 1 in the reference (vesselbridge3d ``train.py`` ``Refine3DHead``: one depth gate per voxel),
    ``None`` for one gate per channel.
    """

    def __init__(self, num_classes: int, f2p_channels: int, width: int = 128, gate_channels: int | None = 1) -> None:
        super().__init__()
        in_ch = num_classes + f2p_channels
        self.gate = nn.Conv3d(in_ch, gate_channels or width, 1)
        self.conv_in = ConvNormAct(in_ch, width, (1, 3, 3))
        self.conv_2d = ConvNormAct(width, width, (1, 3, 3))
        self.conv_3d = nn.Sequential(
            nn.Conv3d(width, width, (3, 1, 1), padding=(1, 0, 0), bias=False),
            ConvNormAct(width, width, (1, 3, 3)),
        )
        self.se = SqueezeExcite(width, 4)
        self.classifier = nn.Conv3d(width, num_classes, 1)

    def forward(self, logits: torch.Tensor, f2p: torch.Tensor) -> torch.Tensor:
        x = torch.cat([resize_inplane(logits, f2p.shape[-2:]), f2p], dim=1)
        g = torch.sigmoid(self.gate(x))
        h = self.conv_in(x)
        return self.classifier(self.se(self.conv_2d(h) + g * self.conv_3d(h)))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


#: Full-width maps one slice of :class:`ChunkedHRHead2d`'s body keeps for backward (three conv + GroupNorm +
#: SiLU layers and the SE output), the unit of its chunk budget.
HR_MAPS_PER_SLICE = 10


class ChunkedHRHead2d(nn.Module):
    """Full-resolution 2D head run on chunks of slices whose activations fit ``chunk_mib`` MiB.

    Input per slice: ``[up(logits), up(1x1(skip))]`` where ``skip`` is the projected adapter feature, given
    by the caller without gradient (the adapter gets none through this head). Body: 3x3 CNA -> depthwise
    3x3 CNA -> pointwise CNA -> SE -> 1x1 classifier. Every layer works per slice (2D GroupNorm and SE), so
    chunking is exact. The upsampling happens per chunk, so only one chunk of full-resolution activations
    exists at a time (with ``grad_checkpointing`` also during training: the chunk is recomputed in backward).
    A chunk holds ``max(1, chunk_mib / slice bytes)`` slices, a slice costing ``HR_MAPS_PER_SLICE`` fp32
    maps of ``width`` channels at full resolution (vesselbridge3d uses a fixed 16 slices, ``hr2d_chunk``).
    """

    def __init__(
        self,
        num_classes: int,
        f2_channels: int,
        skip_channels: int = 16,
        width: int = 128,
        chunk_mib: float = 1024.0,
        grad_checkpointing: bool = True,
    ) -> None:
        super().__init__()
        if not chunk_mib > 0:
            raise ValueError(f"hr_chunk_mib must be > 0, got {chunk_mib}")
        self.chunk_mib = float(chunk_mib)
        self.width = int(width)
        self.grad_checkpointing = bool(grad_checkpointing)
        self.proj_f2 = nn.Conv3d(f2_channels, skip_channels, 1, bias=False)
        self.body = nn.Sequential(
            ConvNormAct(num_classes + skip_channels, width, 3, spatial_dims=2),
            ConvNormAct(width, width, 3, groups=width, spatial_dims=2),
            ConvNormAct(width, width, 1, spatial_dims=2),
            SqueezeExcite(width, 4),
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def chunk_slices(self, size: Sequence[int]) -> int:
        """Slices per chunk at full-resolution ``size`` (H, W)."""
        slice_bytes = HR_MAPS_PER_SLICE * self.width * int(size[0]) * int(size[1]) * 4
        return max(1, int(self.chunk_mib * 2**20 // slice_bytes))

    def _chunk(
        self, logits: torch.Tensor, skip: torch.Tensor, skip_fn: Callable[[torch.Tensor], torch.Tensor], size
    ) -> torch.Tensor:
        with torch.no_grad():
            skip = skip_fn(skip)
        x = torch.cat([logits, self.proj_f2(skip)], dim=1)  # [1, C, n, h, w]
        x = x[0].transpose(0, 1)  # the chunk's slices as a batch of 2D images
        x = F.interpolate(x, size=size, mode="bilinear")
        return self.classifier(self.body(x)).transpose(0, 1)[None]

    def forward(
        self,
        logits: torch.Tensor,
        skip: torch.Tensor,
        size: Sequence[int],
        skip_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``logits [B, K, D, h, w]`` and ``skip [B, C, D, h, w]`` -> ``[B, K, D, *size]``; ``skip_fn`` (run
        without gradient, per chunk) maps ``skip`` to this head's ``f2_channels``."""
        b, _, d = logits.shape[:3]
        size = (int(size[0]), int(size[1]))
        skip_fn = skip_fn or _identity
        n = self.chunk_slices(size)
        ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        out = None
        for i in range(b):
            for start in range(0, d, n):
                part = (slice(i, i + 1), slice(None), slice(start, start + n))
                args = (logits[part], skip[part], skip_fn, size)
                y = checkpoint(self._chunk, *args, use_reentrant=False) if ckpt else self._chunk(*args)
                if out is None:
                    out = y.new_empty((b, y.shape[1], d, *size))
                out[part] = y
        return out
