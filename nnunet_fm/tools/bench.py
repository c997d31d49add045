"""Benchmark the plugin's networks against the stock nnU-Net U-Net built from the same plans.

``python -m nnunet_fm.tools.bench --help``. One row per architecture, all built for the same patch, input
channels and classes: parameter counts (trainable / frozen), forward FLOPs per patch, the time and
peak memory of one training step (forward + backward + AdamW, nnU-Net's ``DC_and_CE_loss``) and,
optionally, the time of a sliding-window prediction of a fixed random volume. Times and memory are
also given as a ratio to the stock nnU-Net row of the same run. ``--cube-sweep`` instead compares
two-pass and ordinary training of the sub-cube network for 1, 2, 4 and 8 cubes per patch.

Encoder weights are random: timing and memory do not depend on weight values.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import importlib
import json
import os
import platform
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from nnunet_fm.network_contract import count_parameters
from nnunet_fm.tools.report import markdown_table
from nnunet_fm.two_pass import saved_tensor_peak, two_pass_step

__all__ = [
    "DEFAULT_ARCHITECTURE",
    "BenchConfig",
    "BenchResult",
    "Row",
    "SweepRow",
    "build_model",
    "format_report",
    "format_sweep",
    "main",
    "planner_architecture",
    "run_benchmark",
    "run_cube_sweep",
    "split_cubes",
]

STOCK = "unet"
#: model key -> (row label, DINOv3 encoder or None)
MODELS: dict[str, tuple[str, str | None]] = {
    "unet": ("nnU-Net PlainConvUNet (stock)", None),
    "ffa-s": ("DINOv3-FFA ViT-S", "vit_small_patch16_dinov3"),
    "ffa-b": ("DINOv3-FFA ViT-B", "vit_base_patch16_dinov3"),
    "cube": ("DINOv3 sub-cube ViT-S (two-pass)", "vit_small_patch16_dinov3"),
    "lightmedseg": ("LightMedSeg", None),
}
DEFAULT_MODELS = ("unet", "ffa-s", "cube", "lightmedseg")
DEFAULT_PATCH = (16, 64, 64)
#: spacing assumed by the built-in stock architecture (no plans given)
DEFAULT_SPACING = (1.0, 1.0, 1.0)
LOSS_KWARGS: dict[str, Any] = {"batch_dice": False, "smooth": 1e-5, "do_bg": False}
SWEEP_CUBES = (1, 2, 4, 8)

#: What nnU-Net's ExperimentPlanner writes for a 3d_fullres patch of (16, 64, 64) at 1 mm isotropic
#: spacing (PlainConvUNet, 32 base features, 320 max, feature maps >= 4 voxels per axis).
DEFAULT_ARCHITECTURE: dict[str, Any] = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 5,
        "features_per_stage": [32, 64, 128, 256, 320],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]],
        "n_conv_per_stage": [2, 2, 2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2, 2, 2],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}


def planner_architecture(patch: Sequence[int], spacing: Sequence[float] = DEFAULT_SPACING) -> dict[str, Any]:
    """The ``architecture`` block nnU-Net's default 3D planner derives for ``patch`` at ``spacing``."""
    _, strides, kernels, planned, _ = get_pool_and_conv_props(list(spacing), list(patch), 4, 999999)
    if [int(p) for p in planned] != [int(p) for p in patch]:
        raise ValueError(
            f"nnU-Net's planner cannot use patch {list(patch)} as is (it would use {[int(p) for p in planned]}); "
            "pass --plans or a patch divisible by the pooling factors."
        )
    n = len(strides)
    arch = copy.deepcopy(DEFAULT_ARCHITECTURE)
    arch["arch_kwargs"].update(
        n_stages=n,
        features_per_stage=[min(320, 32 * 2**i) for i in range(n)],
        kernel_sizes=[[int(k) for k in ks] for ks in kernels],
        strides=[[int(s) for s in st] for st in strides],
        n_conv_per_stage=[2] * n,
        n_conv_per_stage_decoder=[2] * (n - 1),
    )
    return arch


