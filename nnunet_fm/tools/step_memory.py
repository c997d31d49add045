"""Memory of one training step, three ways: saved-for-backward bytes, torch's live-tensor peak, peak RSS.

``measure_step(model, x, target)`` runs forward, a cross-entropy loss and backward once and returns
:class:`StepMemory`:

* ``saved``: peak bytes autograd holds as saved-for-backward tensors
  (:func:`nnunet_fm.two_pass.saved_tensor_peak`; recomputation inside a checkpoint is not counted there);
* ``live_peak``: the peak of every live tensor (parameters, gradients, activations, recomputed
  activations, temporaries), counted at the dispatcher (:func:`live_tensor_peak`);
* ``params``: bytes of all parameters and buffers.

Used by ``scripts/memory_vs_reference.py`` (against vesselbridge3d) and by the memory planner.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from nnunet_fm.two_pass import saved_tensor_peak

__all__ = ["StepMemory", "live_tensor_peak", "measure_step", "parameter_bytes"]


@dataclass
class StepMemory:
    saved: int
    live_peak: int
    params: int

    def as_mib(self) -> dict[str, float]:
        return {k: v / 2**20 for k, v in asdict(self).items()}


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


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def measure_step(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    amp_dtype: torch.dtype | None = None,
) -> StepMemory:
    """Saved-for-backward peak and live-tensor peak of one step ``CE(forward(model, x), target).backward()``.

    ``forward`` defaults to ``model(x)`` and must return ``[B, K, *spatial]`` logits for the integer
    ``target [B, *spatial]``. The step runs twice (once per measure); gradients are cleared after each.
    """
    call = forward or (lambda m, t: m(t))

    def step() -> None:
        with _autocast(x.device, amp_dtype):
            logits = call(model, x)
        F.cross_entropy(logits.float(), target).backward()

    model.train()
    model.zero_grad(set_to_none=True)
    saved = saved_tensor_peak(step)
    model.zero_grad(set_to_none=True)
    live = live_tensor_peak(step, model)
    model.zero_grad(set_to_none=True)
    return StepMemory(saved=saved, live_peak=live, params=parameter_bytes(model))
