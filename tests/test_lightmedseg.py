"""Tests for the LightMedSeg network and its Dice + CE + boundary loss (CPU, tiny shapes)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from nnunet_fm.architectures.lightmedseg import AnchorFiLM, AnchorPositionBias, GhostConv3D, LightMedSeg
from nnunet_fm.architectures.lightmedseg_loss import DiceCEBoundaryLoss, boundary_band, inverse_frequency_weights
from nnunet_fm.tools.lightmedseg_budget import figures_table, module_table, paper_figures

SMALL = (16, 32, 48)
RESIDUAL = {"stage_residual": True}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(**kwargs) -> LightMedSeg:
    return LightMedSeg(input_channels=4, num_classes=4, **kwargs)


# ---------------------------------------------------------------- parameter / compute budget


def test_module_budgets_match_paper() -> None:
    """Every figure the paper states (total, dense variant, 16/32 anchors, GAD, LSPM, router, GFLOPs) at once."""
    figures = paper_figures()
    print("\n" + figures_table(figures) + "\n\n" + module_table())
    assert [f.name for f in figures if not f.ok] == []
    by_name = {f.name: f.measured for f in figures}
    assert by_name["parameters"] < by_name["parameters, 16 anchors"] < by_name["parameters, 32 anchors"]


def test_ablations_remove_parameters() -> None:
    full = n_params(build())
    for switch in ("use_lspm", "use_anchors", "use_skip_router"):
        assert n_params(build(**{switch: False})) < full, switch
    assert n_params(build(ghost=False)) > full


def test_wiring_follows_the_paper() -> None:
    """Stage inputs go through transposed convs (stride 1, 2, 2, 2); skips 3 and 4 come from encoder stage 1
    and the stem; no GroupNorm outside the GhostConv3D blocks, the fuse convs and the LSPM / anchor heads."""
    torch.manual_seed(0)
    model = build().eval()
    assert [type(s.up) for s in model.decoder] == [nn.ConvTranspose3d] * 4
    assert [s.up.stride for s in model.decoder] == [(1, 1, 1)] + [(2, 2, 2)] * 3
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, output):
            seen[name] = (args[0] if name.startswith("skip") else output).detach()

        return hook

    model.encoder[0].register_forward_hook(keep("enc1"))
    model.stem.register_forward_hook(keep("stem"))
    model.skip_proj[2].register_forward_hook(keep("skip3"))
    model.skip_proj[3].register_forward_hook(keep("skip4"))
    with torch.no_grad():
        model(torch.randn(1, 4, *SMALL))
    torch.testing.assert_close(seen["skip3"], F.avg_pool3d(seen["enc1"], 2))
    torch.testing.assert_close(seen["skip4"], seen["stem"])
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.GroupNorm)]
    allowed = ("stem.", "anchor_detector.", "lspm.", ".proj.norm", ".ghost.norm", ".fuse.1")
    assert [n for n in norms if not any(a in n or n.startswith(a) for a in allowed)] == []


def test_flop_counter_counts_two_per_mac() -> None:
    conv = nn.Conv3d(3, 5, 3, padding=1)
    counter = FlopCounterMode(display=False)
    with counter:
        conv(torch.zeros(1, 3, 4, 4, 4))
    macs = 3 * 5 * 27 * 4**3
    assert counter.get_total_flops() == 2 * macs


def test_flops_at_128_cubed_match_paper_in_two_per_mac_convention() -> None:
    with torch.device("meta"):
        model = build()
        x = torch.empty(1, 4, 128, 128, 128)
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(x)
    assert out.shape == (1, 4, 128, 128, 128)
    flops = counter.get_total_flops()
    assert flops == pytest.approx(14.64e9, rel=0.05)  # 2 FLOPs per multiply-accumulate
    assert flops / 2 == pytest.approx(7.32e9, rel=0.05)  # multiply-accumulates


# ---------------------------------------------------------------- construction / interface


def test_switched_off_components_are_not_built() -> None:
    assert build(use_lspm=False).lspm is None
    no_anchor = build(use_anchors=False)
    assert no_anchor.anchor_detector is None
    assert not any(isinstance(m, AnchorFiLM | AnchorPositionBias) for m in no_anchor.modules())
    assert build(use_skip_router=False).router is None
    assert not any(isinstance(m, GhostConv3D) for m in build(ghost=False).modules())
    assert any(isinstance(m, GhostConv3D) for m in build().modules())


def test_nnunet_interface() -> None:
    kwargs = json.loads(
        json.dumps(
            {
                "num_anchors": 4,
                "use_lspm": True,
                "ghost": True,
                "encoder_channels": [8, 16, 24, 32],
                "decoder_channels": [24, 16, 12, 8],
                "fuse_kernels": [1, 3, 3, 1],
                "lspm_hidden": 8,
            }
        )
    )
    model = LightMedSeg(input_channels=2, num_classes=3, **kwargs)
    assert not hasattr(model, "initialize")
    heads = model.output_heads()
    assert heads and all(h.bias is not None and h.bias.numel() == 3 for h in heads)
    # the head bias is added to every output voxel: it shifts the logits per class
    x = torch.randn(1, 2, *SMALL)
    with torch.no_grad():
        before = model(x)
        heads[-1].bias.add_(torch.tensor([1.0, 2.0, 3.0]))
        after = model(x)
    torch.testing.assert_close(after - before, torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1, 1).expand_as(before))


def test_built_by_nnunet_get_network_from_plans() -> None:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    name = "nnunet_fm.architectures.lightmedseg.LightMedSeg"
    model = get_network_from_plans(name, {"num_anchors": 8, "ghost": True}, [], 2, 3, deep_supervision=False)
    assert isinstance(model, LightMedSeg)
    assert model(torch.zeros(1, 2, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
    with pytest.raises(ValueError, match="deep supervision"):
        get_network_from_plans(name, {}, [], 2, 3, deep_supervision=True)


@pytest.mark.parametrize("shape", [(16, 32, 40), (15, 32, 48), (1, 2, 3)])
def test_bad_spatial_shape_raises_clear_error(shape: tuple[int, ...]) -> None:
    model = LightMedSeg(1, 2)
    with pytest.raises(ValueError, match=r"divisible by 16.*patch_size=\["):
        model(torch.zeros(1, 1, *shape))


def test_stage_residual_is_an_opt_in_extra() -> None:
    """The previous network's GN + SiLU + residual per stage: off by default, one GroupNorm per stage when on."""
    plain, extra = build(), build(**RESIDUAL)
    assert n_params(extra) - n_params(plain) == 2 * sum([8, 16, 32, 64] + [88, 44, 22, 8])  # GN affine only
    x = torch.randn(1, 4, *SMALL)
    torch.manual_seed(0)
    assert extra(x).shape == plain(x).shape == (1, 4, *SMALL)