@dataclass
class BenchConfig:
    """Everything a benchmark run depends on (see ``python -m nnunet_fm.tools.bench --help``)."""

    device: str = "cpu"
    patch: tuple[int, int, int] = DEFAULT_PATCH
    batch: int = 1
    repeats: int = 3
    models: tuple[str, ...] = DEFAULT_MODELS
    input_channels: int = 1
    num_classes: int = 2
    architecture: dict[str, Any] | None = None
    architecture_source: str = "built-in default (nnU-Net planner, 1 mm isotropic)"
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    taps: tuple[int, ...] | None = None
    agg_heads: int | None = None
    cube_size: tuple[int, int, int] | None = None
    predict_volume: tuple[int, int, int] | None = None
    amp: bool = False
    seed: int = 0


@dataclass
class Row:
    """One architecture's measurements; ``status`` is ``"ok"`` or why the row has no numbers."""

    name: str
    label: str
    status: str = "ok"
    trainable: int | None = None
    frozen: int | None = None
    flops: int | None = None
    step_s: float | None = None
    step_min_s: float | None = None
    step_max_s: float | None = None
    peak_bytes: int | None = None
    saved_bytes: int | None = None
    predict_s: float | None = None
    ratios: dict[str, float | None] = field(default_factory=dict)


@dataclass
class BenchResult:
    """Rows plus the context needed to reproduce them."""

    config: BenchConfig
    rows: list[Row]
    machine: dict[str, str]
    command: str
    date: str


@dataclass
class SweepRow:
    """Sub-cube training cost for one number of cubes, ordinary autograd vs two-pass."""

    cubes: int
    cube_size: tuple[int, int, int] | None
    status: str = "ok"
    step_s: dict[str, float] = field(default_factory=dict)
    step_min_s: dict[str, float] = field(default_factory=dict)
    saved_bytes: dict[str, int] = field(default_factory=dict)
    peak_bytes: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- machine and memory


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


