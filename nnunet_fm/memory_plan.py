"""Planned memory: the peak training and prediction memory of a configuration, estimated from measured steps.

Method (printed with every estimate). The configuration's network (random weights, the configured encoder) runs
training steps on the CPU at the configuration's in-plane size, batch 1 and two small depths, under the dtype
policy of CUDA training (bf16 autocast; CPU autocast stands in for it), with torch's own memory accounting:

* ``activations``: the bytes autograd saves for backward (:func:`nnunet_fm.tensor_memory.saved_tensor_peak`) with the
  configuration's checkpointing, linear in batch x depth (fitted through the two depths);
* ``transient``: the largest memory that exists only for a moment. A network that declares ``memory_segments``
  (DINOv3-FFA) names the modules it recomputes in backward: each one's saved bytes, measured with
  checkpointing off, is the memory its recomputation needs (x :data:`BACKWARD_FACTOR` for the gradients flowing
  through it); ``"depth"`` segments run one sample at a time and grow with the crop depth, ``"chunk"`` segments
  (the full-resolution head's chunk) do not (``"batch"`` / ``"batch_chunk"``: the same on the whole batch);
  plus the logits, the loss's log-softmax and their gradient. A slice network is probed at a small in-plane
  size (4 x 4 encoder tokens) and its per-slice bytes scaled by area. Other networks: the live-tensor peak
  (:func:`nnunet_fm.tensor_memory.live_tensor_peak`) minus parameters, gradients and activations, linear in
  batch x depth;
* ``parameters`` (every parameter and buffer), ``gradients`` (fp32, trainable), ``optimizer`` (AdamW: two fp32
  moments per trainable parameter);
* ``prediction``: parameters plus the live-tensor peak of one no-grad forward of a sliding window (batch 1),
  linear in depth; nnU-Net's whole-image logits buffer (classes x image voxels) comes on top.

The estimate is the sum; it does not include the CUDA context (about 0.5 GB) or allocator fragmentation.
Profiles are cached per network, in-plane size and policy in ``nnUNet_preprocessed/<dataset>/`` so that
``plans show`` answers at once after ``plans add``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_fm.atomic_io import atomic_write_json
from nnunet_fm.tensor_memory import live_tensor_peak, parameter_bytes, saved_tensor_book, saved_tensor_peak

__all__ = ["MemoryEstimate", "MemoryProfile", "choose_geometry", "estimate", "measure_profile"]

GIB = 2**30
#: a recomputed segment's backward holds its saved tensors plus the gradients flowing through it (the output's
#: and the first layers' input gradients, about a fifth of the saved maps): the transient is its saved bytes x this
BACKWARD_FACTOR = 1.25
#: fp32 maps of the size of the logits alive during a step: the logits, the loss's log-softmax, their gradient
OUTPUT_MAPS = 3
#: the dtype policy of CUDA training with the plugin's trainers (``amp_dtype`` bfloat16)
POLICY = "bf16 autocast"
CACHE_NAME = "nnunet_fm_memory_profiles.json"


@dataclass
class MemoryProfile:
    """Measured at batch 1: ``saved``/``live``/``forward`` per probe depth, segment footprints per depth."""

    depths: list[int]
    parameters: int
    trainable: int
    saved: list[int]
    live: list[int]
    forward: list[int]
    segments: dict[str, list[int]] = field(default_factory=dict)
    segment_kinds: dict[str, str] = field(default_factory=dict)
    policy: str = POLICY
    #: "slices": probes at batch 1 and ``depths`` slices; "batch": probes at the whole patch, batch 1 and 2
    #: (``depths`` are then batch x patch depth)
    kind: str = "slices"
    #: real in-plane area / probed in-plane area: activation bytes of a slice network scale with it
    area_scale: float = 1.0
    #: slices per chunk of the "chunk" segments at the real in-plane size
    chunk_slices: int = 1
    num_classes: int = 2


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of a training step and of a prediction window at ``batch_size`` x ``patch``."""

    batch_size: int
    patch: tuple[int, ...]
    parameters: int
    gradients: int
    optimizer: int
    activations: int
    transient: int
    prediction: int
    policy: str = POLICY

    @property
    def training(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations + self.transient

    def summary(self) -> str:
        """Two lines for ``plans show`` / ``plans add``."""
        g = lambda v: f"{v / GIB:.1f}"  # noqa: E731
        return (
            f"estimated peak GPU memory ({self.policy}, patch {list(self.patch)}, batch {self.batch_size}): "
            f"training {g(self.training)} GB = parameters {g(self.parameters)} + gradients {g(self.gradients)} + "
            f"AdamW {g(self.optimizer)} + activations {g(self.activations)} + largest transient "
            f"{g(self.transient)}; prediction {g(self.prediction)} GB per window\n"
            "    method: training steps on the CPU at batch 1 and 1-2 slices (slice networks, area-scaled from 4x4 "
            "tokens) or batch 1-2 at the patch, torch's saved-tensor hooks and dispatcher-level live-tensor "
            "accounting, extrapolated along depth (nnunet_fm/memory_plan.py); CUDA context not included"
        )


def _linear(values: list[int], depths: list[int], at: float, scale: float = 1.0) -> float:
    """The line ``c + k * depth`` through ``(depths[i], values[i])`` at ``at``, its slope ``k`` scaled by ``scale`` (the
    per-slice part grows with the in-plane area; the intercept, e.g. buffers of the network's size, does not);
    never below the intercept."""
    (d0, d1), (v0, v1) = depths, values
    slope = (v1 - v0) / (d1 - d0)
    intercept = v0 - slope * d0
    return max(intercept + slope * scale * at, intercept, 0.0)


def estimate(profile: MemoryProfile, batch_size: int, patch: tuple[int, ...], slice_axis: int = 0) -> MemoryEstimate:
    """The :class:`MemoryEstimate` of ``batch_size`` crops of ``patch`` from a batch-1 ``profile``."""
    depth = int(patch[slice_axis])
    units = batch_size * depth
    scale = profile.area_scale
    activations = _linear(profile.saved, profile.depths, units, scale)
    window = depth if profile.kind == "slices" else profile.depths[0]
    if profile.segments:
        transient = 0.0
        for name, values in profile.segments.items():
            kind = profile.segment_kinds[name]
            slices = min(profile.chunk_slices, depth) if kind.endswith("chunk") else depth  # a chunk at a time
            if kind.startswith("batch"):  # the whole batch at once (kinds "batch", "batch_chunk")
                slices *= batch_size
            need = _linear(values, profile.depths, slices, scale)
            transient = max(transient, BACKWARD_FACTOR * need)
        transient += OUTPUT_MAPS * 4 * batch_size * profile.num_classes * math.prod(patch)
    else:
        static = profile.parameters + 4 * profile.trainable
        rest = [max(0, live - static - saved) for live, saved in zip(profile.live, profile.saved)]
        transient = _linear(rest, profile.depths, units)
    forward = [f - profile.parameters for f in profile.forward]
    prediction = profile.parameters + _linear(forward, profile.depths, window, scale)
    return MemoryEstimate(
        batch_size=int(batch_size),
        patch=tuple(int(p) for p in patch),
        parameters=profile.parameters,
        gradients=4 * profile.trainable,
        optimizer=8 * profile.trainable,
        activations=int(activations),
        transient=int(transient),
        prediction=int(max(prediction, profile.parameters)),
        policy=profile.policy,
    )


@contextlib.contextmanager
def _checkpointing(network: nn.Module, on: bool) -> Iterator[None]:
    """Every ``grad_checkpointing`` flag of ``network`` set to ``on`` meanwhile."""
    flagged = [m for m in network.modules() if isinstance(getattr(m, "grad_checkpointing", None), bool)]
    before = [m.grad_checkpointing for m in flagged]
    for m in flagged:
        m.grad_checkpointing = on
    try:
        yield
    finally:
        for m, value in zip(flagged, before):
            m.grad_checkpointing = value


def _segment_footprints(network: nn.Module, step: Callable[[], None]) -> dict[str, int]:
    """Largest saved-for-backward bytes of one call of each ``network.memory_segments`` module during ``step``."""
    found: dict[str, int] = {}
    handles = []
    with saved_tensor_book() as book:
        for name in network.memory_segments:
            module = network.get_submodule(name)
            start: list[int] = []
            handles.append(module.register_forward_pre_hook(lambda *_a, s=start: s.append(book.live)))

            def done(*_a, s=start, n=name) -> None:
                found[n] = max(found.get(n, 0), book.live - s.pop())

            handles.append(module.register_forward_hook(done))
        try:
            step()
        finally:
            for h in handles:
                h.remove()
    return found


def _measure_depth(
    network: nn.Module, x: torch.Tensor, target: torch.Tensor, amp_dtype: torch.dtype | None, segmented: bool
) -> tuple[int, int, dict[str, int], int]:
    """(saved, live peak, segment footprints, no-grad forward live peak) of one batch-1 input."""
    from nnunet_fm.architectures.dinov3_cube_two_pass import SubCubeNetwork, two_pass_step

    def autocast() -> torch.autocast:
        return torch.autocast("cpu", dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None)

    def loss(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), t)

    def step() -> None:
        with autocast():
            if isinstance(network, SubCubeNetwork):  # trained by the exact two-pass step, as its trainer does
                two_pass_step(network, x, target, loss)
                return
            logits = network(x)
        loss(logits, target).backward()

    def predict() -> None:
        with torch.no_grad(), autocast():
            network(x)

    network.train()
    network.zero_grad(set_to_none=True)
    saved = saved_tensor_peak(step)
    live, segments = 0, {}
    if segmented:  # the segments give the transient; the live peak is not needed
        network.zero_grad(set_to_none=True)
        with _checkpointing(network, False):
            segments = _segment_footprints(network, step)
    else:
        network.zero_grad(set_to_none=True)
        live = live_tensor_peak(step, network)
    network.zero_grad(set_to_none=True)
    network.eval()
    forward = live_tensor_peak(predict, network)
    network.train()
    return saved, live, segments, forward


