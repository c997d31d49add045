"""Tests for the DINOv3-FFA network, its FFA aggregator and the shared blocks (CPU, tiny encoder)."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from nnunet_fm.architectures.dinov3_ffa import DINOv3FFA
from nnunet_fm.architectures.ffa_aggregator import PooledSpatialAttention, SliceAttention, rope_1d
from nnunet_fm.architectures.ffa_blocks import ConvNeXtBlock3d, ConvNeXtPyramid3d, FiLM
from nnunet_fm.blocks import SqueezeExcite
from nnunet_fm.tensor_memory import saved_tensor_peak

torch.set_num_threads(1)

TINY = {"encoder_kwargs": {"embed_dim": 32, "depth": 4, "num_heads": 2}, "taps": [1, 2, 3], "agg_heads": 2}


def tiny_net(input_channels: int = 1, num_classes: int = 3, **kwargs) -> DINOv3FFA:
    torch.manual_seed(0)
    return DINOv3FFA(input_channels, num_classes, **{**TINY, **kwargs})


@pytest.fixture(scope="module")
def net() -> DINOv3FFA:
    return tiny_net()


@pytest.mark.parametrize("d", [5, 1])
def test_forward_shape(net: DINOv3FFA, d: int) -> None:
    x = torch.randn(2, 1, d, 32, 48)
    y = net.eval()(x)
    assert y.shape == (2, 3, d, 32, 48)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


def test_three_input_channels_forward_and_mapping() -> None:
    net = tiny_net(input_channels=3, num_classes=2).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    assert net(x).shape == (2, 2, 4, 32, 32)
    # encoder RGB = (minmax(ch0), minmax(ch1), z) then ImageNet normalisation
    z = torch.arange(4) / 4
    rgb = net.encoder_images(x, z).view(2, 4, 3, 32, 32)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    raw = rgb * std + mean
    for c_in, c_out in ((0, 0), (1, 1)):
        s = x[1, c_in, 2]
        torch.testing.assert_close(raw[1, 2, c_out], (s - s.min()) / (s.max() - s.min()))
    torch.testing.assert_close(raw[:, :, 2], z.view(1, 4, 1, 1).expand(2, 4, 32, 32))
    # single-channel input: the encoder's second channel repeats the intensity
    x1 = torch.randn(1, 1, 2, 16, 16)
    raw1 = net.encoder_images(x1, torch.zeros(2)).view(1, 2, 3, 16, 16) * std + mean
    torch.testing.assert_close(raw1[:, :, 0], raw1[:, :, 1])
    # the adapter sees every input channel plus z
    assert net.adapter.stages[0][0].dwconv.in_channels == 4


def test_backward_grads_and_frozen_encoder() -> None:
    net = tiny_net()
    net.train()
    assert not net.encoder.vit.training, "encoder must stay in eval mode"
    x = torch.randn(2, 1, 5, 32, 48)
    net(x).square().mean().backward()
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, f"parameters without grad: {missing}"
    assert all(not n.startswith("encoder.") for n, _ in trainable)
    for p in net.encoder.parameters():
        assert not p.requires_grad and p.grad is None
    # the three taps are requested and aggregated
    assert net.encoder.taps == (1, 2, 3)
    assert len(net.aggregator.film_in) == len(net.aggregator.film_out) == 3


def test_bad_inplane_size_raises(net: DINOv3FFA) -> None:
    with pytest.raises(ValueError, match=r"patch_size"):
        net(torch.randn(1, 1, 2, 40, 48))
    with pytest.raises(ValueError, match=r"\[B, 1, D, H, W\]"):
        net(torch.randn(1, 2, 2, 32, 32))


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="3 taps"):
        tiny_net(taps=[2, 3])
    with pytest.raises(ValueError, match="agg_heads"):
        tiny_net(agg_heads=3)  # attention dim 16 is not divisible by 3


def test_output_heads(net: DINOv3FFA) -> None:
    heads = net.output_heads()
    assert len(heads) == 2
    for h in heads:
        assert h.out_channels == 3 and h.bias is not None and h.bias.requires_grad
    assert heads[0] is net.refine_head.classifier and heads[1] is net.hr_head.classifier
    assert not hasattr(net, "initialize")


# vesselbridge3d SegModel3D_UNETRLite, 3 classes: its requires_grad parameter count
REFERENCE_TRAINABLE_3_CLASSES = 13_557_611


def test_vits_default_param_counts() -> None:
    net = DINOv3FFA(input_channels=1, num_classes=3)
    parts = {
        name: sum(p.numel() for p in getattr(net, name).parameters() if p.requires_grad)
        for name in ("adapter", "aggregator", "decoder", "f2_proj", "refine_head", "hr_head")
    }
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    vit = sum(p.numel() for p in timm.create_model("vit_small_patch16_dinov3").parameters())
    stem = sum(p.numel() for p in net.aggregator.core.stem.parameters())
    print("DINOv3FFA ViT-S, 3 classes: " + ", ".join(f"{k} {v:,}" for k, v in parts.items()))
    print(f"trainable={trainable:,} (reference {REFERENCE_TRAINABLE_3_CLASSES:,}) frozen={frozen:,} (stem {stem:,})")
    # measured: adapter 102,428, aggregator 11,712,769, decoder 1,256,900, f2_proj 3,072, refine_head 430,823,
    # hr_head 49,955 = 13,555,947. The reference's 1,664 more: FiLM of a 4th tap it computes but never uses
    # (1,536) and bias placement in the decoder projections (128).
    assert sum(parts.values()) == trainable
    assert abs(trainable - REFERENCE_TRAINABLE_3_CLASSES) <= 0.001 * REFERENCE_TRAINABLE_3_CLASSES
    assert parts["refine_head"] == 430_823 and parts["hr_head"] == 49_955  # width 128, 1-channel depth gate
    assert frozen == vit
    assert 7.9e6 < stem < 8.0e6  # "8M of it in the two 3x3x3 384-ch aggregator convs"
    assert net.encoder.embed_dim == 384 and net.encoder.taps == (4, 7, 10)


def test_rope_depends_on_relative_offset_only() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 16, generator=g), torch.randn(2, 1, 16, generator=g)
    for s in (0.0, 1.0, 7.0, -3.0):
        dots = []
        for p in (0.0, 1.0, 5.0, 123.0, 0.25):
            qr = rope_1d(q, torch.tensor([p]))
            kr = rope_1d(k, torch.tensor([p + s]))
            dots.append((qr * kr).sum(-1))
        for dot in dots[1:]:
            torch.testing.assert_close(dot, dots[0], atol=1e-4, rtol=1e-4)
    x = torch.randn(3, 7, 16, generator=g)
    xr = rope_1d(x, torch.arange(7))
    torch.testing.assert_close(xr.norm(dim=-1), x.norm(dim=-1))  # rotations preserve norms
    torch.testing.assert_close(xr[:, 0], x[:, 0])  # position 0 is the identity
    assert not torch.allclose(xr[:, 1:], x[:, 1:])


def test_attention_mixing_axes() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 4, 3, 5, 16)  # [B, D, h, w, C]
    x2 = x.clone()
    x2[0, 1, 2, 3] += 1.0  # change one token: slice 1, in-plane position (2, 3)
    slice_attn = SliceAttention(16, 8, 2)
    changed = (slice_attn(x2) - slice_attn(x)).abs().sum(-1) > 1e-6
    expected = torch.zeros_like(changed)
    expected[0, :, 2, 3] = True  # only the same in-plane position, every slice
    assert torch.equal(changed, expected)
    spatial = PooledSpatialAttention(16, 8, 2)
    x3 = x.clone()
    x3[0, 1, 1, 2] += 1.0  # a token inside the pooled 2x4 area of the 3x5 slice
    changed = (spatial(x3) - spatial(x)).abs().sum(-1) > 1e-6
    expected = torch.zeros_like(changed)
    expected[0, 1] = True  # every position of the same slice only
    assert torch.equal(changed, expected)


def test_pooled_keys_floor_like_the_reference() -> None:
    """vesselbridge3d train.py l. 834: nn.AvgPool2d(2, 2) pools 21x21 tokens to 10x10; row/column 20 give no key."""
    torch.manual_seed(0)
    spatial = PooledSpatialAttention(16, 8, 2)
    x = torch.randn(1, 1, 21, 21, 16)
    x2 = x.clone()
    x2[0, 0, 20, 5] += 1.0  # last row: outside every pooled key
    changed = (spatial(x2) - spatial(x)).abs().sum(-1) > 1e-6
    expected = torch.zeros_like(changed)
    expected[0, 0, 20, 5] = True  # only its own query changes
    assert torch.equal(changed, expected)


def _set_checkpointing(net: DINOv3FFA, on: bool) -> None:
    net.grad_checkpointing = on
    net.aggregator.core.grad_checkpointing = on
    net.hr_head.grad_checkpointing = on


def test_gradient_checkpointing_matches() -> None:
    """Checkpointing (adapter, aggregator, decoder, refine head, HR chunks) and byte-bounded HR chunks change
    neither outputs nor any trainable gradient (fp32, fixed seed, no DropPath), and save far fewer bytes."""
    net = tiny_net(adapter_drop_path=0.0, agg_drop_path=0.0).train()
    x = torch.randn(2, 1, 5, 32, 32)
    calls = {"stem": 0, "refine": 0, "adapter": 0}
    net.aggregator.core.stem[0].register_forward_pre_hook(lambda *a: calls.__setitem__("stem", calls["stem"] + 1))
    net.refine_head.register_forward_pre_hook(lambda *a: calls.__setitem__("refine", calls["refine"] + 1))
    net.adapter.register_forward_pre_hook(lambda *a: calls.__setitem__("adapter", calls["adapter"] + 1))

    def run(ckpt: bool, chunk_mib: float) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, int], int]:
        _set_checkpointing(net, ckpt)
        net.hr_head.chunk_mib = chunk_mib
        net.zero_grad(set_to_none=True)
        for k in calls:
            calls[k] = 0
        out = {}

        def step() -> None:
            y = net(x)
            (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
            out["y"] = y.detach()

        saved = saved_tensor_peak(step)
        grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}
        return out["y"], grads, dict(calls), saved

    y0, g0, calls0, saved0 = run(False, 1e6)  # one HR chunk, nothing recomputed
    y1, g1, calls1, saved1 = run(True, 1e-3)  # one slice per HR chunk, everything checkpointed
    assert net.hr_head.chunk_slices((32, 32)) == 1
    assert calls0 == {"stem": 6, "refine": 2, "adapter": 2}  # one sample at a time; the core once per tap
    assert calls1["refine"] == 4 and calls1["adapter"] == 4 and calls1["stem"] >= 12  # recomputed in backward
    assert saved1 < saved0 / 3
    torch.testing.assert_close(y1, y0, atol=1e-6, rtol=1e-5)
    assert set(g0) == set(g1) and len(g0) > 100
    for n in g0:
        scale = g0[n].abs().max().item()
        torch.testing.assert_close(g1[n], g0[n], atol=1e-5 * max(scale, 1.0), rtol=1e-5, msg=n)


def test_hr_chunk_is_bounded_by_bytes() -> None:
    """The HR head's chunk holds as many slices as its byte budget allows (at least one)."""
    net = tiny_net()
    head = net.hr_head
    per_slice = 10 * head.width * 336 * 336 * 4
    head.chunk_mib = 3.5 * per_slice / 2**20
    assert head.chunk_slices((336, 336)) == 3
    assert head.chunk_slices((112, 112)) == 31  # 9x smaller slices: 9x more of them (31.5 floored)
    head.chunk_mib = 1.0
    assert head.chunk_slices((336, 336)) == 1
    with pytest.raises(ValueError, match="hr_chunk_mib"):
        tiny_net(hr_chunk_mib=0)


