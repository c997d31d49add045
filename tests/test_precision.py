"""Frozen-ViT networks never run in fp16: nnU-Net's fp16 autocast at validation/prediction must not overflow."""

import pytest
import torch

from nnunet_fm.architectures.dinov3_cube import DINOv3Cube
from nnunet_fm.architectures.dinov3_ffa import DINOv3FFA
from nnunet_fm.encoders import FrozenViTEncoder

TINY_ENCODER = {"embed_dim": 32, "depth": 2, "num_heads": 2}
FP16_MAX = torch.finfo(torch.float16).max


def _inject_outliers(encoder: FrozenViTEncoder) -> None:
    """Scale one residual MLP so block activations exceed fp16's range, like DINOv3's massive activations."""
    with torch.no_grad():
        block = encoder.vit.blocks[0]
        block.gamma_2.fill_(1.0)  # layer scale
        block.mlp.fc2.bias[:4] = 1e5  # a few channels far beyond fp16's range


def _fp16_autocast():
    return torch.autocast("cpu", dtype=torch.float16)


@pytest.mark.parametrize("amp", [False, True])
def test_encoder_ignores_an_outer_fp16_autocast(amp):
    torch.manual_seed(0)
    encoder = FrozenViTEncoder("vit_small_patch16_dinov3", taps=(0, 1), amp=amp, **TINY_ENCODER)
    _inject_outliers(encoder)
    images = torch.randn(2, 3, 32, 32)
    reference = encoder(images)
    assert max(f.abs().max().item() for f in reference) > FP16_MAX  # the outliers are real
    with _fp16_autocast():
        under_fp16 = encoder(images)
    for ours, ref in zip(under_fp16, reference):
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(
            ours, ref, rtol=0 if not amp else 2e-2, atol=0 if not amp else 2e-2 * ref.abs().max().item()
        )


@pytest.mark.parametrize("network", ["ffa", "cube"])
def test_networks_stay_finite_under_fp16_autocast(network):
    torch.manual_seed(0)
    common = {"encoder_kwargs": TINY_ENCODER, "vit_amp": False}
    if network == "ffa":
        net = DINOv3FFA(1, 3, taps=(0, 1, 1), agg_heads=2, **common).eval()
    else:
        net = DINOv3Cube(1, 3, [4, 32, 32], taps=(0, 1), **common).eval()
    _inject_outliers(net.encoder)
    x = torch.randn(1, 1, 4, 32, 32)
    with torch.no_grad():
        reference = net(x)
        with _fp16_autocast():
            out = net(x)
    assert torch.isfinite(out).all()
    # bf16 replaces fp16 inside the network: same prediction up to bf16 rounding
    assert (out.float().argmax(1) == reference.argmax(1)).float().mean() > 0.9
