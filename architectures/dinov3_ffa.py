"""DINOv3-FFA: frozen DINOv3 slice encoder + 3D ConvNeXt adapter + parallel FFA aggregator + heads.

Re-implementation of the few-shot vessel segmentation network of Yoshihara et al. (arXiv 2602.23782)
for nnU-Net v2. See ``DINOv3FFA`` for the data flow; all constructor arguments are JSON-friendly so
the network can be built from a plans file (``network_class_name`` =
``nnunet_fm.architectures.dinov3_ffa.DINOv3FFA``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm, LayerScale, Mlp
from torch import nn
from torch.utils.checkpoint import checkpoint

from nnunet_fm.blocks import ConvNormAct, IntOrTuple, SqueezeExcite, as_tuple, resize_inplane, upsample_inplane
from nnunet_fm.encoders import ENCODER_OPTIONS, FrozenViTEncoder, no_fp16_autocast, zchannel_slices
from nnunet_fm.slice_axis import SLICE_AXIS_OPTION, check_slice_axis, slices_back, slices_first

__all__ = [
    "ChunkedHRHead2d",
    "ConvNeXtBlock3d",
    "ConvNeXtPyramid3d",
    "DINOv3FFA",
    "DepthGatedRefineHead",
    "FFABlock",
    "FFACore",
    "FiLM",
    "GatedSkipFusion",
    "ParallelFFAAggregator",
    "PooledSpatialAttention",
    "SliceAttention",
    "UNETRLiteDecoder",
    "UpBlock3d",
    "rope_1d",
]


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
        self.deep_supervision = False
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


class ChunkedHRHead2d(nn.Module):
    """Full-resolution 2D head run on chunks of ``chunk_slices`` slices.

    Input per slice: ``[up(logits), up(1x1(f2p.detach()))]`` (the adapter gets no gradient through
    this head). Body: 3x3 CNA -> depthwise 3x3 CNA -> pointwise CNA -> SE -> 1x1 classifier. The
    upsampling happens per chunk, so only one chunk of full-resolution activations exists at a time
    (with ``grad_checkpointing`` also during training).
    """

    def __init__(
        self,
        num_classes: int,
        f2_channels: int,
        skip_channels: int = 16,
        width: int = 128,
        chunk_slices: int = 16,
        grad_checkpointing: bool = True,
    ) -> None:
        super().__init__()
        if chunk_slices < 1:
            raise ValueError(f"hr_chunk_slices must be >= 1, got {chunk_slices}")
        self.chunk_slices = int(chunk_slices)
        self.grad_checkpointing = bool(grad_checkpointing)
        self.proj_f2 = nn.Conv3d(f2_channels, skip_channels, 1, bias=False)
        self.body = nn.Sequential(
            ConvNormAct(num_classes + skip_channels, width, 3, spatial_dims=2),
            ConvNormAct(width, width, 3, groups=width, spatial_dims=2),
            ConvNormAct(width, width, 1, spatial_dims=2),
            SqueezeExcite(width, 4),
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def _chunk(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="bilinear")
        return self.classifier(self.body(x))

    def forward(self, logits: torch.Tensor, f2: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        b, _, d = logits.shape[:3]
        size = (int(size[0]), int(size[1]))
        x = torch.cat([logits, self.proj_f2(f2.detach())], dim=1)
        x = x.transpose(1, 2).reshape(b * d, x.shape[1], *x.shape[-2:])
        ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        outs = []
        for start in range(0, b * d, self.chunk_slices):
            chunk = x[start : start + self.chunk_slices]
            if ckpt:
                outs.append(checkpoint(self._chunk, chunk, size, use_reentrant=False))
            else:
                outs.append(self._chunk(chunk, size))
        out = torch.cat(outs, dim=0) if len(outs) > 1 else outs[0]
        return out.reshape(b, d, -1, *size).transpose(1, 2)


class DINOv3FFA(nn.Module):
    """Frozen DINOv3 + 3D pyramidal adapter + parallel FFA aggregator + UNETR-Lite decoder + heads.

    ``forward(x[B, C_in, D, H, W]) -> logits[B, num_classes, D, H, W]`` (float32); H and W must be
    multiples of 16, any ``D`` in ``[1, agg_max_slices]``. With ``slice_axis`` s > 0 the input's spatial axis s
    holds the slices (nnU-Net's transposed layout): it is moved to D first and the logits moved back.

    Input mapping (``z = slice_index / D`` within the patch, the "Z-channel"):

    * encoder RGB per slice = ``(mm(ch0), mm(ch1) if C_in > 1 else mm(ch0), z)`` where ``mm`` is a
      per-slice min-max to [0, 1], then the encoder's mean/std. Channels beyond the second are not seen
      by the encoder.
    * the adapter sees all ``C_in`` input channels as given (nnU-Net-normalised) plus ``z``.

    Taps: ``taps`` are the three 0-based ViT blocks aggregated, in the roles of the reference's blocks
    5, 8 and 11 (low, mid, high). The reference also taps block 2 but never uses its aggregate
    downstream, so it is not computed here.

    Flow: encoder taps -> aggregator (shared core, per-tap FiLM) -> decoder (bottom = high tap,
    skip = mid tap, gated skip = low tap + adapter F3) -> logits at 1/4 -> depth-gated refine head
    with adapter F2 at 1/2 -> chunked 2D head at full resolution. No deep supervision.

    The constructor never loads encoder weights; call ``network.encoder.load_weights(...)``.
    """

    fm_options = (*ENCODER_OPTIONS, SLICE_AXIS_OPTION)

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        encoder: str = "vit_small_patch16_dinov3",
        encoder_kwargs: dict | None = None,
        taps: Sequence[int] = (4, 7, 10),
        vit_chunk_slices: int = 8,
        vit_amp: bool = False,
        adapter_channels: Sequence[int] = (48, 64),
        adapter_depth: int = 2,
        adapter_drop_path: float = 0.05,
        agg_depth: int = 2,
        agg_heads: int = 6,
        agg_attn_ratio: float = 0.5,
        agg_mlp_ratio: float = 4.0,
        agg_drop_path: float = 0.05,
        agg_max_slices: int = 512,
        rope_base: float = 10000.0,
        grad_checkpointing: bool = True,
        decoder_channels: int = 128,
        skip_gate_channels: int | None = 1,
        refine_skip_channels: int = 64,
        refine_channels: int = 128,
        refine_gate_channels: int | None = 1,
        hr_channels: int = 128,
        hr_skip_channels: int = 16,
        hr_chunk_slices: int = 16,
        slice_axis: int = 0,
    ) -> None:
        super().__init__()
        self.slice_axis = check_slice_axis(slice_axis)
        taps = tuple(int(t) for t in taps)
        if len(taps) != 3:
            raise ValueError(f"DINOv3FFA aggregates exactly 3 taps (low, mid, high ViT blocks), got {taps}")
        if input_channels < 1 or num_classes < 1:
            raise ValueError(f"bad input_channels={input_channels} / num_classes={num_classes}")
        adapter_channels = tuple(int(c) for c in adapter_channels)
        if len(adapter_channels) != 2:
            raise ValueError(f"adapter_channels must have 2 entries (F2, F3), got {adapter_channels}")
        self.input_channels = int(input_channels)
        self.num_classes = int(num_classes)
        self.taps = taps

        self.encoder = FrozenViTEncoder(
            encoder,
            taps=taps,
            weights=None,
            chunk_slices=vit_chunk_slices,
            amp=vit_amp,
            **(encoder_kwargs or {}),
        )
        dim = self.encoder.embed_dim
        self.patch_size = self.encoder.patch_size
        self.adapter = ConvNeXtPyramid3d(
            self.input_channels + 1, adapter_channels, depth=adapter_depth, drop_path=adapter_drop_path
        )
        self.aggregator = ParallelFFAAggregator(
            dim,
            num_taps=3,
            depth=agg_depth,
            num_heads=agg_heads,
            attn_ratio=agg_attn_ratio,
            mlp_ratio=agg_mlp_ratio,
            drop_path=agg_drop_path,
            max_slices=agg_max_slices,
            rope_base=rope_base,
            grad_checkpointing=grad_checkpointing,
        )
        self.decoder = UNETRLiteDecoder(
            dim, adapter_channels[1], self.num_classes, decoder_channels, skip_gate_channels
        )
        # F2 projected once (train.py f2_proj_ref), shared by the refine head and, detached, the HR head
        self.f2_proj = nn.Conv3d(adapter_channels[0], refine_skip_channels, 1, bias=False)
        self.refine_head = DepthGatedRefineHead(
            self.num_classes, refine_skip_channels, refine_channels, refine_gate_channels
        )
        self.hr_head = ChunkedHRHead2d(
            self.num_classes,
            refine_skip_channels,
            hr_skip_channels,
            hr_channels,
            hr_chunk_slices,
            grad_checkpointing,
        )

    def output_heads(self) -> list[nn.Module]:
        """Final classifier convs (refine head, HR head) whose biases a prior-bias hook may set."""
        return [self.refine_head.classifier, self.hr_head.classifier]

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.input_channels:
            raise ValueError(f"DINOv3FFA expects [B, {self.input_channels}, D, H, W] input, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(
                f"DINOv3FFA: in-plane patch size {h}x{w} (input {tuple(x.shape)}) must be a multiple of "
                f"{p} in H and W; choose e.g. {x.shape[2]}x{-(-h // p) * p}x{-(-w // p) * p} with "
                f"`nnunet-fm plans add ... --set patch_size=[D,H,W]` (H, W multiples of {p})."
            )

    @torch.no_grad()
    def encoder_images(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Build encoder slices ``[B*D, 3, H, W]`` from ``x`` and ``z [D]`` (the encoder's mean/std)."""
        return zchannel_slices(x, z, self.encoder.mean, self.encoder.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = slices_first(x, self.slice_axis)  # the encoder sees raw axial slices (nnunet_fm.slice_axis)
        self._check_input(x)
        with no_fp16_autocast(x.device.type):  # the aggregator sees the ViT's raw outliers
            return slices_back(self._forward(x), self.slice_axis)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, d, h, w = x.shape
        z = torch.arange(d, device=x.device, dtype=torch.float32) / d
        feats = [
            f.view(b, d, *f.shape[1:]).transpose(1, 2).to(x.dtype) for f in self.encoder(self.encoder_images(x, z))
        ]
        f2, f3 = self.adapter(torch.cat([x, z.to(x.dtype).view(1, 1, d, 1, 1).expand(b, 1, d, h, w)], 1))
        a_lo, a_mid, a_hi = self.aggregator(feats)
        logits = self.decoder(a_lo, a_mid, a_hi, f3)
        f2p = self.f2_proj(f2)
        logits = self.refine_head(logits, f2p)
        return self.hr_head(logits, f2p, (h, w)).float()


# ---- 3D pyramidal adapter and decoder blocks ----


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


# ---- Parallel FFA aggregator ----
# Parallel FFA aggregator: lifts per-slice 2D foundation features ``[B, C, D, h, w]`` to 3D.
#
# One :class:`FFACore` is shared by all taps; each tap gets its own input and output :class:`FiLM`.
# The core adds a learned slice position embedding, runs a 3x3x3 conv stem and then a stack of
# :class:`FFABlock` (slice attention with 1D RoPE, pooled global spatial attention, FFN), all
# pre-norm residual. The blocks work channels-last (``[B, D, h, w, C]``).


def rope_1d(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Apply 1D rotary position embedding along the second-to-last axis of ``x``.

    ``x``: ``[..., L, head_dim]`` (head_dim even); ``positions``: ``[L]`` (may be fractional).
    Channel pairs ``(i, i + head_dim/2)`` are rotated by ``positions * base**(-2i/head_dim)``, so
    ``<rope(q, p), rope(k, p')>`` depends on ``p' - p`` only. Computed in fp32, returned in x's dtype.
    """
    hd = x.shape[-1]
    if hd % 2:
        raise ValueError(f"rope_1d needs an even head dim, got {hd}")
    half = hd // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.to(device=x.device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    cos, sin = angles.cos(), angles.sin()
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def _check_heads(attn_dim: int, num_heads: int) -> int:
    if num_heads < 1 or attn_dim % num_heads:
        raise ValueError(
            f"FFA attention: num_heads={num_heads} must divide the attention dim {attn_dim} "
            f"(= embed_dim * attn_ratio); choose agg_heads among the divisors of {attn_dim}."
        )
    return attn_dim // num_heads


class SliceAttention(nn.Module):
    """Multi-head attention along depth, independently for every in-plane token.

    Input/output ``[B, D, h, w, C]``. q/k/v project ``C -> attn_dim``; q and k get a 1D RoPE over
    the slice index; the result is projected back ``attn_dim -> C``.
    """

    def __init__(self, dim: int, attn_dim: int, num_heads: int, rope_base: float = 10000.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = _check_heads(attn_dim, num_heads)
        if self.head_dim % 2:
            raise ValueError(f"SliceAttention: head dim {self.head_dim} must be even for RoPE")
        self.rope_base = float(rope_base)
        self.qkv = nn.Linear(dim, 3 * attn_dim, bias=False)
        self.proj = nn.Linear(attn_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w, c = x.shape
        t = x.permute(0, 2, 3, 1, 4).reshape(b * h * w, d, c)
        qkv = self.qkv(t).reshape(b * h * w, d, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        pos = torch.arange(d, device=x.device)
        q, k = rope_1d(q, pos, self.rope_base), rope_1d(k, pos, self.rope_base)
        o = F.scaled_dot_product_attention(q, k, v)
        o = self.proj(o.transpose(1, 2).reshape(b * h * w, d, -1))
        return o.reshape(b, h, w, d, c).permute(0, 3, 1, 2, 4)


class PooledSpatialAttention(nn.Module):
    """Global attention within each slice with pooled keys/values.

    Input/output ``[B, D, h, w, C]``. Queries come from all ``h*w`` tokens of a slice; keys and
    values from ``pool x pool`` average pooling with stride ``pool``, flooring as the reference's
    ``nn.AvgPool2d(kv_down, kv_down)`` does (vesselbridge3d ``train.py`` l. 834: 21x21 tokens -> 10x10, the
    last row and column unpooled); an axis shorter than ``pool`` is averaged whole.
    """

    def __init__(self, dim: int, attn_dim: int, num_heads: int, pool: int = 2) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = _check_heads(attn_dim, num_heads)
        self.pool = int(pool)
        self.q = nn.Linear(dim, attn_dim, bias=False)
        self.kv = nn.Linear(dim, 2 * attn_dim, bias=False)
        self.proj = nn.Linear(attn_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w, c = x.shape
        n = b * d
        t = x.reshape(n, h, w, c)
        kernel = (min(self.pool, h), min(self.pool, w))
        pooled = F.avg_pool2d(t.permute(0, 3, 1, 2), kernel).flatten(2).transpose(1, 2)
        q = self.q(t.reshape(n, h * w, c)).reshape(n, h * w, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv(pooled).reshape(n, pooled.shape[1], 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, kv[0], kv[1])
        o = self.proj(o.transpose(1, 2).reshape(n, h * w, -1))
        return o.reshape(b, d, h, w, c)


class FFABlock(nn.Module):
    """Pre-norm residual block: slice attention, pooled spatial attention, FFN (channels-last)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 6,
        attn_ratio: float = 0.5,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        rope_base: float = 10000.0,
        kv_pool: int = 2,
    ) -> None:
        super().__init__()
        attn_dim = int(dim * attn_ratio)
        self.norm1 = LayerNorm(dim)
        self.slice_attn = SliceAttention(dim, attn_dim, num_heads, rope_base)
        self.norm2 = LayerNorm(dim)
        self.spatial_attn = PooledSpatialAttention(dim, attn_dim, num_heads, kv_pool)
        self.norm3 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.slice_attn(self.norm1(x)))
        x = x + self.drop_path(self.spatial_attn(self.norm2(x)))
        return x + self.drop_path(self.mlp(self.norm3(x)))


class FFACore(nn.Module):
    """Shared aggregator core on ``[B, C, D, h, w]`` -> same shape.

    Slice position embedding (``max_slices`` rows, scaled by a learned gain initialised to 1) ->
    ``stem_depth`` x ConvNormAct(3x3x3, GroupNorm(8), SiLU) -> ``depth`` x :class:`FFABlock`.
    With ``grad_checkpointing`` the stem convs and blocks are recomputed in the backward pass while
    training (``torch.utils.checkpoint``, non-reentrant).
    """

    def __init__(
        self,
        dim: int,
        depth: int = 2,
        num_heads: int = 6,
        attn_ratio: float = 0.5,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        max_slices: int = 512,
        stem_depth: int = 2,
        norm_groups: int = 8,
        rope_base: float = 10000.0,
        kv_pool: int = 2,
        grad_checkpointing: bool = True,
    ) -> None:
        super().__init__()
        _check_heads(int(dim * attn_ratio), num_heads)
        self.max_slices = int(max_slices)
        self.grad_checkpointing = bool(grad_checkpointing)
        # vesselbridge3d train.py l. 932-933: nn.Embedding(max_depth, c), i.e. N(0, 1) rows, and a gain of 1
        self.slice_pos = nn.Parameter(torch.randn(self.max_slices, dim))
        self.slice_pos_gain = nn.Parameter(torch.ones(()))
        self.stem = nn.ModuleList([ConvNormAct(dim, dim, 3, norm_groups=norm_groups) for _ in range(stem_depth)])
        self.blocks = nn.ModuleList(
            [FFABlock(dim, num_heads, attn_ratio, mlp_ratio, drop_path, rope_base, kv_pool) for _ in range(depth)]
        )

    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(module, x, use_reentrant=False)
        return module(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[2]
        if d > self.max_slices:
            raise ValueError(f"FFACore: {d} slices exceed max_slices={self.max_slices}")
        pos = (self.slice_pos[:d] * self.slice_pos_gain).transpose(0, 1)
        x = x + pos[None, :, :, None, None].to(x.dtype)
        for conv in self.stem:
            x = self._run(conv, x)
        x = x.permute(0, 2, 3, 4, 1)
        for blk in self.blocks:
            x = self._run(blk, x)
        return x.permute(0, 4, 1, 2, 3).contiguous()


class ParallelFFAAggregator(nn.Module):
    """One shared :class:`FFACore` applied to ``num_taps`` feature maps with per-tap FiLM in/out.

    ``forward(feats)`` takes ``num_taps`` tensors ``[B, C, D, h, w]`` and returns as many, each
    ``film_out[i](core(film_in[i](feats[i])))``. The taps are run through the core together as
    one batch of ``num_taps * B``.
    """

    def __init__(self, dim: int, num_taps: int, **core_kwargs) -> None:
        super().__init__()
        self.num_taps = int(num_taps)
        self.core = FFACore(dim, **core_kwargs)
        self.film_in = nn.ModuleList([FiLM(dim) for _ in range(self.num_taps)])
        self.film_out = nn.ModuleList([FiLM(dim) for _ in range(self.num_taps)])

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(feats) != self.num_taps:
            raise ValueError(f"ParallelFFAAggregator expects {self.num_taps} taps, got {len(feats)}")
        x = torch.cat([film(f) for film, f in zip(self.film_in, feats)], dim=0)
        outs = self.core(x).chunk(self.num_taps, dim=0)
        return [film(o) for film, o in zip(self.film_out, outs)]
