"""Which axis of nnU-Net's (transposed) patch holds the raw image's axial slices, and moving it first.

nnU-Net puts the axis of largest spacing first (``transpose_forward``, ``ExperimentPlanner.determine_transpose``:
``[argmax(spacing)] + remaining axes``), so on near-isotropic data (in-plane spacing >= slice spacing) a 2D
encoder run along the patch's first axis would see coronal or sagittal slices. vesselbridge3d slices the
X
``(z, y, x)`` arrays nnU-Net reads. ``slice_axis`` (a network option, set by ``nnunet-fm plans add`` from the
plans' transpose) is the spatial axis of the network input that holds raw axis 0; the slicing networks move it
to the front, run on ``[D, H, W]`` ("canonical" order) and move the output back.

In-plane axes keep nnU-Net's order. For ``transpose_forward [1, 0, 2]`` (y spacing largest, the usual
near-isotropic case) the slices are the raw ``(y, x)`` slices; for ``[2, 0, 1]`` (x spacing largest) they
arrive as ``(x, y)``, i.e. transposed in-plane.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nnunet_fm.errors import UserInputError
from nnunet_fm.options import SIGNATURE, Option

RAW_SLICE_AXIS = 0  # axial slices: axis 0 of the (z, y, x) arrays nnU-Net's readers return

SLICE_AXIS_OPTION = Option(
    "slice_axis",
    SIGNATURE,
    "Spatial axis of the patch that the 2D encoder slices along; `plans add` sets the one holding the raw image's "
    "axis 0 (axial slices) after nnU-Net's transpose_forward.",
    "int",
    minimum=0,
    maximum=2,
)


def slice_axis_from_transpose(transpose_forward: Sequence[int]) -> int:
    """Spatial axis of nnU-Net's transposed data that holds the raw image's axis 0."""
    order = [int(a) for a in transpose_forward]
    if sorted(order) != [0, 1, 2]:
        raise UserInputError(
            f"transpose_forward {order} in the plans file is not a permutation of [0, 1, 2]; re-run "
            "nnUNetv2_plan_experiment to restore it."
        )
    return order.index(RAW_SLICE_AXIS)


def check_slice_axis(slice_axis: int) -> int:
    if isinstance(slice_axis, bool) or slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2 (a spatial axis of [D, H, W]), got {slice_axis!r}.")
    return int(slice_axis)


def to_canonical(values: Sequence, slice_axis: int) -> list:
    """Per-axis values in network order (slice axis first, the others in their order)."""
    values = list(values)
    return [values[slice_axis]] + [v for i, v in enumerate(values) if i != slice_axis]


def from_canonical(values: Sequence, slice_axis: int) -> list:
    """Inverse of :func:`to_canonical`: per-axis values back in nnU-Net's axis order."""
    values = list(values)
    rest = values[1:]
    return rest[:slice_axis] + [values[0]] + rest[slice_axis:]


def slices_first(x: torch.Tensor, slice_axis: int) -> torch.Tensor:
    """``[B, C, *spatial]`` with spatial axis ``slice_axis`` moved to the front of the spatial axes."""
    return x if slice_axis == 0 else x.movedim(2 + slice_axis, 2)


def slices_back(x: torch.Tensor, slice_axis: int) -> torch.Tensor:
    """Inverse of :func:`slices_first`."""
    return x if slice_axis == 0 else x.movedim(2, 2 + slice_axis)


def configured_slice_axis(plans_manager, configuration_manager) -> int:
    """The slice axis a trainer's per-slice rules use: the network's ``slice_axis``, else raw axis 0's place."""
    kwargs = (configuration_manager.configuration.get("architecture") or {}).get("arch_kwargs") or {}
    if "slice_axis" in kwargs:
        return check_slice_axis(kwargs["slice_axis"])
    return slice_axis_from_transpose(plans_manager.transpose_forward)