def _release_memory() -> None:
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
        _release_memory()
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(cfg: BenchConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if cfg.amp:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- models


def _fm_kwargs(cfg: BenchConfig, ffa: bool) -> dict[str, Any]:
    kw: dict[str, Any] = {"encoder_kwargs": dict(cfg.encoder_kwargs), "vit_amp": cfg.amp}
    if cfg.taps is not None:
        kw["taps"] = tuple(cfg.taps)
    if ffa and cfg.agg_heads is not None:
        kw["agg_heads"] = cfg.agg_heads
    return kw


class _RowStatusError(Exception):
    """A model that cannot run in this setting; the message is the row's status."""


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _import(module: str, name: str) -> type:
    """``module.name``; any failure (the module may be half-written) becomes an "unavailable" status."""
    try:
        return getattr(importlib.import_module(module), name)
    except Exception as exc:
        raise _RowStatusError(f"unavailable (import error: {_short(exc)})") from exc


def build_model(name: str, cfg: BenchConfig) -> nn.Module:
    """Build architecture ``name`` (a key of ``MODELS``) for ``cfg``'s patch, channels and classes."""
    torch.manual_seed(cfg.seed)
    c, k = cfg.input_channels, cfg.num_classes
    encoder = MODELS[name][1]
    if name == "unet":
        arch = cfg.architecture if cfg.architecture is not None else planner_architecture(cfg.patch)
        return get_network_from_plans(
            arch["network_class_name"],
            arch["arch_kwargs"],
            arch["_kw_requires_import"],
            c,
            k,
            deep_supervision=False,
        )
    if name in ("ffa-s", "ffa-b"):
        cls = _import("nnunet_fm.architectures.dinov3_ffa", "DINOv3FFA")
        return cls(c, k, encoder=encoder, **_fm_kwargs(cfg, ffa=True))
    if name == "cube":
        cls = _import("nnunet_fm.architectures.dinov3_cube", "DINOv3Cube")
        return cls(c, k, patch_size=list(cfg.patch), encoder=encoder, cube_size=cfg.cube_size, **_fm_kwargs(cfg, False))
    if name == "lightmedseg":
        cls = _import("nnunet_fm.architectures.lightmedseg", "LightMedSeg")
        divisor = int(getattr(cls, "size_divisor", 1))
        if any(p % divisor for p in cfg.patch):
            raise _RowStatusError(f"skipped (patch {list(cfg.patch)}: every size must be divisible by {divisor})")
        return cls(c, k)
    raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")


def forward_flops(model: nn.Module, cfg: BenchConfig, device: torch.device) -> int:
    """FLOPs of one forward pass on one patch (``FlopCounterMode``: 2 per multiply-accumulate)."""
    x = torch.randn(1, cfg.input_channels, *cfg.patch, device=device)
    model.eval()
    try:
        with torch.no_grad(), _autocast(cfg, device), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train()
    return int(counter.get_total_flops())


def _loss() -> nn.Module:
    return DC_and_CE_loss(dict(LOSS_KWARGS), {})


def _batch(cfg: BenchConfig, device: torch.device) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(cfg.batch, cfg.input_channels, *cfg.patch, generator=g)
    y = torch.randint(0, cfg.num_classes, (cfg.batch, 1, *cfg.patch), generator=g)
    return x.to(device), y.to(device)


def make_train_step(model: nn.Module, cfg: BenchConfig, device: torch.device, two_pass: bool) -> Callable[[], None]:
    """A closure running one training step (zero grad, forward, backward, AdamW) on a fixed batch."""
    loss_fn = _loss()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
    x, y = _batch(cfg, device)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if two_pass:
            with _autocast(cfg, device):
                two_pass_step(model, x, y, loss_fn)
        else:
            with _autocast(cfg, device):
                loss = loss_fn(model(x), y)
            loss.backward()
        opt.step()

    return step


def time_call(fn: Callable[[], Any], repeats: int, device: torch.device) -> list[float]:
    """Seconds per call of ``fn`` for ``repeats`` calls after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def measure_memory(fn: Callable[[], Any], device: torch.device) -> tuple[int, int]:
    """``(peak, saved)`` bytes of one call: peak = CUDA max allocated or CPU peak RSS growth; saved =
    peak of tensors saved for backward (:func:`~nnunet_fm.two_pass.saved_tensor_peak`)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        saved = saved_tensor_peak(fn)
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device)), saved
    with PeakRSS() as rss:
        saved = saved_tensor_peak(fn)
    return rss.delta, saved


def sliding_window_predict(model: nn.Module, volume: Tensor, patch: Sequence[int], num_classes: int) -> Tensor:
    """nnU-Net-style tiling: tiles of ``patch`` with 50% overlap, Gaussian-weighted sum, no mirroring.

    ``volume`` is ``[C, D, H, W]`` and at least ``patch`` along every axis; returns averaged logits.
    """
    shape = tuple(int(s) for s in volume.shape[1:])
    patch = tuple(int(p) for p in patch)
    if any(s < p for s, p in zip(shape, patch)):
        raise ValueError(f"volume {list(shape)} is smaller than the patch {list(patch)}")
    device = volume.device
    gaussian = compute_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10, dtype=torch.float32, device=device)
    logits = torch.zeros((num_classes, *shape), device=device)
    weight = torch.zeros(shape, device=device)
    steps = compute_steps_for_sliding_window(shape, patch, 0.5)
    for d in steps[0]:
        for h in steps[1]:
            for w in steps[2]:
                region = (slice(d, d + patch[0]), slice(h, h + patch[1]), slice(w, w + patch[2]))
                pred = model(volume[(slice(None), *region)][None])[0].float()
                logits[(slice(None), *region)] += pred * gaussian
                weight[region] += gaussian
    return logits / weight


