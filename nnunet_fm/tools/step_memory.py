"""Memory of one training step, three ways: saved-for-backward bytes, torch's live-tensor peak, peak RSS.

``measure_step(model, x, target)`` runs forward, a cross-entropy loss and backward once and returns
:class:`StepMemory`:

* ``saved``: peak bytes autograd holds as saved-for-backward tensors
  (:func:`nnunet_fm.tensor_memory.saved_tensor_peak`; recomputation inside a checkpoint is not counted there);
* ``live_peak``: the peak of every live tensor (parameters, gradients, activations, recomputed
  activations, temporaries), counted at the dispatcher (:func:`nnunet_fm.tensor_memory.live_tensor_peak`);
* ``params``: bytes of all parameters and buffers.

Used by ``scripts/memory_vs_reference.py`` (against vesselbridge3d) and by the memory planner.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_fm.tensor_memory import live_tensor_peak, parameter_bytes, saved_tensor_peak

__all__ = ["StepMemory", "measure_step"]


@dataclass
class StepMemory:
    saved: int
    live_peak: int
    params: int

    def as_mib(self) -> dict[str, float]:
        return {k: v / 2**20 for k, v in asdict(self).items()}


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