def measure_profile(
    network: nn.Module,
    input_channels: int,
    num_classes: int,
    inplane: tuple[int, int],
    depths: tuple[int, int] = (1, 2),
    slice_axis: int = 0,
    amp_dtype: torch.dtype | None = torch.bfloat16,
    probe_inplane: tuple[int, int] | None = None,
) -> MemoryProfile:
    """Measure ``network`` (training mode, CPU) at batch 1 and two depths, at ``probe_inplane`` (default: the real
    ``inplane``); bytes are scaled to ``inplane`` by area (every activation of a slice network is a map at a fixed
    fraction of the in-plane size)."""
    probe = tuple(int(v) for v in (probe_inplane or inplane))
    probes = []
    for depth in depths:
        shape = list(probe)
        shape.insert(slice_axis, int(depth))
        probes.append((1, shape))
    profile = _profile(network, input_channels, num_classes, probes, amp_dtype, list(depths), "slices")
    profile.area_scale = (int(inplane[0]) * int(inplane[1])) / (probe[0] * probe[1])
    profile.num_classes = int(num_classes)
    chunk = getattr(network, "memory_chunk_slices", None)
    profile.chunk_slices = int(chunk(tuple(inplane))) if chunk is not None else 1
    return profile


def measure_patch_profile(
    network: nn.Module,
    input_channels: int,
    num_classes: int,
    patch: tuple[int, ...],
    slice_axis: int = 0,
    amp_dtype: torch.dtype | None = torch.bfloat16,
) -> MemoryProfile:
    """Measure a network without ``memory_segments`` at its whole ``patch``, batch 1 and 2."""
    depth = int(patch[slice_axis])
    probes = [(1, list(patch)), (2, list(patch))]
    return _profile(network, input_channels, num_classes, probes, amp_dtype, [depth, 2 * depth], "batch")


