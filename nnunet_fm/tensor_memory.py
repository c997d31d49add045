"""Tensor memory of a step, counted deterministically on any device: saved-for-backward bytes and live tensors.

:func:`saved_tensor_book` installs ``torch.autograd.graph.saved_tensors_hooks`` that wrap every tensor an autograd
node saves in a handle counting its storage's bytes until the graph frees it; :func:`saved_tensor_peak` runs a
function under it and returns the peak. :func:`live_tensor_peak` counts every storage an op allocates at torch's
dispatcher until it is freed, on top of the model's parameters and gradients. Used by the memory planner
(:mod:`nnunet_fm.memory_plan`), ``nnunet_fm.tools.step_memory``, the benchmark and the tests.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["live_tensor_peak", "parameter_bytes", "saved_tensor_book", "saved_tensor_peak"]


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


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers of ``model``."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of every storage an op creates until the storage is freed; keeps the running peak."""

    def __init__(self, start: int) -> None:
        super().__init__()
        self.live = start
        self.peak = start
        self.seen: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self.seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or key in self.seen:
                continue
            self.seen.add(key)
            nbytes = storage.nbytes()
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._release, key, nbytes)
        return out


def live_tensor_peak(fn: Callable[[], object], model: nn.Module) -> int:
    """Peak bytes of live tensors while ``fn()`` runs: the model's parameters, buffers and existing gradients plus
    every storage an op allocates until it is freed (activations, recomputations, gradients, temporaries), counted
    at the dispatcher like torch's ``MemTracker`` (which refuses modules called more than once per step)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    start = parameter_bytes(model) + sum(g.numel() * g.element_size() for g in grads)
    mode = _LiveBytes(start)
    with mode:
        fn()
    return int(mode.peak)