def test_stage_lists_need_four_entries() -> None:
    with pytest.raises(ValueError, match="4 values"):
        LightMedSeg(1, 2, fuse_kernels=[1, 3, 3])


def test_wrong_channel_count_raises() -> None:
    with pytest.raises(ValueError, match="expects"):
        LightMedSeg(2, 2)(torch.zeros(1, 3, *SMALL))


# ---------------------------------------------------------------- forward / backward


@pytest.mark.parametrize(
    ("in_ch", "classes", "batch"),
    [(1, 2, 1), (2, 3, 3), (3, 16, 1), (4, 3, 1), (5, 2, 3), (5, 16, 1)],
)
def test_forward_backward_shapes(in_ch: int, classes: int, batch: int) -> None:
    torch.manual_seed(0)
    model = LightMedSeg(in_ch, classes)
    x = torch.randn(batch, in_ch, *SMALL)
    out = model(x)
    assert out.shape == (batch, classes, *SMALL)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"ghost": False}, {"use_lspm": False}, {"use_anchors": False}, {"use_skip_router": False}, RESIDUAL],
    ids=["default", "dense", "no_lspm", "no_anchors", "no_router", "stage_residual"],
)
def test_every_parameter_gets_a_gradient(kwargs: dict) -> None:
    torch.manual_seed(0)
    model = LightMedSeg(2, 3, **kwargs)
    out = model(torch.randn(2, 2, 16, 16, 32))
    DiceCEBoundaryLoss()(out, torch.randint(0, 3, (2, 1, 16, 16, 32))).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_anchors_and_texture_map_ranges() -> None:
    model = LightMedSeg(2, 2, num_anchors=5)
    x = torch.randn(3, 2, *SMALL)
    anchors = model.anchor_detector(x)
    assert anchors.shape == (3, 5, 3)
    assert ((anchors >= 0) & (anchors <= 1)).all()
    tau, feats = model.lspm(model.stem(x))
    assert tau.shape == (3, 1, 8, 16, 24) and feats.shape == (3, 8, 8, 16, 24)
    assert tau.min() >= 0 and tau.max() <= 1