def _profile(
    network: nn.Module,
    input_channels: int,
    num_classes: int,
    probes: list[tuple[int, list[int]]],
    amp_dtype: torch.dtype | None,
    units: list[int],
    kind: str,
) -> MemoryProfile:
    kinds = dict(getattr(network, "memory_segments", {}))
    saved, live, forward = [], [], []
    segments: dict[str, list[int]] = {}
    for batch, shape in probes:
        x = torch.randn(batch, input_channels, *shape)
        target = torch.randint(0, num_classes, (batch, *shape))
        s, lv, segs, fw = _measure_depth(network, x, target, amp_dtype, bool(kinds))
        saved.append(s)
        live.append(lv)
        forward.append(fw)
        for name, value in segs.items():
            segments.setdefault(name, []).append(value)
    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    return MemoryProfile(
        depths=units,
        parameters=parameter_bytes(network),
        trainable=trainable,
        saved=saved,
        live=live,
        forward=forward,
        segments=segments,
        segment_kinds={k: kinds[k] for k in segments},
        policy=POLICY if amp_dtype is not None else "fp32 probe, bounds bf16 autocast",
        kind=kind,
    )


def choose_geometry(
    profile: MemoryProfile,
    budget_gb: float,
    batch_size: int,
    patch: tuple[int, ...],
    slice_axis: int = 0,
    depth_multiple: int = 1,
) -> tuple[int, int, MemoryEstimate] | None:
    """Largest crop depth (at most the patch's), then largest batch (at most ``batch_size``), whose training
    estimate fits ``budget_gb``; None when even one slice at batch 1 does not fit."""
    budget = budget_gb * GIB

    def at(batch: int, depth: int) -> MemoryEstimate:
        p = list(patch)
        p[slice_axis] = depth
        return estimate(profile, batch, tuple(p), slice_axis)

    max_depth = int(patch[slice_axis])
    depths = [d for d in range(max_depth, 0, -1) if d % depth_multiple == 0 or d == max_depth]
    if profile.kind != "slices":  # measured at the whole patch only: the batch is what can change
        depths = [max_depth]
    for depth in depths:
        if at(1, depth).training <= budget:
            best_batch = max(b for b in range(1, batch_size + 1) if b == 1 or at(b, depth).training <= budget)
            return depth, best_batch, at(best_batch, depth)
    return None