def test_generic_blocks() -> None:
    x = torch.randn(2, 8, 3, 16, 16)
    film = FiLM(8)
    torch.testing.assert_close(film(x), x)  # zero init is the identity
    with torch.no_grad():
        film.gamma.fill_(1.0)
        film.beta.fill_(0.5)
    torch.testing.assert_close(film(x), 2 * x + 0.5)
    assert SqueezeExcite(8)(x).shape == x.shape
    assert SqueezeExcite(8)(x[:, :, 0]).shape == (2, 8, 16, 16)
    blk = ConvNeXtBlock3d(8, 12, stride=(1, 2, 2))
    assert blk(x).shape == (2, 12, 3, 8, 8)
    assert isinstance(blk.shortcut, nn.Conv3d)
    blk_same = ConvNeXtBlock3d(8)
    torch.testing.assert_close(blk_same(x), x, atol=1e-4, rtol=0)  # layer scale 1e-6 ~ identity
    feats = ConvNeXtPyramid3d(2, (48, 64), depth=2)(torch.randn(1, 2, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(1, 48, 3, 16, 16), (1, 64, 3, 8, 8)]


def test_encoder_rope_rescale_acts_in_training_only() -> None:
    """encoder_rope_rescale (vesselbridge3d trains its HF DINOv3 in train mode: RoPE coordinates rescaled by a
    log-uniform factor in [1/2, 2]) changes the encoder's features from call to call while training, never in
    eval mode, and leaves the ViT itself in eval mode."""
    net = tiny_net(encoder_rope_rescale=2.0)
    enc = net.encoder
    images = torch.randn(2, 3, 32, 32)
    net.eval()
    torch.testing.assert_close(enc(images)[0], enc(images)[0], rtol=0, atol=0)
    plain = tiny_net().encoder.eval()(images)[0]  # same seed, no rescaling
    torch.testing.assert_close(enc(images)[0], plain, rtol=0, atol=0)
    net.train()
    assert not enc.vit.training and enc.vit.rope.training
    draws = [enc(images)[0] for _ in range(3)]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    assert not tiny_net().train().encoder.vit.rope.training  # off by default: RoPE stays in eval mode


def test_encoder_rope_rescale_needs_dinov3_rope() -> None:
    """Encoders without DINOv3's RoPE (DINOv2) have nothing to rescale: the preset's value leaves them alone."""
    net = DINOv3FFA(
        1,
        2,
        encoder="vit_small_patch14_dinov2",
        encoder_kwargs={"embed_dim": 32, "depth": 2, "num_heads": 2},
        taps=(0, 1, 1),
        agg_heads=2,
        encoder_rope_rescale=2.0,
    )
    assert net.encoder.rope_rescale is None
    net.train()
    images = torch.randn(1, 3, 28, 28)
    torch.testing.assert_close(net.encoder(images)[0], net.encoder(images)[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match=">= 1"):
        tiny_net(encoder_rope_rescale=0.5)
