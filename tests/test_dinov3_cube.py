"""Tests for the DINOv3 sub-cube network and the two-pass training engine (tiny random ViT, CPU)."""

from __future__ import annotations

import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from torch import nn

from nnunet_fm.architectures.dinov3_cube import DINOv3Cube, valid_cube_sizes
from nnunet_fm.architectures.dinov3_cube_two_pass import SubCubeNetwork, two_pass_step
from nnunet_fm.encoders import FrozenViTEncoder
from nnunet_fm.network_interfaces import unwrap
from nnunet_fm.tensor_memory import saved_tensor_peak

TINY = {"encoder_kwargs": {"embed_dim": 32, "depth": 2, "num_heads": 2}, "taps": (0, 1)}
PATCH = [8, 32, 32]
CUBE = [4, 16, 16]


def make_model(patch=PATCH, cube=CUBE, channels: int = 2, classes: int = 3, **kw) -> DINOv3Cube:
    torch.manual_seed(0)
    return DINOv3Cube(channels, classes, patch, cube_size=cube, **TINY, **kw)


def make_batch(patch=PATCH, channels: int = 2, classes: int = 3, batch: int = 2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, channels, *patch, generator=g)
    y = torch.randint(0, classes, (batch, 1, *patch), generator=g)
    return x, y


def dc_ce() -> nn.Module:
    return DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False}, {})


def ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, target[:, 0])


def trainable_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def ordinary_grads(model: nn.Module, x, y, loss_fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    return loss.detach(), trainable_grads(model)


def max_rel_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(((a[k] - b[k]).norm() / b[k].norm()).item() for k in a)


def test_forward_shape_and_reassembly():
    model = make_model()
    x, _ = make_batch()
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 3, *PATCH)
        regions = model.cube_slices(PATCH)
        assert len(regions) == 8
        covered = torch.zeros(PATCH, dtype=torch.int64)
        for i, r in enumerate(regions):
            covered[r] += 1
            xc = x[(slice(None), slice(None), *r)]
            cube = model.decode_cube(model.encode_cube(xc, i), xc, i)
            torch.testing.assert_close(out[(slice(None), slice(None), *r)], cube, rtol=0, atol=0)
        assert bool((covered == 1).all())


def test_single_window_default_and_protocol_attributes():
    model = DINOv3Cube(1, 2, [4, 32, 16], **TINY)
    assert model.cube_size == [4, 32, 16] and model.num_cubes == 1
    assert isinstance(model.encoder, FrozenViTEncoder)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert not hasattr(model, "initialize")
    assert model(torch.randn(1, 1, 4, 32, 16)).shape == (1, 2, 4, 32, 16)
    with pytest.raises(ValueError, match="patch_size"):
        model(torch.randn(1, 1, 4, 32, 32))


def test_separate_arms_builds_one_head_per_cube():
    shared, separate = make_model(), make_model(separate_arms=True)
    assert len(shared.heads) == 1 and len(shared.output_heads()) == 1
    assert len(separate.heads) == 8 and len(separate.output_heads()) == 8
    for head in separate.output_heads():
        assert isinstance(head, nn.Conv3d) and head.out_channels == 3 and head.bias.shape == (3,)
    assert len({id(h) for h in separate.output_heads()}) == 8


def test_invalid_cube_size_lists_valid_choices():
    assert valid_cube_sizes([8, 32, 48]) == [[1, 2, 4, 8], [16, 32], [16, 48]]
    for bad in ([3, 16, 16], [4, 8, 8], [4, 16, 16, 1]):
        with pytest.raises(ValueError, match=r"D: \[1, 2, 4, 8\], H: \[16, 32\], W: \[16, 32\]"):
            make_model(cube=bad)
    with pytest.raises(ValueError, match=r"H: \[\]"):
        DINOv3Cube(1, 2, [4, 24, 32], **TINY)


def test_head_is_deterministic_and_has_no_stochastic_layers():
    model = make_model().train()
    forbidden = (nn.Dropout, nn.modules.batchnorm._BatchNorm)
    assert not any(isinstance(m, forbidden) or "DropPath" in type(m).__name__ for m in model.heads.modules())
    x, _ = make_batch()
    xc = x[:, :, :4, :16, :16]
    feats = model.encode_cube(xc, 0)
    assert not feats.requires_grad
    torch.testing.assert_close(model.decode_cube(feats, xc, 0), model.decode_cube(feats, xc, 0), rtol=0, atol=0)


