"""LightMedSeg's training augmentation, ``augmentation: lightmedseg`` (read by
:class:`~nnunet_fm.hooks.augmentation.AugmentationMixin`).

Paper §4: "random flipping, rotation, and Gaussian noise": flips on every axis, nnU-Net's 3D rotation range and
Gaussian noise (the paper gives no magnitudes; nnU-Net's are used).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["WHOLE_CROP", "training_transforms"]

#: rotation needs nnU-Net's enlarged initial crop, centre-cropped back to the patch
WHOLE_CROP = False


def training_transforms(
    patch_size: Sequence[int], rotation_for_da: Any, mirror_axes: tuple[int, ...] | None, slice_axis: int
) -> list:
    """Random flipping, rotation and Gaussian noise (LightMedSeg §4), without label handling: flips on every axis
    whatever ``mirror_axes`` says (that key sets test-time mirroring here); no per-slice rule, so ``slice_axis`` is
    unused."""
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    return [
        SpatialTransform(
            patch_size,
            patch_center_dist_from_border=0,
            random_crop=False,
            p_rotation=0.2,
            rotation=rotation_for_da,
            border_mode_seg="constant",
            padding_value_seg=-1,
        ),
        RandomTransform(
            GaussianNoiseTransform(noise_variance=(0, 0.1), synchronize_channels=True), apply_probability=0.1
        ),
        MirrorTransform(allowed_axes=tuple(range(len(patch_size)))),
    ]
