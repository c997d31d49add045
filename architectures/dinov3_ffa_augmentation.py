"""The DINOv3-FFA reference's training augmentation, ``augmentation: reference`` (read by
:class:`~nnunet_fm.hooks.augmentation.AugmentationMixin`).

vesselbridge3d ``train.py`` ~1197-1232, ``configs/train_3d_default.yaml``: one in-plane 2D affine per patch shared by
all its slices (rotation +-15 deg, scale 0.9-1.1, shift +-10 % of the slice, zero padding), then brightness/contrast
with p 0.3 and Gaussian noise std 0.01 with p 0.2; no flips, depth untouched. Built from batchgeneratorsv2:
``Convert3DTo2DTransform`` folds depth into channels so one 2D ``SpatialTransform`` moves every slice alike; the
shift is its random crop centre within +-10 % of the middle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["WHOLE_CROP", "reference_transforms", "training_transforms"]

# vesselbridge3d configs/train_3d_default.yaml
REFERENCE_ROTATION_DEG = 15.0
REFERENCE_SCALE = (0.9, 1.1)
REFERENCE_SHIFT = 0.10
REFERENCE_BC_P, REFERENCE_BRIGHTNESS, REFERENCE_CONTRAST = 0.3, 0.10, 0.10
REFERENCE_NOISE_P, REFERENCE_NOISE_STD = 0.2, 0.01

#: the reference transforms the whole crop and pads with zeros: no enlarged crop is needed
WHOLE_CROP = True


def _slice_axis_transform(slice_axis: int, back: bool) -> Any:
    """A batchgeneratorsv2 transform moving spatial axis ``slice_axis`` of a (C, X, Y, Z) sample to the front
    (``back``: from the front to ``slice_axis``), for image, segmentation and regression target alike."""
    from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform

    source, target = (1, 1 + slice_axis) if back else (1 + slice_axis, 1)

    class MoveSliceAxis(BasicTransform):
        def _apply_to_image(self, img, **params):
            return img.movedim(source, target).contiguous()

        _apply_to_segmentation = _apply_to_regr_target = _apply_to_image

    return MoveSliceAxis()


def reference_transforms(patch_size: Sequence[int], slice_axis: int = 0) -> list:
    """The reference's spatial + intensity augmentation (see the module docstring), without label handling.

    The shared 2D affine acts in the plane of the slices along ``slice_axis`` (``nnunet_fm.slice_axis``: the raw
    axial slices when nnU-Net transposed the data): that axis is moved first, folded into channels and back.
    """
    from batchgeneratorsv2.transforms.intensity.brightness import (
        BrightnessAdditiveTransform,
        MultiplicativeBrightnessTransform,
    )
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform
    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    from nnunet_fm.slice_axis import to_canonical

    inplane = [int(s) for s in to_canonical(patch_size, slice_axis)[1:]]
    angle = math.radians(REFERENCE_ROTATION_DEG)
    to_front = [_slice_axis_transform(slice_axis, back=False)] if slice_axis else []
    to_back = [_slice_axis_transform(slice_axis, back=True)] if slice_axis else []
    return [
        *to_front,
        Convert3DTo2DTransform(),
        SpatialTransform(
            inplane,
            patch_center_dist_from_border=[(0.5 - REFERENCE_SHIFT) * s for s in inplane],
            random_crop=True,
            p_rotation=1,
            rotation=(-angle, angle),
            p_scaling=1,
            scaling=REFERENCE_SCALE,
            p_synchronize_scaling_across_axes=1,
            border_mode_seg="constant",
            padding_value_seg=-1,
        ),
        Convert2DTo3DTransform(),
        *to_back,
        RandomTransform(
            ComposeTransforms(
                [
                    MultiplicativeBrightnessTransform(
                        (1 - REFERENCE_CONTRAST, 1 + REFERENCE_CONTRAST), synchronize_channels=True
                    ),
                    # uniform(-0.1, 0.1) in the reference; a Gaussian of the same variance here
                    BrightnessAdditiveTransform(0.0, REFERENCE_BRIGHTNESS / math.sqrt(3), synchronize_channels=True),
                ]
            ),
            apply_probability=REFERENCE_BC_P,
        ),
        RandomTransform(
            # despite its name, batchgeneratorsv2 0.3.6 uses ``noise_variance`` as the standard deviation
            # (``gaussian_noise.py`` l. 32 samples it, l. 67 ``normal_(mean=0.0, std=float(sigma))``)
            GaussianNoiseTransform(noise_variance=(REFERENCE_NOISE_STD,) * 2, synchronize_channels=True),
            apply_probability=REFERENCE_NOISE_P,
        ),
    ]


def training_transforms(
    patch_size: Sequence[int], rotation_for_da: Any, mirror_axes: tuple[int, ...] | None, slice_axis: int
) -> list:
    """:func:`reference_transforms` along ``slice_axis``, plus flips only where ``mirror_axes`` asks (the reference
    has none)."""
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform

    transforms = reference_transforms(patch_size, slice_axis)
    if mirror_axes:
        transforms.append(MirrorTransform(allowed_axes=mirror_axes))
    return transforms
