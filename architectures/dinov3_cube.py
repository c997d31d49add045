"""DINOv3 sub-cube network: frozen 2D DINOv3 features, per-cube depth embedding and light 3D heads.

Our reading of the DINOv3 sub-cube model (arXiv 2602.23962; only the abstract is public, the
choices below are ours):

- **Cubes.** The patch ``(D, H, W)`` is tiled by non-overlapping sub-cubes of ``cube_size``
  (``None`` = one cube = the whole patch). Cube ``i`` is the ``i``-th cell of the grid in C order
  (depth-major). ``H`` and ``W`` of a cube must be multiples of the ViT patch size (16).
- **Input mapping** (per slice of a cube): channel 0 min-max scaled to [0, 1] over the cube's
  in-plane extent; RGB = (ch0, ch1 scaled the same way or ch0 again when there is one channel,
  z) with ``z = slice index in the patch / (D - 1)`` (the patch, not the volume: a sliding window
  does not know its absolute depth); then the encoder's mean/std (its timm ``pretrained_cfg``).
- **Encoder.** One shared frozen encoder (:func:`~nnunet_fm.encoders.build_encoder`: a timm ViT or a
  registered class); all ``taps`` are kept and concatenated on channels (``[B, T*E, d, h, w]`` at 1/16
  in-plane), the head's first 1x1x1 conv is thus a learned fusion of the taps (``taps=(10,)`` uses the last
  tap only). Encoder weights are not loaded here (random init); the trainer loads them after building the
  network.
- **Depth embedding** (learned, added after the head's projection): an embedding of the slice
  position inside the cube (``cube_size[0]`` rows) plus an embedding of the cube's depth index in
  the patch (one row per cube layer along D). Both are shared by all arms.
- **Head** (one shared, or one per cube position with ``separate_arms``): 1x1x1 projection to
  ``head_width`` + GroupNorm + SiLU, + depth embedding, ``refine_convs`` 3x3x3 conv+GN+SiLU blocks at
  1/16, then one stage per factor 2 of in-plane upsampling (trilinear x2 in-plane -> (1,3,3)
  conv+GN+SiLU, widths ``up_widths``), concatenation with a full-resolution detail branch
  (3x3x3 conv+GN+SiLU on the raw input, ``detail_width`` channels), a 3x3x3 fusion conv+GN+SiLU and
  a 1x1x1 classifier. No dropout, DropPath or BatchNorm: decoding a cube twice gives identical
  results, as two-pass training (:mod:`nnunet_fm.architectures.dinov3_cube_two_pass`) requires.

The network implements the cube protocol (:class:`~nnunet_fm.architectures.dinov3_cube_two_pass.SubCubeNetwork`);
plain ``forward`` decodes every cube with ordinary autograd and re-assembles ``[B, num_classes, D, H, W]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from nnunet_fm.architectures.dinov3_cube_two_pass import run_cubes
from nnunet_fm.blocks import ConvNormAct, upsample_inplane
from nnunet_fm.encoders import ENCODER_OPTIONS, build_encoder, encoder_spec, no_fp16_autocast, zchannel_slices
from nnunet_fm.options import SIGNATURE, Option
from nnunet_fm.slice_axis import (
    SLICE_AXIS_OPTION,
    check_slice_axis,
    from_canonical,
    slices_back,
    slices_first,
    to_canonical,
)

__all__ = ["CubeDepthEmbedding", "CubeHead", "DINOv3Cube", "valid_cube_sizes"]

Region = tuple[slice, slice, slice]


def valid_cube_sizes(patch_size: Sequence[int], multiple: int = 16) -> list[list[int]]:
    """Cube sizes allowed per axis: divisors of the patch axis, in-plane also multiples of ``multiple``."""
    out = []
    for axis, n in enumerate(patch_size):
        divisors = [d for d in range(1, int(n) + 1) if n % d == 0]
        if axis > 0:
            divisors = [d for d in divisors if d % multiple == 0]
        out.append(divisors)
    return out


def _check_cube_size(patch_size: list[int], cube_size: list[int], multiple: int) -> None:
    """Raise ValueError unless ``cube_size`` tiles ``patch_size`` and is in-plane a multiple of 16."""
    valid = valid_cube_sizes(patch_size, multiple)
    ok = len(cube_size) == 3 and all(c in v for c, v in zip(cube_size, valid))
    if not ok:
        choices = ", ".join(f"{ax}: {v}" for ax, v in zip("DHW", valid))
        raise ValueError(
            f"DINOv3Cube: cube_size {cube_size} does not tile patch_size {patch_size} with in-plane sizes "
            f"that are multiples of {multiple}. Valid cube sizes per axis: {choices}."
        )


def _check_encoder_stride(encoder: str, stride: int) -> None:
    """The head up-samples the 1/stride token grid by x2 stages: the encoder's patch size must be a power of 2."""
    if stride & (stride - 1):
        raise ValueError(
            f"DINOv3Cube up-samples the encoder's 1/{stride} token grid by x2 stages, so it needs an encoder "
            f"whose patch size is a power of 2; '{encoder}' has patch size {stride}. Use a patch-16 encoder "
            "(e.g. vit_small_patch16_dinov3) here, or the DINOv3-FFA network (template dinov3_ffa), which takes "
            "any patch size."
        )


