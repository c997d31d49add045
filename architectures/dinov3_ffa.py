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
from torch.utils.checkpoint import checkpoint

from nnunet_fm.architectures.ffa_aggregator import ParallelFFAAggregator
from nnunet_fm.architectures.ffa_blocks import (
    ChunkedHRHead2d,
    ConvNeXtPyramid3d,
    DepthGatedRefineHead,
    UNETRLiteDecoder,
)
from nnunet_fm.encoders import ENCODER_OPTIONS, build_encoder, no_fp16_autocast, zchannel_slices
from nnunet_fm.options import SIGNATURE, Option
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

    fm_options = (
        *ENCODER_OPTIONS,
        SLICE_AXIS_OPTION,
        Option(
            "hr_chunk_mib",
            SIGNATURE,
            "Memory budget (MiB, fp32 estimate) of one chunk of slices in the full-resolution head; a chunk holds "
            "at least one slice. Smaller: less memory; the result is the same.",
            "float",
            minimum=1.0,
        ),
        Option(
            "encoder_rope_rescale",
            SIGNATURE,
            "Train-time RoPE coordinate rescaling of the frozen DINOv3 encoder: a log-uniform factor in [1/R, R] per "
            "encoder call while training (HF DINOv3 in train mode, R = 2: vesselbridge3d trains with it); null = "
            "off (the encoder sees the same coordinates as at inference). Encoders without DINOv3's RoPE (DINOv2) "
            "have nothing to rescale and ignore it.",
            "float",
            nullable=True,
            minimum=1.0,
        ),
        Option(
            "grad_checkpointing",
            SIGNATURE,
            "Recompute the adapter, aggregator, decoder and heads in backward instead of keeping their activations "
            "(as vesselbridge3d); same gradients, far less memory, about one extra forward of compute.",
            "bool",
        ),
    )

    #: modules recomputed in backward (nnunet_fm.memory_plan): per-sample segments grow with the crop depth, the
    #: full-resolution head's body runs one byte-bounded chunk at a time
    memory_segments = {
        "adapter": "depth",
        "aggregator": "depth",
        "decoder": "depth",
        "refine_head": "depth",
        "hr_head.body": "chunk",
    }

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        encoder: str = "vit_small_patch16_dinov3",
        encoder_kwargs: dict | None = None,
        taps: Sequence[int] = (4, 7, 10),
        vit_chunk_slices: int = 8,
        vit_amp: bool = False,
        encoder_rope_rescale: float | None = None,
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
        hr_chunk_mib: float = 1024.0,
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
        self.grad_checkpointing = bool(grad_checkpointing)
        self.num_classes = int(num_classes)
        self.taps = taps

        self.encoder = build_encoder(
            encoder,
            taps=taps,
            chunk_slices=vit_chunk_slices,
            amp=vit_amp,
            **({"rope_rescale": encoder_rope_rescale} if encoder_rope_rescale is not None else {}),
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
            hr_chunk_mib,
            grad_checkpointing,
        )

    def memory_probe_inplane(self, inplane: Sequence[int]) -> tuple[int, int]:
        """In-plane size at which :mod:`nnunet_fm.memory_plan` measures this network (4 x 4 encoder tokens, or the
        real size when smaller): its activation bytes scale with the in-plane area."""
        side = 4 * self.patch_size
        return (min(int(inplane[0]), side), min(int(inplane[1]), side))

    def memory_chunk_slices(self, inplane: Sequence[int]) -> int:
        """Slices per chunk of the full-resolution head at ``inplane``."""
        return self.hr_head.chunk_slices(inplane)

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

    def _per_sample(self, fn, *args):
        """``fn(*args)`` run one batch element at a time, each recomputed in backward instead of kept when
        checkpointing a training step (vesselbridge3d ``train.py`` l. 635-700 checkpoints its adapter, aggregator,
        decoder and heads on the whole batch). Every segment is per-sample (GroupNorm, SE, LayerNorm, attention
        and DropPath act within a sample), so the split changes no result and divides the recomputation's
        transient memory by the batch size. ``args`` are tensors or lists of tensors ``[B, ...]``; the outputs
        (a tensor or a sequence of tensors) are concatenated back along the batch."""
        ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        batch = args[0][0].shape[0] if isinstance(args[0], (list, tuple)) else args[0].shape[0]
        outs = []
        for i in range(batch):
            part = [[t[i : i + 1] for t in a] if isinstance(a, (list, tuple)) else a[i : i + 1] for a in args]
            outs.append(checkpoint(fn, *part, use_reentrant=False) if ckpt else fn(*part))
        if batch == 1:
            return outs[0]
        if isinstance(outs[0], torch.Tensor):
            return torch.cat(outs)
        return [torch.cat(parts) for parts in zip(*outs)]

    def _refine(self, logits: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        return self.refine_head(logits, self.f2_proj(f2))

    def _hr_skip(self, f2: torch.Tensor) -> torch.Tensor:
        """The HR head's skip: F2 projected by the refine head's ``f2_proj``, without gradient (train.py
        ``f2_hr_reduce3d(F2p.detach())``)."""
        return self.f2_proj(f2)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, d, h, w = x.shape
        z = torch.arange(d, device=x.device, dtype=torch.float32) / d
        feats = [
            f.view(b, d, *f.shape[1:]).transpose(1, 2).to(x.dtype) for f in self.encoder(self.encoder_images(x, z))
        ]
        adapter_in = torch.cat([x, z.to(x.dtype).view(1, 1, d, 1, 1).expand(b, 1, d, h, w)], 1)
        f2, f3 = self._per_sample(self.adapter, adapter_in)
        a_lo, a_mid, a_hi = self._per_sample(self.aggregator, feats)
        logits = self._per_sample(self.decoder, a_lo, a_mid, a_hi, f3)
        logits = self._per_sample(self._refine, logits, f2)
        return self.hr_head(logits, f2, (h, w), self._hr_skip).float()
