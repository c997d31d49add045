"""Two-pass training step for sub-cube networks: exact gradients with a flat decoder memory footprint.

A network follows the *cube protocol* when it exposes

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

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from nnunet_fm.network_contract import SubCubeNetwork, unwrap

__all__ = ["run_cubes", "saved_tensor_book", "saved_tensor_peak", "two_pass_step"]


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


class _SavedBytes:
    """Book-keeping for :func:`saved_tensor_peak`: live bytes per storage and their running peak."""

    def __init__(self) -> None:
        self.refs: dict[int, list[int]] = {}
        self.live = 0
        self.peak = 0

    def add(self, key: int, nbytes: int) -> None:
        entry = self.refs.get(key)
        if entry is None:
            self.refs[key] = [1, nbytes]
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        else:
            entry[0] += 1

    def remove(self, key: int) -> None:
        entry = self.refs[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.refs[key]


class _Packed:
    """Handle stored by autograd instead of a saved tensor; releases its bytes when the graph dies."""

    __slots__ = ("book", "key", "tensor")

    def __init__(self, tensor: Tensor, book: _SavedBytes) -> None:
        self.tensor = tensor
        self.book = book
        self.key = tensor.untyped_storage().data_ptr()
        book.add(self.key, tensor.untyped_storage().nbytes())

    def __del__(self) -> None:
        self.book.remove(self.key)


@contextlib.contextmanager
def saved_tensor_book() -> Iterator[_SavedBytes]:
    """Count the bytes autograd saves for backward while the block runs (``book.live``, ``book.peak``); once per
    storage, parameters (leaf tensors requiring grad) excluded."""
    book = _SavedBytes()

    def pack(t: Tensor) -> Any:
        if t.is_leaf and t.requires_grad:
            return t
        return _Packed(t, book)

    def unpack(obj: Any) -> Tensor:
        return obj.tensor if isinstance(obj, _Packed) else obj

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield book


def saved_tensor_peak(fn: Callable[[], Any]) -> int:
    """Run ``fn()`` and return the peak of live bytes held by autograd as saved-for-backward tensors.

    Deterministic, device-independent measure of activation memory: every tensor an autograd node
    saves is counted (once per storage, however many nodes share it) from the moment it is saved
    until its graph is freed. Parameters (leaf tensors requiring grad) are not counted: they exist
    regardless of the forward pass.
    """
    with saved_tensor_book() as book:
        fn()
    return book.peak