def test_input_mapping_minmax_and_depth_position():
    model = make_model()
    x, _ = make_batch()
    xc = x[:, :, :4, :16, :16]
    # per-slice min-max makes the encoder input invariant to a positive affine intensity change
    torch.testing.assert_close(model.encode_cube(3.0 * xc + 5.0, 0), model.encode_cube(xc, 0))
    # the z channel tells cubes at different depths apart (cube 0: slices 0-3, cube 4: slices 4-7)
    assert not torch.allclose(model.encode_cube(xc, 0), model.encode_cube(xc, 4))


@pytest.mark.parametrize("separate_arms", [False, True])
def test_two_pass_gradients_match_ordinary_backprop(separate_arms):
    model = make_model(separate_arms=separate_arms).train()
    x, y = make_batch()
    loss_fn = dc_ce()
    ref_loss, ref = ordinary_grads(model, x, y, loss_fn)
    assert all(g.norm() > 0 for g in ref.values()), "every trainable parameter must get a gradient"
    model.zero_grad(set_to_none=True)
    loss = two_pass_step(model, x, y, loss_fn)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, ref_loss)
    assert max_rel_error(trainable_grads(model), ref) < 1e-5
    assert all(p.grad is None for p in model.encoder.parameters())


def test_scale_loss_scales_gradients_not_loss():
    model = make_model()
    x, y = make_batch()
    ref_loss, ref = ordinary_grads(model, x, y, ce_loss)
    model.zero_grad(set_to_none=True)
    loss = two_pass_step(model, x, y, ce_loss, scale_loss=lambda v: v * 8.0)
    torch.testing.assert_close(loss, ref_loss)
    scaled = trainable_grads(model)
    assert max_rel_error(scaled, {k: 8.0 * v for k, v in ref.items()}) < 1e-5


def test_wrapped_models_are_unwrapped():
    model = make_model()
    x, y = make_batch()
    _, ref = ordinary_grads(model, x, y, ce_loss)
    for wrapped in (nn.DataParallel(model), torch.compile(model)):
        assert unwrap(wrapped) is model and isinstance(model, SubCubeNetwork)
        model.zero_grad(set_to_none=True)
        two_pass_step(wrapped, x, y, ce_loss)
        assert max_rel_error(trainable_grads(model), ref) < 1e-5


def test_ddp_single_process_averages_gradients(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = make_model()
        x, y = make_batch()
        _, ref = ordinary_grads(model, x, y, ce_loss)
        ddp = nn.parallel.DistributedDataParallel(model)
        model.zero_grad(set_to_none=True)
        two_pass_step(ddp, x, y, ce_loss)
        assert max_rel_error(trainable_grads(model), ref) < 1e-5
    finally:
        dist.destroy_process_group()


def test_two_pass_memory_is_flat_in_the_number_of_cubes():
    """Peak live saved-for-backward bytes (see saved_tensor_peak): 1 vs 8 cubes of a fixed size."""
    peaks = {}
    for patch in ([4, 16, 16], [8, 32, 32]):
        model = make_model(patch=patch, cube=CUBE, channels=1, classes=2)
        x, y = make_batch(patch, channels=1, classes=2, batch=1)
        ordinary = saved_tensor_peak(lambda m=model, x=x, y=y: ce_loss(m(x), y).backward())
        two_pass = saved_tensor_peak(lambda m=model, x=x, y=y: two_pass_step(m, x, y, ce_loss))
        peaks[model.num_cubes] = (ordinary, two_pass)
    (ord1, tp1), (ord8, tp8) = peaks[1], peaks[8]
    assert tp8 < 1.3 * tp1
    assert ord8 > 4 * ord1
    assert tp8 < ord8 / 4


def test_two_pass_under_bf16_autocast():
    """Autocast wraps both passes; grads stay fp32 and match ordinary bf16 backprop up to bf16 rounding."""
    model = make_model()
    x, y = make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_loss = ce_loss(model(x).float(), y)
    ref_loss.backward()
    ref = trainable_grads(model)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = two_pass_step(model, x, y, lambda o, t: ce_loss(o.float(), t))
    torch.testing.assert_close(loss, ref_loss.detach())
    grads = trainable_grads(model)
    assert all(g.dtype == torch.float32 for g in grads.values())
    assert max_rel_error(grads, ref) < 2e-2
