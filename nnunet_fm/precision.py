"""Which autocast dtype a device can run: bf16 needs an Ampere-or-newer GPU (not V100, T4) on CUDA."""

from __future__ import annotations

import torch


def bf16_supported(device_type: str) -> bool:
    """True where bf16 autocast runs natively: CPU, and CUDA GPUs with compute capability >= 8.

    On older GPUs ``torch.autocast("cuda", dtype=torch.bfloat16)`` raises (or, where torch emulates bf16, runs
    slowly); callers fall back to fp32 for the frozen encoder and fp16 with a grad scaler for the rest.
    """
    if device_type != "cuda":
        return True
    return bool(torch.cuda.is_bf16_supported(including_emulation=False))