def _cache_key(network_class: str, arch_kwargs: dict, inplane: tuple[int, int], channels: int, classes: int) -> str:
    blob = json.dumps(
        [network_class, arch_kwargs, list(inplane), channels, classes, torch.__version__], sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_profile(cache_dir: Path | None, key: str, measure: Callable[[], MemoryProfile]) -> MemoryProfile:
    """The profile stored under ``key`` in ``cache_dir``'s cache file, measured (and stored) when missing."""
    path = None if cache_dir is None else Path(cache_dir) / CACHE_NAME
    cache: dict = {}
    if path is not None and path.is_file():
        with contextlib.suppress(json.JSONDecodeError, OSError):
            cache = json.loads(path.read_text())
    if key in cache:
        return MemoryProfile(**cache[key])
    profile = measure()
    if path is not None and os.access(path.parent, os.W_OK):
        cache[key] = asdict(profile)
        atomic_write_json(path, cache)
    return profile


#: environment variable: "off" skips the estimate of plans add / plans show (scripted pipelines, the test suite);
#: --gpu-memory always estimates
ESTIMATE_SWITCH = "NNUNET_FM_MEMORY_ESTIMATE"
#: the memory `plans add` plans for when no --gpu-memory is given (a 24 GB card); larger estimates get a warning
DEFAULT_BUDGET_GB = 24.0


@dataclass
class MemoryPlan:
    """What ``plans add`` decided: the (possibly reduced) patch and batch, their estimate, and what to print."""

    patch: list[int]
    batch_size: int
    estimate: MemoryEstimate
    notes: list[str]
    warnings: list[str]


def probe_dtype() -> torch.dtype | None:
    """bf16 (CPU autocast, the stand-in for CUDA bf16 autocast) where this CPU runs bf16 natively (AVX512-BF16,
    AMX); else None: fp32, since PyTorch's reference bf16 convolutions are very slow without them. fp32 bounds bf16
    from above for the plugin's networks (both probes of the DINOv3-FFA preset: BENCHMARKS.md, "DINOv3-FFA at its
    preset size")."""
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return torch.bfloat16 if native else None


def configuration_profile(
    plans: dict, name: str, config: dict, dataset_json: dict | None, cache_dir: Path | None
) -> tuple[MemoryProfile, int, list[int], int] | None:
    """The (cached) batch-1 profile of configuration ``name``, its slice axis, patch and batch size; None for
    nnU-Net's own networks."""
    from nnunet_fm.plans_checks import dataset_counts, plugin_network

    found = plugin_network(plans, name, config)
    if found is None:
        return None
    resolved, network_class, kwargs = found
    architecture = resolved["architecture"]
    patch = [int(v) for v in resolved["patch_size"]]
    channels, classes = dataset_counts(dataset_json)
    slice_axis = int(kwargs.get("slice_axis", 0))
    segmented = hasattr(network_class, "memory_segments")
    shape = patch if not segmented else [v for i, v in enumerate(patch) if i != slice_axis]
    dtype = probe_dtype()
    key = _cache_key(
        architecture["network_class_name"], kwargs | {"kind": segmented, "dtype": str(dtype)}, shape, channels, classes
    )

    def measure() -> MemoryProfile:
        torch.manual_seed(0)
        network = network_class(input_channels=channels, num_classes=classes, **kwargs)
        if segmented:
            inplane = (shape[0], shape[1])
            probe = network.memory_probe_inplane(inplane)
            return measure_profile(
                network, channels, classes, inplane, slice_axis=slice_axis, amp_dtype=dtype, probe_inplane=probe
            )
        return measure_patch_profile(network, channels, classes, tuple(patch), slice_axis, amp_dtype=dtype)

    return cached_profile(cache_dir, key, measure), slice_axis, patch, int(resolved["batch_size"])


def plan_memory(
    plans: dict,
    name: str,
    config: dict,
    dataset_json: dict | None,
    cache_dir: Path | None,
    budget_gb: float | None = None,
    depth_multiple: int = 1,
) -> MemoryPlan | None:
    """Estimate configuration ``name``'s memory; with ``budget_gb``, the largest crop depth (then batch) that fits.

    Without a budget the configuration's patch and batch are kept and a warning names an estimate above
    :data:`DEFAULT_BUDGET_GB`. A budget that not even one slice at batch 1 fits is a user error.
    """
    from nnunet_fm.errors import UserInputError

    if budget_gb is None and os.environ.get(ESTIMATE_SWITCH, "on").strip().lower() in ("off", "0", "false", "no"):
        return None
    found = configuration_profile(plans, name, config, dataset_json, cache_dir)
    if found is None:
        return None
    profile, axis, patch, batch = found
    current = estimate(profile, batch, tuple(patch), axis)
    gb = current.training / GIB
    if budget_gb is None:
        warnings = []
        if gb > DEFAULT_BUDGET_GB:
            warnings.append(
                f"the estimated training memory is {gb:.1f} GB, more than a {DEFAULT_BUDGET_GB:.0f} GB card holds; "
                "pass --gpu-memory GB to plans add to fit the crop to your GPU"
            )
        return MemoryPlan(patch, batch, current, [], warnings)
    chosen = choose_geometry(profile, budget_gb, batch, tuple(patch), axis, depth_multiple)
    if chosen is None:
        smallest = list(patch)
        smallest[axis] = 1 if profile.kind == "slices" else patch[axis]
        need = estimate(profile, 1, tuple(smallest), axis).training / GIB
        raise UserInputError(
            f"--gpu-memory {budget_gb:g}: not even {smallest} at batch 1 fits ({need:.1f} GB estimated); use a "
            "smaller inplane_size, patch_size or encoder, or a larger GPU. plans add: nothing was written."
        )
    depth, new_batch, chosen_estimate = chosen
    new_patch = list(patch)
    new_patch[axis] = depth
    if (new_patch, new_batch) == (patch, batch):
        note = f"--gpu-memory {budget_gb:g}: the recipe's patch {patch} and batch {batch} fit ({gb:.1f} GB); kept"
    else:
        note = (
            f"--gpu-memory {budget_gb:g}: whole slices kept; crop depth {depth} (was {patch[axis]}), batch "
            f"{new_batch} (was {batch}): {chosen_estimate.training / GIB:.1f} GB estimated (was {gb:.1f} GB)"
        )
    return MemoryPlan(new_patch, new_batch, chosen_estimate, [note], [])
