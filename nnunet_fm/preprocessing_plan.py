"""Configuration-level preprocessing a template asks for: encoder-faithful intensities and a whole-slice view.

vesselbridge3d feeds DINOv3 raw intensities min-max-normalised per slice (``train.py`` ~197-207, ~1145) and
resizes every whole axial slice to 336x336 (21x21 tokens) with 64-slice depth crops. In nnU-Net terms:

- ``intensity: "affine"``: the configuration normalises with nnU-Net's ``ZScoreNormalization`` without a mask.
  Any affine map with positive scale leaves per-slice min-max unchanged, so the encoder sees exactly the
  reference's input; nnU-Net's CT scheme would first clip to the 0.5-99.5th percentile of *foreground* (for
  vessels: vessel) intensities, a thresholded window the reference never shows DINOv3.
- ``inplane_size: N``: the in-plane spacing is chosen so the dataset's median in-plane extent spans N voxels,
  and the patch is ``[min(max_depth, median depth), N, N]``: each patch holds whole slices.

Both keys are structural options, declared and checked in ``nnunet_fm.templates.STRUCTURAL_OPTIONS``. Either
one gives the configuration its own ``data_identifier``; ``nnUNetv2_preprocess -c NAME`` must then run (once
per distinct preprocessing: configurations that preprocess alike share the data).
"""

from __future__ import annotations

from typing import Any

from nnunet_fm.errors import UserInputError


def check_inplane_multiple(inplane_size: int, multiple: int, reason: str) -> None:
    """A whole-slice view must hold whole encoder patches: ``inplane_size`` a multiple of ``multiple``."""
    if inplane_size % multiple:
        lower = max(multiple, inplane_size // multiple * multiple)
        upper = -(-inplane_size // multiple) * multiple
        raise UserInputError(
            f"inplane_size={inplane_size} is not a multiple of {multiple} ({reason}); every slice must hold whole "
            f"encoder patches. Use --set inplane_size={lower} or {upper}."
        )


def whole_slice_geometry(parent: dict, inplane_size: int, max_depth: int) -> tuple[list[float], list[int]]:
    """(spacing, patch) that fit the parent's median in-plane extent into ``inplane_size`` voxels."""
    spacing = [float(s) for s in parent["spacing"]]
    median = [int(v) for v in parent["median_image_size_in_voxels"]]
    if len(spacing) != 3:
        raise UserInputError("inplane_size needs a 3D parent configuration; use --set inplane_size=null for 2D.")
    extent = max(median[1] * spacing[1], median[2] * spacing[2])
    inplane_spacing = extent / inplane_size
    return [spacing[0], inplane_spacing, inplane_spacing], [min(max_depth, median[0]), inplane_size, inplane_size]


def preprocessing_entries(
    parent: dict, plans_name: str, parent_name: str, intensity: str, inplane_size: int | None, max_depth: int
) -> tuple[dict, list[int] | None]:
    """Configuration entries for the preprocessing keys, and the whole-slice patch (None when unchanged).

    The ``data_identifier`` names the preprocessing, not the configuration, so configurations that preprocess
    alike (e.g. a few-shot grid) share one preprocessed copy.
    """
    entries: dict[str, Any] = {}
    patch = None
    if intensity == "affine":
        channels = len(parent["normalization_schemes"])
        entries["normalization_schemes"] = ["ZScoreNormalization"] * channels
        entries["use_mask_for_norm"] = [False] * channels
    if inplane_size is not None:
        entries["spacing"], patch = whole_slice_geometry(parent, inplane_size, max_depth)
    if entries:
        suffix = ("_zscore" if intensity == "affine" else "") + (f"_inplane{inplane_size}" if inplane_size else "")
        entries["data_identifier"] = f"{plans_name}_{parent_name}_fm{suffix}"
    return entries, patch
