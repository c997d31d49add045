"""LightMedSeg: a 0.48M-parameter 3D segmentation network with learned spatial anchors.

Re-implementation of LightMedSeg (arXiv 2603.07228, sections 3.1-3.6) written from the paper text
(``shared/seeds/lightmedseg_paper.txt``). Data flow for an input ``[B, C_in, D, H, W]`` (every spatial
size divisible by 16)::

    stem      GhostConv3D(C_in -> 8, k3, s2) (+ GN4)                                    -> /2   (§3.1)
    anchors   GlobalAnchorDetector(x) -> K points in [0, 1]^3 from the raw input                 (§3.2)
    LSPM      texture map tau (1 ch) + structurally adapted features (8 ch)                /2   (§3.3)
    encoder   widths 8, 16, 32, 64 at /2, /4, /8, /16 (max-pool after stages 1-3); each stage:
              GhostConv3D -> anchor FiLM -> SiLU -> tau-gated depthwise / pointwise routing -> SE  (§3.4)
    router    encoder stages projected to 64 ch, per-voxel softmax over stages (decoder stages 1-2) (§3.5)
    decoder   bottleneck 1x1 projection, then 4 stages at /16, /8, /4, /2, widths 88, 44, 22, 8; each
              stage: transposed conv (stride 1 at stage 1, stride 2 after) + anchor position bias ->
              concat(skip) -> fuse conv + GN + SiLU -> SE -> softmax-gated {depthwise, ghost,
              pointwise} mixing -> SE                                                              (§3.6)
    skips     router output (stages 1-2), encoder stage 1 (stage 3), stem output (stage 4), each
              resampled to the stage grid and projected by a 1x1 conv to the stage width
    head      1x1 conv (-> num_classes) at /2, stride-2 transposed conv -> full-resolution logits

The paper's parameter and FLOP figures (total 0.48M, Global Anchor Detector 8.6K, LSPM 11.7K, skip router 24K,
14.64 GFLOPs at ``1x4x128^3``) are asserted module by module within a tolerance by
``tests/test_lightmedseg.py::test_module_budgets_match_paper``; this code's figures and the ablations' parameter
counts: BENCHMARKS.md, "LightMedSeg: the paper's figures, module by module".

Choices where the paper is silent or contradicts itself (each is a constructor argument):

* Encoder widths (8, 16, 32, 64): "doubling at each stage" from the 8-channel stem; these widths give
  the router its 24K (projections 7,936 + controller 16,708).
* Decoder widths (88, 44, 22, 8): halving as resolution doubles, ending in the 8-channel output the paper
  names. The mirror of the encoder, (64, 32, 16, 8), cannot meet the totals: with any mix of 1x1 / 3x3 and
  dense / ghost fuse convs it stays at or below 0.63M dense parameters and 13 GFLOPs.
* Decoder resolutions. The paper says both that every stage input is upsampled by a transposed conv up
  to full resolution (§3.6) and that a stride-2 transposed conv after the 1x1 classifier restores the
  input size. The encoder side (stem, anchors, LSPM, encoder: 7.8 GFLOPs) and one width-8 decoder stage
  at full resolution (>= 1,508 multiply-accumulates per voxel: ghost branch 972, depthwise 216, 1x1 fuse
  128, transposed conv 128, pointwise 64; >= 6.3 GFLOPs at 128^3) already exceed the 14.64 GFLOPs budget
  together with the router and the other stages. So the stages run at /16, /8, /4, /2 and the head
  upsamples; stage 1 keeps its own input transposed conv with stride 1 (a learned 1x1 re-projection
  after the bottleneck projection).
* Skips: the paper names encoder stage 1 for decoder stage 3 (average-pooled from /2 to /4) and the
  stem output for stage 4 (same grid). Without the router (``use_skip_router=False``) stages 1-2 take
  the aligned encoder stage (4, 3).
* Fuse conv (Eq. 16; the layer is not named): dense conv + GN + SiLU, kernel 1 at the bottleneck
  stage and 3 elsewhere (``fuse_kernels``). GhostConv3D is used only where the paper names it: stem,
  encoder stages, the decoder's ghost branch.
* GhostConv3D = primary conv (half the channels) + depthwise 3x3x3 conv (other half) + GN4, as §3.1
  defines it for the stem; ``ghost=False`` replaces it by a dense conv + GN4.
* Activations: SiLU after the encoder FiLM (the FiLM paper modulates pre-activation features) and after
  the decoder fuse; no other GN / SiLU / residual connections around the stages (the paper names none).
  ``stage_residual=True`` adds the previous network's ``x + SE(SiLU(GN(y)))`` around each encoder routing and
  decoder mixing step (a deviation, off by default; see ``StageResidual``).
* LSPM gating head width 46 (11,689 parameters; GroupNorm with 2 groups since 46 is not a multiple of 4).
* SE bottleneck ``max(4, C // 4)``; GN with ``gcd(C, 4)`` groups; anchor offsets use voxel centres
  ``(i + 0.5) / n``; without the LSPM the encoder routing is a fixed 0.5 / 0.5 blend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_fm.blocks import SqueezeExcite, group_norm

__all__ = [
    "AnchorFiLM",
    "AnchorPositionBias",
    "DecoderStage",
    "EncoderStage",
    "GhostConv3D",
    "GlobalAnchorDetector",
    "LightMedSeg",
    "LocalStructuralPrior",
    "SkipRouter",
]


def group_norm4(channels: int) -> nn.GroupNorm:
    """GN4 (the paper's stem norm) wherever the width allows it (shared ``blocks.group_norm``)."""
    return group_norm(channels, 4)


def resample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize ``x`` to ``size``: average pooling when shrinking, trilinear when enlarging."""
    size = tuple(int(s) for s in size)
    src = tuple(x.shape[2:])
    if src == size:
        return x
    if all(n % s == 0 for s, n in zip(size, src)):
        return F.avg_pool3d(x, tuple(n // s for s, n in zip(size, src)))
    if all(s <= n for s, n in zip(size, src)):
        return F.adaptive_avg_pool3d(x, size)
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)


class GhostConv3D(nn.Module):
    """GhostConv3D (paper §3.1): a dense conv makes half the channels, a depthwise 3x3x3 conv the rest, then GN4.

    ``primary``: ``Conv3d(cin, ceil(cout/2), k, stride)``; ``cheap``: grouped 3x3x3 conv on the primary
    features (depthwise when ``cout`` is even). Both halves are concatenated and normalised (GN, 4 groups).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        if out_channels < 2:
            raise ValueError(f"GhostConv3D needs at least 2 output channels, got {out_channels}")
        primary = (out_channels + 1) // 2
        ghost = out_channels - primary
        self.primary = nn.Conv3d(in_channels, primary, kernel_size, stride, kernel_size // 2, bias=False)
        self.cheap = nn.Conv3d(primary, ghost, 3, 1, 1, groups=math.gcd(primary, ghost), bias=False)
        self.norm = group_norm4(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        return self.norm(torch.cat([y, self.cheap(y)], dim=1))


def make_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, ghost: bool) -> nn.Module:
    """GhostConv3D, or a dense bias-free Conv3d + GN4 of the same geometry when ``ghost`` is False."""
    if ghost:
        return GhostConv3D(in_channels, out_channels, kernel_size, stride)
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        group_norm4(out_channels),
    )


class GlobalAnchorDetector(nn.Module):
    """Predicts ``K`` sample-specific anchors in ``[0, 1]^3`` from the raw input (paper §3.2).

    Three (Conv3d k3 s2 p1, GN4, SiLU) layers -> global average pool -> Linear -> SiLU -> Linear
    -> sigmoid, reshaped to ``[B, K, 3]`` (depth, height, width order).
    """

    def __init__(
        self, in_channels: int, num_anchors: int, widths: Sequence[int] = (8, 8, 8), hidden: int = 128
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for w in widths:
            layers += [nn.Conv3d(prev, w, 3, 2, 1), group_norm4(w), nn.SiLU()]
            prev = w
        self.encoder = nn.Sequential(*layers)
        self.mlp = nn.Sequential(nn.Linear(prev, hidden), nn.SiLU(), nn.Linear(hidden, 3 * num_anchors))
        self.num_anchors = num_anchors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x).mean(dim=(2, 3, 4))
        return torch.sigmoid(self.mlp(z)).view(x.shape[0], self.num_anchors, 3)


class LocalStructuralPrior(nn.Module):
    """LSPM (paper §3.3): texture routing map + complexity-gated two-expert 1x1 feature mixer.

    * branch 1, texture: ``t = mean_c |x - dwconv3(x)|``, rescaled per sample to ``[0, 1]`` -> ``tau``
    * branch 2, gating head: conv3 (C -> hidden) + GN + SiLU -> conv3 (hidden -> 1) -> sigmoid -> ``s``
    * branch 3, mixer: ``w = softmax(conv1x1(s))`` over 2 experts; ``out = w0 * E0(x) + w1 * E1(x)``
    """

    def __init__(self, channels: int, hidden: int = 46) -> None:
        super().__init__()
        self.smooth = nn.Conv3d(channels, channels, 3, 1, 1, groups=channels)
        self.gate_head = nn.Sequential(
            nn.Conv3d(channels, hidden, 3, 1, 1), group_norm4(hidden), nn.SiLU(), nn.Conv3d(hidden, 1, 3, 1, 1)
        )
        self.expert_weights = nn.Conv3d(1, 2, 1)
        self.experts = nn.Conv3d(channels, 2 * channels, 1)  # both 1x1 experts in one conv

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        texture = (x - self.smooth(x)).abs().mean(dim=1, keepdim=True)
        tau = texture / (texture.amax(dim=(2, 3, 4), keepdim=True) + 1e-6)
        score = torch.sigmoid(self.gate_head(x))
        w = torch.softmax(self.expert_weights(score), dim=1)
        e0, e1 = self.experts(x).chunk(2, dim=1)
        return tau, w[:, :1] * e0 + w[:, 1:] * e1


class AnchorFiLM(nn.Module):
    """FiLM from flattened anchors: ``x * (1 + gamma(a)) + beta(a)``, one scale/shift per channel (Eq. 6)."""

    def __init__(self, num_anchors: int, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Linear(3 * num_anchors, channels)
        self.beta = nn.Linear(3 * num_anchors, channels)

    def forward(self, x: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        a = anchors.flatten(1)
        shape = (x.shape[0], x.shape[1], 1, 1, 1)
        return x * (1 + self.gamma(a).view(shape)) + self.beta(a).view(shape)


class AnchorPositionBias(nn.Module):
    """Anchor-relative spatial position bias (paper Eq. 14-15), computed axis by axis.

    For anchor ``k`` and voxel centre ``(z, y, x)`` (normalised to ``[0, 1]``) the signed offset
    is ``(z - a_kz) + (y - a_ky) + (x - a_kx)``; a ``K -> C`` 1x1 projection maps the ``K``
    offsets to channels. Because the projection is linear, each axis' 1D offsets ``[B, K, n]``
    are projected separately to ``[B, C, n]`` and the three results are broadcast-summed, so
    the ``[B, K, D, H, W]`` displacement volume is never built.
    """

    def __init__(self, num_anchors: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(num_anchors, channels)

    def forward(self, anchors: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        b, c = anchors.shape[0], self.proj.out_features
        bias = self.proj.bias.view(1, c, 1, 1, 1)
        for axis, n in enumerate(size):
            centres = (torch.arange(n, device=anchors.device, dtype=anchors.dtype) + 0.5) / n
            offsets = centres.view(1, 1, n) - anchors[:, :, axis : axis + 1]  # [B, K, n]
            per_axis = F.linear(offsets.transpose(1, 2), self.proj.weight).transpose(1, 2)  # [B, C, n]
            shape = [b, c, 1, 1, 1]
            shape[2 + axis] = n
            bias = bias + per_axis.reshape(shape)
        return bias


class StageResidual(nn.Module):
    """Optional layers the paper does not name (``stage_residual=True``): ``x + SE(SiLU(GN(y)))`` instead of ``SE(y)``.

    The previous network's layers around every encoder routing and decoder mixing step (its demo Dice against the
    paper's wiring: BENCHMARKS.md, "Recipes on the demo data"). Off by default: the paper's wiring.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm4(channels)

    def forward(self, x: torch.Tensor, y: torch.Tensor, se: nn.Module) -> torch.Tensor:
        return x + se(F.silu(self.norm(y)))


class EncoderStage(nn.Module):
    """Encoder stage (paper §3.4): GhostConv3D -> anchor FiLM -> SiLU -> texture-gated two-path routing -> SE.

    Routing (Eq. 7-9): ``g * depthwise3(x) + (1 - g) * pointwise(x)`` with ``g`` the texture map resampled to
    the stage grid (a fixed 0.5 / 0.5 blend without the LSPM).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_anchors: int | None,
        ghost: bool = True,
        se_reduction: int = 4,
        stage_residual: bool = False,
    ) -> None:
        super().__init__()
        self.proj = make_conv(in_channels, out_channels, 3, 1, ghost)
        self.residual = StageResidual(out_channels) if stage_residual else None
        self.film = AnchorFiLM(num_anchors, out_channels) if num_anchors else None
        self.detail = nn.Conv3d(out_channels, out_channels, 3, 1, 1, groups=out_channels)
        self.smooth = nn.Conv3d(out_channels, out_channels, 1)
        self.se = SqueezeExcite(out_channels, se_reduction, min_hidden=4)

    def forward(
        self, x: torch.Tensor, tau: torch.Tensor | None = None, anchors: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.proj(x)
        if self.film is not None:
            x = self.film(x, anchors)
        x = F.silu(x)
        g = 0.5 if tau is None else resample(tau, x.shape[2:])
        routed = g * self.detail(x) + (1 - g) * self.smooth(x)
        return self.se(routed) if self.residual is None else self.residual(x, routed, self.se)


class SkipRouter(nn.Module):
    """Learned multi-scale skip router (paper §3.5, Eq. 11-13) shared by the two low-resolution decoder stages.

    Each encoder feature is resampled to the target grid and projected to ``width`` channels
    (resampling and the 1x1 projection commute, so the cheaper order is used); a two-layer
    1x1 controller (``n*width -> width -> n``) predicts per-voxel softmax weights over the
    ``n`` stages. ``forward`` returns the fused ``width``-channel map (the per-stage output
    projection belongs to the decoder's skip projections).
    """

    def __init__(self, encoder_channels: Sequence[int], width: int = 64) -> None:
        super().__init__()
        n = len(encoder_channels)
        self.proj = nn.ModuleList(nn.Conv3d(c, width, 1) for c in encoder_channels)
        self.controller = nn.Sequential(nn.Conv3d(n * width, width, 1), nn.SiLU(), nn.Conv3d(width, n, 1))

    def forward(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        maps = [p(resample(f, size)) for p, f in zip(self.proj, features)]
        w = torch.softmax(self.controller(torch.cat(maps, dim=1)), dim=1)
        return sum(w[:, i : i + 1] * m for i, m in enumerate(maps))


class DecoderStage(nn.Module):
    """Decoder stage (paper §3.6): transposed conv x2 + anchor bias -> concat-fuse + SE -> 3-branch mixing -> SE.

    Input: transposed conv with kernel = stride = 2 (``upsample``) or 1. Fuse (Eq. 16): dense
    ``fuse_kernel`` conv + GN + SiLU on ``concat(up, skip)``, then SE. Branches (Eq. 17-21): depthwise
    conv3, GhostConv3D (dense with ``ghost=False``), pointwise conv; a shared 1x1 conv and a softmax give
    per-voxel branch weights.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_anchors: int | None,
        ghost: bool = True,
        se_reduction: int = 4,
        fuse_kernel: int = 3,
        upsample: bool = True,
        stage_residual: bool = False,
    ) -> None:
        super().__init__()
        self.residual = StageResidual(out_channels) if stage_residual else None
        stride = 2 if upsample else 1
        self.up = nn.ConvTranspose3d(in_channels, out_channels, stride, stride)
        self.pos_bias = AnchorPositionBias(num_anchors, out_channels) if num_anchors else None
        self.fuse = make_conv(2 * out_channels, out_channels, fuse_kernel, 1, ghost=False)
        self.fuse_se = SqueezeExcite(out_channels, se_reduction, min_hidden=4)
        self.branch_gate = nn.Conv3d(out_channels, 3, 1)
        self.depthwise = nn.Conv3d(out_channels, out_channels, 3, 1, 1, groups=out_channels)
        self.ghost = make_conv(out_channels, out_channels, 3, 1, ghost)
        self.pointwise = nn.Conv3d(out_channels, out_channels, 1)
        self.se = SqueezeExcite(out_channels, se_reduction, min_hidden=4)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, anchors: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if self.pos_bias is not None:
            x = x + self.pos_bias(anchors, x.shape[2:])
        f = self.fuse_se(F.silu(self.fuse(torch.cat([x, skip], dim=1))))
        w = torch.softmax(self.branch_gate(f), dim=1)
        mixed = w[:, 0:1] * self.depthwise(f) + w[:, 1:2] * self.ghost(f) + w[:, 2:3] * self.pointwise(f)
        return self.se(mixed) if self.residual is None else self.residual(f, mixed, self.se)


class LightMedSeg(nn.Module):
    """LightMedSeg 3D segmentation network; ``forward(x)`` returns logits at input resolution.

    All constructor arguments are JSON-friendly so nnU-Net plans can carry them in ``arch_kwargs``.
    ``deep_supervision`` is accepted because nnU-Net's ``get_network_from_plans`` passes it; only
    ``False`` is valid.
    Switching a component off (``use_lspm``, ``use_anchors``, ``use_skip_router``) means its
    modules are not built; ``ghost=False`` replaces every GhostConv3D with a dense Conv3d + GN.
    """

    #: the stem (/2) and three max-pools (/2 each) need every spatial size divisible by this
    size_divisor: int = 16

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        num_anchors: int = 8,
        use_lspm: bool = True,
        use_anchors: bool = True,
        use_skip_router: bool = True,
        ghost: bool = True,
        stem_channels: int = 8,
        encoder_channels: Sequence[int] = (8, 16, 32, 64),
        decoder_channels: Sequence[int] = (88, 44, 22, 8),
        router_channels: int = 64,
        anchor_widths: Sequence[int] = (8, 8, 8),
        anchor_hidden: int = 128,
        lspm_hidden: int = 46,
        se_reduction: int = 4,
        fuse_kernels: Sequence[int] = (1, 3, 3, 3),
        stage_residual: bool = False,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if deep_supervision:
            raise ValueError(
                "LightMedSeg has a single full-resolution output and no deep supervision; build it with "
                "deep_supervision=False (trainer: enable_deep_supervision = False)"
            )
        encoder_channels = [int(c) for c in encoder_channels]
        decoder_channels = [int(c) for c in decoder_channels]
        if len(encoder_channels) != 4 or len(decoder_channels) != 4 or len(fuse_kernels) != 4:
            raise ValueError("encoder_channels, decoder_channels and fuse_kernels must each list 4 values")
        if use_anchors and num_anchors < 1:
            raise ValueError(f"num_anchors must be >= 1 when use_anchors is True, got {num_anchors}")
        self.input_channels = input_channels
        self.num_classes = num_classes
        k = num_anchors if use_anchors else None

        self.stem = make_conv(input_channels, stem_channels, 3, 2, ghost)
        self.anchor_detector = (
            GlobalAnchorDetector(input_channels, num_anchors, anchor_widths, anchor_hidden) if use_anchors else None
        )
        self.lspm = LocalStructuralPrior(stem_channels, lspm_hidden) if use_lspm else None

        ins = [stem_channels, *encoder_channels[:-1]]
        self.encoder = nn.ModuleList(
            EncoderStage(i, o, k, ghost, se_reduction, stage_residual) for i, o in zip(ins, encoder_channels)
        )
        self.pool = nn.MaxPool3d(2)

        # decoder stage j (0-based) upsamples to the grid of encoder stage 2 - j (j < 3), the input grid (j = 3)
        self.bottleneck = nn.Conv3d(encoder_channels[-1], encoder_channels[-1], 1)
        dec_ins = [encoder_channels[-1], *decoder_channels[:-1]]
        self.decoder = nn.ModuleList(
            DecoderStage(i, o, k, ghost, se_reduction, int(f), upsample=j > 0, stage_residual=stage_residual)
            for j, (i, o, f) in enumerate(zip(dec_ins, decoder_channels, fuse_kernels))
        )
        self.router = SkipRouter(encoder_channels, router_channels) if use_skip_router else None
        # skip sources: router output (stages 1-2) or the aligned encoder stage; encoder stage 1; stem output
        sources = [router_channels] * 2 if use_skip_router else [encoder_channels[3], encoder_channels[2]]
        sources += [encoder_channels[0], stem_channels]
        self.skip_proj = nn.ModuleList(nn.Conv3d(s, c, 1) for s, c in zip(sources, decoder_channels))
        self.classifier = nn.Conv3d(decoder_channels[-1], num_classes, 1)
        self.upsample_out = nn.ConvTranspose3d(num_classes, num_classes, 2, 2)

    def output_heads(self) -> list[nn.Module]:
        """Final layer(s) whose bias has one entry per class (for prior-bias initialisation)."""
        return [self.upsample_out]

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.input_channels:
            raise ValueError(f"LightMedSeg expects [B, {self.input_channels}, D, H, W] input, got {tuple(x.shape)}")
        spatial = tuple(x.shape[2:])
        if any(s % self.size_divisor for s in spatial):
            fixed = [max(self.size_divisor, round(s / self.size_divisor) * self.size_divisor) for s in spatial]
            raise ValueError(
                f"LightMedSeg needs every spatial size divisible by {self.size_divisor} (stem /2 and three "
                f"max-pools /2), got {spatial}. Set a patch size divisible by {self.size_divisor} on every "
                f"axis, e.g. `nnunet-fm plans add ... --set patch_size={fixed}`."
            )

    def _skip(self, j: int, stem: torch.Tensor, skips: list[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """Skip signal of decoder stage ``j`` at grid ``size`` (paper §3.5)."""
        if j < 2:
            source = self.router(skips, size) if self.router is not None else skips[3 - j]
        else:
            source = resample(skips[0] if j == 2 else stem, size)
        return self.skip_proj[j](source)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        anchors = self.anchor_detector(x) if self.anchor_detector is not None else None
        stem = self.stem(x)
        tau, h = self.lspm(stem) if self.lspm is not None else (None, stem)

        skips: list[torch.Tensor] = []
        for i, stage in enumerate(self.encoder):
            if i > 0:
                h = self.pool(h)
            h = stage(h, tau, anchors)
            skips.append(h)

        d = self.bottleneck(h)
        for j, stage in enumerate(self.decoder):
            d = stage(d, self._skip(j, stem, skips, skips[3 - j].shape[2:]), anchors)
        return self.upsample_out(self.classifier(d))
