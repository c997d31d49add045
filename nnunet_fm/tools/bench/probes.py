"""Measurement primitives: machine description, timing, peak memory, saved activations, FLOPs."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nnunet_fm.tensor_memory import saved_tensor_peak
from nnunet_fm.tools.bench.config import BenchConfig


def machine_info(device: torch.device) -> dict[str, str]:
    """CPU model, cores, threads, load, torch / Python versions and the device."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    info = {
        "cpu": cpu,
        "cores": f"{os.cpu_count()} logical, {usable} usable by this process",
        "torch threads": f"{torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})",
        "load average": " / ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1 / 5 / 15 min, at start)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc/self/statm``)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    """Peak resident set size since the last reset (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("VmHWM not found")


def release_memory() -> None:
    """Collect garbage and hand free heap pages back to the OS so that RSS starts low."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakRSS:
    """Peak growth of the resident set over a ``with`` block.

    Resets the kernel's high-water mark (``/proc/self/clear_refs``) and reads ``VmHWM`` afterwards;
    where that is not allowed, a thread samples ``/proc/self/statm`` every ``interval`` seconds.
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.base = 0
        self.peak = 0
        self._hwm = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        release_memory()
        self.base = self.peak = _rss_bytes()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            _hwm_bytes()
            self._hwm = True
        except OSError:
            self._hwm = False
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.peak = max(self.peak, _rss_bytes(), _hwm_bytes() if self._hwm else 0)

    @property
    def delta(self) -> int:
        """Peak RSS minus RSS at entry, in bytes (never negative)."""
        return max(0, self.peak - self.base)


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work so that a timer sees it; no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(cfg: BenchConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast when ``cfg.amp``, else a no-op context."""
    if cfg.amp:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def time_call(fn: Callable[[], Any], repeats: int, device: torch.device) -> list[float]:
    """Seconds per call of ``fn`` for ``repeats`` calls after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def measure_memory(fn: Callable[[], Any], device: torch.device) -> tuple[int, int]:
    """``(peak, saved)`` bytes of one call: peak = CUDA max allocated or CPU peak RSS growth; saved =
    peak of tensors saved for backward (:func:`~nnunet_fm.tensor_memory.saved_tensor_peak`)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        saved = saved_tensor_peak(fn)
        sync(device)
        return int(torch.cuda.max_memory_allocated(device)), saved
    with PeakRSS() as rss:
        saved = saved_tensor_peak(fn)
    return rss.delta, saved


def forward_flops(model: nn.Module, cfg: BenchConfig, device: torch.device) -> int:
    """FLOPs of one forward pass on one patch (``FlopCounterMode``: 2 per multiply-accumulate)."""
    x = torch.randn(1, cfg.input_channels, *cfg.patch, device=device)
    model.eval()
    try:
        with torch.no_grad(), autocast(cfg, device), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train()
    return int(counter.get_total_flops())
