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
from torch import nn
from torch.utils.checkpoint import checkpoint

from nnunet_fm.blocks import (
    ConvNeXtPyramid3d,
    ConvNormAct,
    GatedSkipFusion,
    SqueezeExcite,
    UpBlock3d,
    resize_inplane,
)
from nnunet_fm.encoders import ENCODER_OPTIONS, FrozenDINOv3, no_fp16_autocast, zchannel_slices
from nnunet_fm.ffa import ParallelFFAAggregator

__all__ = ["ChunkedHRHead2d", "DINOv3FFA", "DepthGatedRefineHead", "UNETRLiteDecoder"]


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
    multiples of 16, any ``D`` in ``[1, agg_max_slices]``.

    Input mapping (``z = slice_index / D`` within the patch, the "Z-channel"):

    * encoder RGB per slice = ``(mm(ch0), mm(ch1) if C_in > 1 else mm(ch0), z)`` where ``mm`` is a
      per-slice min-max to [0, 1], then ImageNet mean/std. Channels beyond the second are not seen
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

    fm_options = ENCODER_OPTIONS

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
    ) -> None:
        super().__init__()
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

        self.encoder = FrozenDINOv3(
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
        """Build ImageNet-normalised encoder slices ``[B*D, 3, H, W]`` from ``x`` and ``z [D]``."""
        return zchannel_slices(x, z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        with no_fp16_autocast(x.device.type):  # the aggregator sees the ViT's raw outliers
            return self._forward(x)

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