def _time_prediction(model: nn.Module, cfg: BenchConfig, device: torch.device) -> float:
    assert cfg.predict_volume is not None
    g = torch.Generator().manual_seed(cfg.seed + 1)
    volume = torch.randn(cfg.input_channels, *cfg.predict_volume, generator=g).to(device)
    tile = volume[(slice(None), *(slice(0, p) for p in cfg.patch))][None]
    model.eval()
    try:
        with torch.no_grad(), _autocast(cfg, device):
            model(tile)  # warm-up on one tile, not a whole prediction
            _sync(device)
            times = []
            for _ in range(max(1, cfg.repeats)):
                t0 = time.perf_counter()
                sliding_window_predict(model, volume, cfg.patch, cfg.num_classes)
                _sync(device)
                times.append(time.perf_counter() - t0)
    finally:
        model.train()
    return statistics.median(times)


def measure_model(name: str, cfg: BenchConfig, device: torch.device) -> Row:
    """All measurements of one architecture; failures become the row's status, never an exception."""
    row = Row(name, MODELS[name][0])
    try:
        model = build_model(name, cfg).to(device)
    except _RowStatusError as exc:
        row.status = str(exc)
        return row
    except Exception as exc:
        row.status = f"error ({_short(exc)})"
        return row
    try:
        row.trainable, row.frozen = count_parameters(model)
        row.flops = forward_flops(model, cfg, device)
        step = make_train_step(model, cfg, device, two_pass=name == "cube")
        times = time_call(step, cfg.repeats, device)
        row.step_s, row.step_min_s, row.step_max_s = statistics.median(times), min(times), max(times)
        row.peak_bytes, row.saved_bytes = measure_memory(step, device)
        if cfg.predict_volume is not None:
            row.predict_s = _time_prediction(model, cfg, device)
    except Exception as exc:
        row.status = f"error ({_short(exc)})"
    finally:
        del model
        _release_memory()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


RATIO_FIELDS = ("step_s", "peak_bytes", "saved_bytes", "predict_s")


def _add_ratios(rows: list[Row]) -> None:
    stock = next((r for r in rows if r.name == STOCK and r.status == "ok"), None)
    for row in rows:
        for key in RATIO_FIELDS:
            ref = getattr(stock, key) if stock is not None else None
            value = getattr(row, key)
            row.ratios[key] = value / ref if value is not None and ref else None


def _command(argv: Sequence[str] | None) -> str:
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "-m", "nnunet_fm.tools.bench", *args])


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def run_benchmark(cfg: BenchConfig, argv: Sequence[str] | None = None) -> BenchResult:
    """Measure every model of ``cfg.models`` in turn and return the rows with ratios to the stock row."""
    device = torch.device(cfg.device)
    machine, started = machine_info(device), _now()
    rows = [measure_model(name, cfg, device) for name in cfg.models]
    _add_ratios(rows)
    return BenchResult(cfg, rows, machine, _command(argv), started)


# --------------------------------------------------------------------------- cube sweep