class CubeDepthEmbedding(nn.Module):
    """Learned embedding of the slice position inside a cube plus one of the cube's depth index."""

    def __init__(self, channels: int, cube_depth: int, num_cube_layers: int) -> None:
        super().__init__()
        self.slice_embed = nn.Parameter(torch.zeros(cube_depth, channels))
        self.cube_embed = nn.Parameter(torch.zeros(num_cube_layers, channels))
        nn.init.trunc_normal_(self.slice_embed, std=0.02)
        nn.init.trunc_normal_(self.cube_embed, std=0.02)

    def forward(self, x: Tensor, cube_layer: int) -> Tensor:
        """Add the embedding to ``x`` of shape ``[B, C, cube_depth, h, w]``."""
        emb = self.slice_embed + self.cube_embed[cube_layer]
        return x + emb.t().reshape(1, x.shape[1], x.shape[2], 1, 1).to(x.dtype)


class _UpStage(nn.Module):
    """Trilinear x2 in-plane upsampling followed by a (1,3,3) conv+GN+SiLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvNormAct(cin, cout, (1, 3, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(upsample_inplane(x, 2))


class CubeHead(nn.Module):
    """Dense decoding head of one arm: 1/16-resolution cube features -> full-resolution cube logits."""

    def __init__(
        self,
        feature_channels: int,
        input_channels: int,
        num_classes: int,
        head_width: int,
        up_widths: Sequence[int],
        detail_width: int,
        refine_convs: int,
    ) -> None:
        super().__init__()
        self.proj = ConvNormAct(feature_channels, head_width, (1, 1, 1))
        self.refine = nn.Sequential(*[ConvNormAct(head_width, head_width, (3, 3, 3)) for _ in range(refine_convs)])
        widths = [head_width, *up_widths]
        self.up = nn.Sequential(*[_UpStage(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.detail = ConvNormAct(input_channels, detail_width, (3, 3, 3))
        self.fuse = ConvNormAct(widths[-1] + detail_width, widths[-1], (3, 3, 3))
        self.classifier = nn.Conv3d(widths[-1], num_classes, 1)

    def forward(self, features: Tensor, x_cube: Tensor, depth_embed: nn.Module, cube_layer: int) -> Tensor:
        """Decode ``features [B, F, d, h, w]`` with raw ``x_cube [B, C, d, H, W]`` into logits."""
        y = depth_embed(self.proj(features), cube_layer)
        y = self.up(self.refine(y))
        y = self.fuse(torch.cat([y, self.detail(x_cube.to(y.dtype))], dim=1))
        return self.classifier(y)


class DINOv3Cube(nn.Module):
    """Sub-cube segmentation network on a frozen DINOv3 encoder (see the module docstring)."""

    fm_options = (
        *ENCODER_OPTIONS,
        SLICE_AXIS_OPTION,
        Option(
            "cube_size",
            SIGNATURE,
            "Sub-cube size [D, H, W], D along the slice axis (null = one cube = the whole patch).",
            "int_list",
            True,
        ),
        Option("separate_arms", SIGNATURE, "One decoding arm per cube position instead of a shared one.", "bool"),
    )

    @staticmethod
    def fm_check_options(values: dict) -> None:
        """Refuse, at ``plans add`` time, an encoder this network cannot up-sample (ValueError)."""
        spec = encoder_spec(values["encoder"], values.get("encoder_kwargs"))
        _check_encoder_stride(values["encoder"], spec.patch_size)

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        patch_size: Sequence[int],
        encoder: str = "vit_small_patch16_dinov3",
        encoder_kwargs: dict | None = None,
        taps: Sequence[int] = (1, 4, 7, 10),
        vit_chunk_slices: int = 8,
        vit_amp: bool = False,
        cube_size: Sequence[int] | None = None,
        separate_arms: bool = False,
        head_width: int = 64,
        up_widths: Sequence[int] = (48, 32, 24, 16),
        detail_width: int = 8,
        refine_convs: int = 2,
        slice_axis: int = 0,
    ) -> None:
        super().__init__()
        self.slice_axis = check_slice_axis(slice_axis)
        if len(patch_size) != 3:
            raise ValueError(f"DINOv3Cube: patch_size must have 3 entries (D, H, W), got {list(patch_size)}.")
        self.input_patch_size = [int(p) for p in patch_size]  # nnU-Net's axis order
        self.patch_size = to_canonical(self.input_patch_size, self.slice_axis)  # slices first
        self.encoder = build_encoder(
            encoder,
            taps=tuple(taps),
            chunk_slices=vit_chunk_slices,
            amp=vit_amp,
            **dict(encoder_kwargs or {}),
        )
        stride = self.encoder.patch_size
        _check_encoder_stride(encoder, stride)
        self.cube_size = [int(c) for c in (cube_size if cube_size is not None else self.patch_size)]
        _check_cube_size(self.patch_size, self.cube_size, stride)
        n_up = int(round(math.log2(stride)))
        if 2**n_up != stride or len(up_widths) != n_up:
            raise ValueError(
                f"DINOv3Cube: up_widths needs one width per x2 upsampling stage ({n_up} for encoder "
                f"stride {stride}), got {list(up_widths)}."
            )
        self.input_channels = int(input_channels)
        self.num_classes = int(num_classes)
        self.grid = tuple(p // c for p, c in zip(self.patch_size, self.cube_size))
        cells = list(np.ndindex(*self.grid))
        self.num_cubes = len(cells)
        self._regions: list[Region] = [
            tuple(from_canonical([slice(i * c, (i + 1) * c) for i, c in zip(cell, self.cube_size)], self.slice_axis))
            for cell in cells
        ]
        self._cube_layers = [int(cell[0]) for cell in cells]
        self.separate_arms = bool(separate_arms)
        self.depth_embed = CubeDepthEmbedding(head_width, self.cube_size[0], self.grid[0])
        n_heads = self.num_cubes if self.separate_arms else 1
        self.heads = nn.ModuleList(
            CubeHead(
                self.encoder.embed_dim * self.encoder.num_taps,
                self.input_channels,
                self.num_classes,
                head_width,
                up_widths,
                detail_width,
                refine_convs,
            )
            for _ in range(n_heads)
        )

    def output_heads(self) -> list[nn.Module]:
        """Final classifier convs (``num_classes`` biases each), one per arm."""
        return [h.classifier for h in self.heads]

    def cube_slices(self, spatial_shape: Sequence[int]) -> list[Region]:
        """Regions of the cubes tiling a patch (input axis order), in cube-index order (shape = patch_size)."""
        if [int(s) for s in spatial_shape] != self.input_patch_size:
            raise ValueError(
                f"DINOv3Cube: input spatial shape {list(spatial_shape)} differs from the patch_size "
                f"{self.input_patch_size} the network was built for."
            )
        return list(self._regions)

    def _cube_layer(self, cube_index: int) -> int:
        """Depth index (along D) of cube ``cube_index`` in the cube grid."""
        return self._cube_layers[cube_index]

    def _rgb_slices(self, x_cube: Tensor, cube_index: int) -> Tensor:
        """Map ``[B, C, d, H, W]`` to RGB slices ``[B*d, 3, H, W]`` normalised with the encoder's mean/std."""
        d = x_cube.shape[2]
        first = self._cube_layer(cube_index) * self.cube_size[0]
        z = (first + torch.arange(d, device=x_cube.device, dtype=torch.float32)) / max(self.patch_size[0] - 1, 1)
        return zchannel_slices(x_cube, z, self.encoder.mean, self.encoder.std)

    @torch.no_grad()
    def encode_cube(self, x_cube: Tensor, cube_index: int) -> Tensor:
        """Frozen features of one cube (input axis order): the taps concatenated, ``[B, T*E, d, H/16, W/16]``."""
        x_cube = slices_first(x_cube, self.slice_axis)
        b, _, d = x_cube.shape[:3]
        taps = self.encoder(self._rgb_slices(x_cube, cube_index))
        feats = torch.cat(taps, dim=1)
        n, f, h, w = feats.shape
        return feats.view(b, d, f, h, w).transpose(1, 2).contiguous()

    def decode_cube(self, features: Tensor, x_cube: Tensor, cube_index: int) -> Tensor:
        """Trainable head of one cube: logits in the input's axis order (``[B, num_classes, d, H, W]`` when
        ``slice_axis`` is 0); ``features`` as :meth:`encode_cube` returns them (slices first)."""
        head = self.heads[cube_index if self.separate_arms else 0]
        x_cube = slices_first(x_cube, self.slice_axis)
        with no_fp16_autocast(x_cube.device.type):  # the head's first conv sees the ViT's raw outliers
            logits = head(features, x_cube, self.depth_embed, self._cube_layer(cube_index))
        return slices_back(logits, self.slice_axis)

    def forward(self, x: Tensor) -> Tensor:
        """Encode and decode every cube and re-assemble ``[B, num_classes, D, H, W]``."""
        return run_cubes(self, x)[0]