class _ShapeRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def test_position_bias_is_factorised_and_exact() -> None:
    torch.manual_seed(0)
    b, k, c, size = 2, 5, 7, (4, 6, 8)
    bias_mod = AnchorPositionBias(k, c)
    anchors = torch.rand(b, k, 3)
    recorder = _ShapeRecorder()
    with recorder:
        bias = bias_mod(anchors, size)
    assert bias.shape == (b, c, *size)
    assert all(not (len(s) == 5 and s[1] == k) for s in recorder.shapes)
    assert max(torch.Size(s).numel() for s in recorder.shapes) <= b * c * 4 * 6 * 8
    # reference: the full per-anchor displacement volume (Eq. 14) projected by a 1x1 conv (Eq. 15)
    grids = torch.meshgrid(*[(torch.arange(n) + 0.5) / n for n in size], indexing="ij")
    disp = sum(g[None, None] - anchors[:, :, a, None, None, None] for a, g in enumerate(grids))
    ref = torch.einsum("ck,bkdhw->bcdhw", bias_mod.proj.weight, disp) + bias_mod.proj.bias.view(1, c, 1, 1, 1)
    torch.testing.assert_close(bias, ref, rtol=1e-5, atol=1e-5)


def test_short_training_reduces_loss() -> None:
    torch.manual_seed(0)
    model = LightMedSeg(1, 2)
    z, y, x = torch.meshgrid(*[torch.arange(16.0)] * 3, indexing="ij")
    label = (((z - 7) ** 2 + (y - 9) ** 2 + (x - 6) ** 2) < 20).long()[None, None]
    image = label.float() + 0.2 * torch.randn(label.shape)
    loss_fn = DiceCEBoundaryLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        loss = loss_fn(model(image), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


# ---------------------------------------------------------------- loss


def _labels(shape=(2, 1, 8, 12, 12), classes: int = 3) -> torch.Tensor:
    lab = torch.zeros(shape, dtype=torch.long)
    lab[..., 2:6, 3:9, 3:9] = 1
    if classes > 2:
        lab[..., 3:5, 5:7, 4:8] = 2
    return lab


def _perfect_logits(labels: torch.Tensor, classes: int, margin: float = 12.0) -> torch.Tensor:
    return F.one_hot(labels[:, 0], classes).movedim(-1, 1).float() * margin


def test_loss_perfect_below_random() -> None:
    torch.manual_seed(0)
    labels = _labels()
    loss_fn = DiceCEBoundaryLoss()
    perfect = loss_fn(_perfect_logits(labels, 3), labels)
    random = loss_fn(torch.randn(2, 3, 8, 12, 12), labels)
    assert perfect < 0.05 < random


def test_ce_term_is_inverse_frequency_weighted_ce() -> None:
    torch.manual_seed(0)
    labels = _labels()
    logits = torch.randn(2, 3, 8, 12, 12)
    counts = torch.bincount(labels.flatten(), minlength=3).float()
    expected = F.cross_entropy(logits, labels[:, 0], weight=1 / counts)
    got = DiceCEBoundaryLoss(weight_dice=0, weight_boundary=0)(logits, labels)
    torch.testing.assert_close(got, expected)


def test_class_weights_absent_class_is_finite() -> None:
    labels = torch.tensor([0, 0, 0, 2]).view(1, 1, 4)
    w = inverse_frequency_weights(labels, torch.ones_like(labels, dtype=torch.bool), 4)
    torch.testing.assert_close(w, torch.tensor([0.25, 0.0, 0.75, 0.0]))
    labels = _labels(classes=2)  # class 2 missing from the batch
    logits = torch.randn(2, 3, 8, 12, 12, requires_grad=True)
    loss = DiceCEBoundaryLoss()(logits, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_ignored_voxels_get_zero_gradient() -> None:
    torch.manual_seed(0)
    labels = _labels()
    ignore = torch.zeros_like(labels, dtype=torch.bool)
    ignore[..., :3, :, :6] = True
    labels = labels.masked_fill(ignore, 3)  # nnU-Net convention: ignore label = num_classes
    logits = torch.randn(2, 3, 8, 12, 12, requires_grad=True)
    loss = DiceCEBoundaryLoss(ignore_label=3)(logits, labels)
    loss.backward()
    assert torch.isfinite(loss)
    grad = logits.grad.abs().sum(1, keepdim=True)
    assert (grad[ignore] == 0).all()
    assert (grad[~ignore] > 0).any()
    # changing the logits inside the ignored region does not change the loss
    shifted = logits.detach() + 5 * torch.randn_like(logits) * ignore
    torch.testing.assert_close(DiceCEBoundaryLoss(ignore_label=3)(shifted, labels), loss.detach())


def test_empty_band_gives_zero_boundary_term() -> None:
    labels = torch.ones(1, 1, 6, 6, 6, dtype=torch.long)
    assert not boundary_band(labels, 2).any()
    logits = torch.randn(1, 2, 6, 6, 6, requires_grad=True)
    boundary_only = DiceCEBoundaryLoss(weight_dice=0, weight_ce=0)(logits, labels)
    boundary_only.backward()
    assert boundary_only.item() == 0.0
    assert torch.isfinite(logits.grad).all()
    assert torch.isfinite(DiceCEBoundaryLoss()(logits, labels))


def test_boundary_band_is_linf_dilation() -> None:
    labels = torch.zeros(1, 1, 12, 5, 5, dtype=torch.long)
    labels[:, :, 6:] = 1  # one interface between depth slices 5 and 6
    for radius in (0, 1, 2):
        band = boundary_band(labels, radius)[0, 0]
        slices = band.any(dim=(1, 2)).nonzero().flatten().tolist()
        assert slices == list(range(5 - radius, 7 + radius)), radius
        assert band[slices].all()
    # a single voxel: boundary = its 3^3 neighbourhood, dilated by 1 in L-infinity -> a 5^3 cube
    dot = torch.zeros(1, 1, 9, 9, 9, dtype=torch.long)
    dot[..., 4, 4, 4] = 1
    band = boundary_band(dot, 1)[0, 0]
    assert band.sum() == 5**3 and band[2, 2, 2] and band[6, 6, 6] and not band[1, 4, 4]


def test_boundary_term_is_normalised_by_band_size() -> None:
    small = _labels((1, 1, 8, 12, 12), classes=2)
    big = torch.cat([small, small], dim=-1)  # twice the band, same per-voxel error
    logits_small = _perfect_logits(small, 2, margin=1.0)
    logits_big = torch.cat([logits_small, logits_small], dim=-1)
    loss = DiceCEBoundaryLoss(weight_dice=0, weight_ce=0)
    torch.testing.assert_close(loss(logits_big, big), loss(logits_small, small))


def test_loss_accepts_half_precision_logits() -> None:
    labels = _labels()
    logits = torch.randn(2, 3, 8, 12, 12).half()
    assert torch.isfinite(DiceCEBoundaryLoss(boundary_radius=1)(logits, labels))