def split_cubes(patch: Sequence[int], n: int, stride: int = 16, min_inplane: int = 32) -> tuple[int, int, int] | None:
    """Cube size splitting ``patch`` into ``n`` (a power of two) cubes, or None when impossible.

    Halves the largest axis each time; in-plane sizes stay multiples of ``stride`` and at least
    ``min_inplane`` (2 tokens), depth at least 1. Ties go to depth.
    """
    size = [int(p) for p in patch]
    count = 1
    while count < n:
        ok = [
            ax
            for ax, s in enumerate(size)
            if s % 2 == 0 and (ax == 0 or ((s // 2) % stride == 0 and s // 2 >= min_inplane))
        ]
        if not ok:
            return None
        ax = max(ok, key=lambda a: (size[a], -a))
        size[ax] //= 2
        count *= 2
    return (size[0], size[1], size[2]) if count == n else None


def run_cube_sweep(
    cfg: BenchConfig, counts: Sequence[int] = SWEEP_CUBES, argv: Sequence[str] | None = None
) -> tuple[list[SweepRow], BenchResult]:
    """Step time and memory of the sub-cube network vs number of cubes, two-pass and ordinary."""
    device = torch.device(cfg.device)
    machine, started = machine_info(device), _now()
    rows = []
    for n in counts:
        cube = split_cubes(cfg.patch, n)
        row = SweepRow(n, cube)
        if cube is None:
            row.status = f"skipped (patch {list(cfg.patch)} cannot be split into {n} cubes)"
            rows.append(row)
            continue
        sub = copy.copy(cfg)
        sub.cube_size = cube
        try:
            model = build_model("cube", sub).to(device)
            for mode in ("ordinary", "two-pass"):
                step = make_train_step(model, sub, device, two_pass=mode == "two-pass")
                times = time_call(step, cfg.repeats, device)
                row.step_s[mode], row.step_min_s[mode] = statistics.median(times), min(times)
                row.peak_bytes[mode], row.saved_bytes[mode] = measure_memory(step, device)
                del step
            del model
        except _RowStatusError as exc:
            row.status = str(exc)
        except Exception as exc:
            row.status = f"error ({_short(exc)})"
        _release_memory()
        rows.append(row)
    return rows, BenchResult(cfg, [], machine, _command(argv), started)


# --------------------------------------------------------------------------- formatting


def _fmt_int(v: int | None) -> str:
    return "" if v is None else f"{v:,}"


def _fmt(v: float | None, spec: str) -> str:
    return "" if v is None else format(v, spec)


def _mib(v: int | None) -> str:
    return "" if v is None else f"{v / 2**20:.1f}"


def _ratio(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}x"


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        return markdown_table(header, rows, numeric_from=1)
    full = [r for r in rows if len(r) == len(header)]
    widths = [max(len(x) for x in col) for col in zip(header, *full)]

    def line(cells: list[str]) -> str:
        if len(cells) != len(header):  # a status row: label + message
            return f"{cells[0]:<{widths[0]}}  {cells[1]}"
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def _context(result: BenchResult, markdown: bool, extra: list[str], stock: bool = True) -> list[str]:
    cfg = result.config
    items = [f"command: `{result.command}`" if markdown else f"command: {result.command}", f"started: {result.date}"]
    items += [f"{k}: {v}" for k, v in result.machine.items()]
    items += [
        f"patch (D, H, W): {list(cfg.patch)}, batch {cfg.batch}, input channels {cfg.input_channels}, "
        f"classes {cfg.num_classes}, {'bf16 autocast' if cfg.amp else 'fp32'}",
        *([f"stock nnU-Net architecture: {cfg.architecture_source}"] if stock else []),
        *_overrides(cfg),
        f"timing: median of {max(1, cfg.repeats)} runs after 1 warm-up run",
        *extra,
        "encoder weights: random (timing and memory do not depend on weight values)",
    ]
    if markdown:
        return [f"- {i}" for i in items]
    return [f"# {i}" for i in items]


def _overrides(cfg: BenchConfig) -> list[str]:
    """A context line naming non-default DINOv3 settings (the row labels assume the defaults)."""
    kw = {
        "encoder_kwargs": cfg.encoder_kwargs,
        "taps": cfg.taps,
        "agg_heads": cfg.agg_heads,
        "cube_size": cfg.cube_size,
    }
    kw = {k: v for k, v in kw.items() if v}
    return [f"DINOv3 overrides (labels show the default encoder names): {kw}"] if kw else []


def _memory_note(device: str) -> str:
    if device == "cuda":
        return "peak mem: torch.cuda.max_memory_allocated during one step (params, grads, optimizer state included)"
    return "peak mem: growth of the process RSS during one step over the RSS before it (after malloc_trim)"


def format_report(result: BenchResult, markdown: bool = False) -> str:
    """The main table with its context (command, date, machine, definitions), as text or Markdown."""
    cfg = result.config
    predict = cfg.predict_volume is not None
    header = [
        "model",
        "trainable params",
        "frozen params",
        "GFLOP fwd/patch",
        "step s",
        "step min-max s",
        "step x stock",
        "peak mem MiB",
        "mem x stock",
        "saved act MiB",
        "saved x stock",
    ]
    if predict:
        header += ["predict s", "predict x stock"]
    body = []
    for r in result.rows:
        if r.status != "ok":
            body.append([r.label, r.status])
            continue
        cells = [
            r.label,
            _fmt_int(r.trainable),
            _fmt_int(r.frozen),
            _fmt(None if r.flops is None else r.flops / 1e9, ".2f"),
            _fmt(r.step_s, ".3f"),
            f"{r.step_min_s:.3f}-{r.step_max_s:.3f}" if r.step_min_s is not None else "",
            _ratio(r.ratios.get("step_s")),
            _mib(r.peak_bytes),
            _ratio(r.ratios.get("peak_bytes")),
            _mib(r.saved_bytes),
            _ratio(r.ratios.get("saved_bytes")),
        ]
        if predict:
            cells += [_fmt(r.predict_s, ".2f"), _ratio(r.ratios.get("predict_s"))]
        body.append(cells)
    if markdown:
        body = [r if len(r) == len(header) else [r[0], r[1]] + [""] * (len(header) - 2) for r in body]
    extra = [
        "GFLOP: torch.utils.flop_counter.FlopCounterMode, batch 1, eval mode; it counts 2 FLOPs per "
        "multiply-accumulate (GMACs = GFLOP / 2); convolutions, matmuls and attention only",
        "step: zero_grad + forward + backward + AdamW step, loss nnU-Net DC_and_CE_loss "
        f"({LOSS_KWARGS}, {{}}); the sub-cube row uses nnunet_fm.two_pass.two_pass_step",
        _memory_note(cfg.device),
        "saved act: peak bytes of tensors saved for backward during one step (nnunet_fm.two_pass.saved_tensor_peak)",
        "x stock: ratio to the stock nnU-Net row of the same run",
    ]
    if predict:
        extra.append(
            f"predict: sliding window over a random {list(cfg.predict_volume)} volume, own loop with nnU-Net's "
            "compute_steps_for_sliding_window (50% overlap) and compute_gaussian weighting, batch 1, no mirroring"
        )
    title = "## nnunet-fm benchmark" if markdown else "# nnunet-fm benchmark"
    return "\n".join([title, "", *_context(result, markdown, extra), "", _table(header, body, markdown)])


def format_sweep(rows: list[SweepRow], result: BenchResult, markdown: bool = False) -> str:
    """The ``--cube-sweep`` table (ordinary vs two-pass per number of cubes) with its context."""
    modes = ("ordinary", "two-pass")
    header = ["cubes", "cube size", "ordinary s", "two-pass s", "ordinary min s", "two-pass min s"]
    header += ["ordinary saved MiB", "two-pass saved MiB", "ordinary peak MiB", "two-pass peak MiB"]
    body = []
    for r in rows:
        if r.status != "ok":
            cells = [str(r.cubes), r.status]
            body.append(cells + [""] * (len(header) - 2) if markdown else cells)
            continue
        body.append(
            [
                str(r.cubes),
                "x".join(str(c) for c in r.cube_size or ()),
                *(_fmt(r.step_s.get(m), ".3f") for m in modes),
                *(_fmt(r.step_min_s.get(m), ".3f") for m in modes),
                *(_mib(r.saved_bytes.get(m)) for m in modes),
                *(_mib(r.peak_bytes.get(m)) for m in modes),
            ]
        )
    extra = [
        "model: DINOv3 sub-cube ViT-S (or --encoder-kwargs), cube size from halving the largest axis "
        "(in-plane >= 32, multiples of 16)",
        "ordinary: loss.backward() through the re-assembled prediction; two-pass: nnunet_fm.two_pass.two_pass_step; "
        "both + AdamW step",
        _memory_note(result.config.device),
        "saved: peak bytes of tensors saved for backward during one step (nnunet_fm.two_pass.saved_tensor_peak)",
    ]
    title = "## sub-cube sweep" if markdown else "# sub-cube sweep"
    return "\n".join([title, "", *_context(result, markdown, extra, stock=False), "", _table(header, body, markdown)])


# --------------------------------------------------------------------------- command line


def _read_plans(path: Path, configuration: str) -> tuple[dict[str, Any], list[int], int | None, int | None]:
    """Architecture block, patch, input channels and classes (the last two from a sibling dataset.json)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(str(path))
    conf = manager.get_configuration(configuration)
    arch = {
        "network_class_name": conf.network_arch_class_name,
        "arch_kwargs": dict(conf.network_arch_init_kwargs),
        "_kw_requires_import": list(conf.network_arch_init_kwargs_req_import),
    }
    channels = classes = None
    dataset_json = path.parent / "dataset.json"
    if dataset_json.is_file():
        ds = json.loads(dataset_json.read_text())
        channels = len(ds.get("channel_names", ds.get("modality", {}))) or None
        classes = manager.get_label_manager(ds).num_segmentation_heads
    return arch, [int(p) for p in conf.patch_size], channels, classes


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nnunet_fm.tools.bench",
        description="Params, FLOPs, train-step time and memory of the plugin's networks vs stock nnU-Net.",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--plans", type=Path, help="nnUNetPlans.json; the stock network is built from its configuration")
    p.add_argument("--configuration", default="3d_fullres")
    p.add_argument("--patch", type=int, nargs=3, metavar=("D", "H", "W"), help="default: plans' patch or 16 64 64")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(DEFAULT_MODELS))
    p.add_argument("--input-channels", type=int, default=1, help="used when no dataset.json sits next to --plans")
    p.add_argument("--num-classes", type=int, default=2, help="used when no dataset.json sits next to --plans")
    p.add_argument("--encoder-kwargs", type=json.loads, default={}, help="timm overrides, e.g. '{\"depth\": 2}'")
    p.add_argument("--taps", type=int, nargs="+", help="ViT block indices for the DINOv3 models")
    p.add_argument("--agg-heads", type=int, help="DINOv3-FFA aggregator heads")
    p.add_argument("--cube-size", type=int, nargs=3, metavar=("D", "H", "W"), help="sub-cube row (default: 1 cube)")
    p.add_argument("--predict-volume", type=int, nargs=3, metavar=("D", "H", "W"), help="also time sliding window")
    p.add_argument("--cube-sweep", action="store_true", help="only the sub-cube sweep over 1, 2, 4, 8 cubes")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (meant for CUDA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Turn parsed command-line arguments into a :class:`BenchConfig`."""
    cfg = BenchConfig(
        device=args.device,
        batch=args.batch,
        repeats=args.repeats,
        models=tuple(args.models),
        input_channels=args.input_channels,
        num_classes=args.num_classes,
        encoder_kwargs=dict(args.encoder_kwargs),
        taps=tuple(args.taps) if args.taps else None,
        agg_heads=args.agg_heads,
        cube_size=tuple(args.cube_size) if args.cube_size else None,
        predict_volume=tuple(args.predict_volume) if args.predict_volume else None,
        amp=args.amp,
        seed=args.seed,
    )
    patch = args.patch
    if args.plans is not None:
        arch, plans_patch, channels, classes = _read_plans(args.plans, args.configuration)
        cfg.architecture = arch
        cfg.architecture_source = f"{args.plans} ({args.configuration}, plans patch {plans_patch})"
        patch = patch or plans_patch
        cfg.input_channels = channels or cfg.input_channels
        cfg.num_classes = classes or cfg.num_classes
    cfg.patch = tuple(patch) if patch else DEFAULT_PATCH
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: run the benchmark (or the cube sweep) and print the table."""
    args = _parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    cfg = config_from_args(args)
    if args.cube_sweep:
        rows, result = run_cube_sweep(cfg, argv=argv)
        print(format_sweep(rows, result, args.markdown))
    else:
        print(format_report(run_benchmark(cfg, argv=argv), args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
