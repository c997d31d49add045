"""DINOv3-FFA: frozen DINOv3 slice encoder + 3D ConvNeXt adapter + parallel FFA aggregator + heads.

Re-implementation of the few-shot vessel segmentation network of Yoshihara et al. (arXiv 2602.23782)
for nnU-Net v2. See ``DINOv3FFA`` for the data flow; all constructor arguments are JSON-friendly so
the network can be built from a plans file (``network_class_name`` =
``nnunet_fm.architectures.dinov3_ffa.DINOv3FFA``).
The building blocks live in :mod:`nnunet_fm.architectures.ffa_blocks` (adapter, decoder, heads) and
:mod:`nnunet_fm.architectures.ffa_aggregator` (parallel FFA aggregator).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nnunet_fm.architectures.ffa_aggregator import ParallelFFAAggregator
from nnunet_fm.architectures.ffa_blocks import (
    ChunkedHRHead2d,
    ConvNeXtPyramid3d,
    DepthGatedRefineHead,
    UNETRLiteDecoder,
)
from nnunet_fm.encoders import ENCODER_OPTIONS, build_encoder, no_fp16_autocast, zchannel_slices
from nnunet_fm.slice_axis import SLICE_AXIS_OPTION, check_slice_axis, slices_back, slices_first

__all__ = ["DINOv3FFA"]


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

        self.encoder = build_encoder(
            encoder,
            taps=taps,
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
