"""Two-pass training step for sub-cube networks (DINOv3 sub-cube family): exact gradients with a flat decoder
memory footprint.

A network follows the *cube protocol* (:class:`SubCubeNetwork`) when it exposes

- ``cube_slices(spatial_shape) -> list[tuple[slice, slice, slice]]``: non-overlapping regions tiling
  the patch (index ``i`` of the list is the cube index);
- ``encode_cube(x_cube, cube_index) -> features``: frozen part, run without autograd;
- ``decode_cube(features, x_cube, cube_index) -> logits_cube``: trainable part, a pure function of
  its inputs (no dropout / DropPath / BatchNorm statistics), so that running it twice gives the
  same result.

:func:`two_pass_step` then computes exactly the gradients of ordinary back-propagation through the
re-assembled prediction, while only one cube's decoder graph is alive at any time:

1. every cube is encoded (features kept) and decoded under ``no_grad``; the assembled logits become
   a leaf tensor, the global loss is computed on it and ``d loss / d logits`` is taken;
2. every cube is decoded again with autograd and ``cube_logits.backward(grad[region])`` is called;
   the cube's graph is freed before the next one.

Mixed precision is the caller's job: wrap the call in ``torch.autocast`` (bf16 on CUDA) and both
passes run under it; pass ``scale_loss=grad_scaler.scale`` to plug in a ``GradScaler``. The step
accumulates into ``.grad`` like ``loss.backward()`` does; the caller zeroes, clips and steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from nnunet_fm.network_interfaces import unwrap

__all__ = ["SubCubeNetwork", "run_cubes", "two_pass_step"]


@runtime_checkable
class SubCubeNetwork(Protocol):
    """The cube protocol of the module docstring (implemented by
    :class:`~nnunet_fm.architectures.dinov3_cube.DINOv3Cube`)."""

    def cube_slices(self, spatial_shape: tuple[int, ...]) -> list[tuple[slice, ...]]: ...

    def encode_cube(self, x_cube: Tensor, cube_index: int) -> Any: ...

    def decode_cube(self, features: Any, x_cube: Tensor, cube_index: int) -> Tensor: ...


def _is_ddp(model: nn.Module) -> bool:
    """True when any wrapper layer of ``model`` is DistributedDataParallel."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            return True
        if isinstance(model, nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return False


def _average_gradients(net: nn.Module) -> None:
    """All-reduce (mean) the gradients of trainable parameters across the default process group."""
    import torch.distributed as dist

    world = dist.get_world_size()
    for p in net.parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        if world > 1:
            p.grad.div_(world)


def _region(r: tuple[slice, ...]) -> tuple[slice, ...]:
    """Index tuple selecting spatial region ``r`` of a ``[B, C, *spatial]`` tensor."""
    return (slice(None), slice(None), *r)


def run_cubes(net: SubCubeNetwork, x: Tensor) -> tuple[Tensor, list[Any]]:
    """Encode and decode every cube of ``x``; returns the re-assembled ``[B, num_classes, *spatial]`` logits and
    each cube's features (in cube-index order). Autograd follows the caller's grad mode."""
    logits: Tensor | None = None
    features: list[Any] = []
    for i, r in enumerate(net.cube_slices(tuple(x.shape[2:]))):
        x_cube = x[_region(r)]
        feats = net.encode_cube(x_cube, i)
        cube_logits = net.decode_cube(feats, x_cube, i)
        if logits is None:
            logits = cube_logits.new_empty((x.shape[0], cube_logits.shape[1], *x.shape[2:]))
        logits[_region(r)] = cube_logits
        features.append(feats)
    if logits is None:
        raise ValueError(f"{type(net).__name__}.cube_slices returned no regions for {tuple(x.shape[2:])}")
    return logits, features


def two_pass_step(
    model: nn.Module,
    x: Tensor,
    target: Any,
    loss_fn: Callable[[Tensor, Any], Tensor],
    scale_loss: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Accumulate exact parameter gradients of ``loss_fn(model(x), target)`` cube by cube.

    ``scale_loss`` (e.g. ``GradScaler.scale``) is applied to the loss before differentiation.
    Returns the detached, unscaled loss. With DDP the wrapper's hooks are bypassed (only the
    unwrapped network is called), so gradients are averaged across ranks here, after pass 2.
    """
    net = unwrap(model)
    if not isinstance(net, SubCubeNetwork):
        raise TypeError(f"two_pass_step needs a network with the sub-cube protocol; {type(net).__name__} has none.")
    with torch.no_grad():
        logits, features = run_cubes(net, x)
    logits.requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(logits, target)
        objective = scale_loss(loss) if scale_loss is not None else loss
        (grad,) = torch.autograd.grad(objective, logits)
    del logits, objective
    for i, r in enumerate(net.cube_slices(tuple(x.shape[2:]))):
        x_cube = x[_region(r)]
        with torch.enable_grad():
            cube_logits = net.decode_cube(features[i], x_cube, i)
        cube_logits.backward(grad[_region(r)])
        del cube_logits
        features[i] = None
    if _is_ddp(model):
        _average_gradients(net)
    return loss.detach()
