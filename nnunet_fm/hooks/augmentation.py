"""Training augmentation and mirroring as plans keys: nnU-Net's pipeline or a paper's own.

``augmentation``:

- ``"nnunet"``: nnU-Net's ``get_training_transforms`` unchanged.
- ``"reference"`` (vesselbridge3d ``train.py`` ~1197-1232, ``configs/train_3d_default.yaml``): one in-plane 2D
  affine per patch shared by all its slices (rotation +-15 deg, scale 0.9-1.1, shift +-10 % of the slice,
  zero padding), then brightness/contrast with p 0.3 and Gaussian noise std 0.01 with p 0.2; no flips, depth
  untouched. Built from batchgeneratorsv2: ``Convert3DTo2DTransform`` folds depth into channels so one 2D
  ``SpatialTransform`` moves every slice alike; the shift is its random crop centre within +-10 % of the middle.
- ``"lightmedseg"`` (LightMedSeg §4: "random flipping, rotation, and Gaussian noise"): flips on every axis,
  nnU-Net's 3D rotation range and Gaussian noise (the paper gives no magnitudes; nnU-Net's are used).

``mirror_axes``: ``"nnunet"`` keeps nnU-Net's choice; ``null`` or a list of axes sets the axes nnU-Net mirrors
in training (``"nnunet"`` pipeline) and at test time: it is stored in the checkpoint as
``inference_allowed_mirroring_axes``, so stock ``nnUNetv2_predict`` follows it.
"""

from __future__ import annotations

import math
from typing import Any

from nnunet_fm.options import Option

AUGMENTATIONS = ("nnunet", "reference", "lightmedseg")

# vesselbridge3d configs/train_3d_default.yaml
REFERENCE_ROTATION_DEG = 15.0
REFERENCE_SCALE = (0.9, 1.1)
REFERENCE_SHIFT = 0.10
REFERENCE_BC_P, REFERENCE_BRIGHTNESS, REFERENCE_CONTRAST = 0.3, 0.10, 0.10
REFERENCE_NOISE_P, REFERENCE_NOISE_STD = 0.2, 0.01


def _mirror_axes_valid(value: Any) -> bool:
    if value is None or value == "nnunet":
        return True
    return isinstance(value, list) and all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a < 3 for a in value)


def _slice_axis_transform(slice_axis: int, back: bool):
    """A batchgeneratorsv2 transform moving spatial axis ``slice_axis`` of a (C, X, Y, Z) sample to the front
    (``back``: from the front to ``slice_axis``), for image, segmentation and regression target alike."""
    from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform

    source, target = (1, 1 + slice_axis) if back else (1 + slice_axis, 1)

    class MoveSliceAxis(BasicTransform):
        def _apply_to_image(self, img, **params):
            return img.movedim(source, target).contiguous()

        _apply_to_segmentation = _apply_to_regr_target = _apply_to_image

    return MoveSliceAxis()


def reference_transforms(patch_size, slice_axis: int = 0) -> list:
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


def lightmedseg_transforms(patch_size, rotation_for_da) -> list:
    """Random flipping, rotation and Gaussian noise (LightMedSeg §4), without label handling."""
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


def label_transforms(regions, ignore_label, deep_supervision_scales) -> list:
    """nnU-Net's label handling after augmentation: padding label -> background, regions, deep supervision."""
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
    from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform
    from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform

    transforms = [RemoveLabelTansform(-1, 0)]
    if regions is not None:
        regions = list(regions) + [ignore_label] if ignore_label is not None else regions
        transforms.append(ConvertSegmentationToRegionsTransform(regions=regions, channel_in_seg=0))
    if deep_supervision_scales is not None:
        transforms.append(DownsampleSegForDSTransform(ds_scales=deep_supervision_scales))
    return transforms


class AugmentationMixin:
    """``augmentation`` and ``mirror_axes`` plans keys, applied through nnU-Net's own two hooks."""

    fm_options = (
        Option(
            "augmentation",
            "nnunet",
            "Training augmentation: 'nnunet' (nnU-Net's), 'reference' (vesselbridge3d: shared in-plane affine, "
            "brightness/contrast, noise, no flips) or 'lightmedseg' (flips, rotation, noise).",
            choices=AUGMENTATIONS,
        ),
        Option(
            "mirror_axes",
            "nnunet",
            "Axes mirrored in training ('nnunet' pipeline) and at test time; null = none, 'nnunet' = nnU-Net's.",
            validate=_mirror_axes_valid,
            values='null, "nnunet" or a JSON list of axes in 0..2',
        ),
    )

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = (
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        )
        choice = self.fm_option("mirror_axes")
        if choice != "nnunet":
            mirror_axes = None if not choice else tuple(int(a) for a in choice)
            self.inference_allowed_mirroring_axes = mirror_axes
        if self.fm_option("augmentation") == "reference":
            # the reference transforms the whole crop and pads with zeros: no enlarged crop is needed
            initial_patch_size = tuple(int(s) for s in self.configuration_manager.patch_size)
        return rotation, dummy_2d, initial_patch_size, mirror_axes

    def get_training_transforms(
        self,
        patch_size,
        rotation_for_DA,
        deep_supervision_scales,
        mirror_axes,
        do_dummy_2d_data_aug,
        use_mask_for_norm=None,
        is_cascaded=False,
        foreground_labels=None,
        regions=None,
        ignore_label=None,
    ):
        from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
        from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms

        choice = self.fm_option("augmentation")
        if choice == "nnunet":
            return super().get_training_transforms(
                patch_size,
                rotation_for_DA,
                deep_supervision_scales,
                mirror_axes,
                do_dummy_2d_data_aug,
                use_mask_for_norm,
                is_cascaded,
                foreground_labels,
                regions,
                ignore_label,
            )
        if len(patch_size) != 3:
            from nnunet_fm.errors import UserInputError

            raise UserInputError(f"augmentation={choice!r} needs 3D patches; use augmentation=nnunet for 2D.")
        if choice == "reference":
            from nnunet_fm.slice_axis import configured_slice_axis

            transforms = reference_transforms(
                patch_size, configured_slice_axis(self.plans_manager, self.configuration_manager)
            )
            if mirror_axes:
                transforms.append(MirrorTransform(allowed_axes=mirror_axes))
        else:
            transforms = lightmedseg_transforms(patch_size, rotation_for_DA)
        if use_mask_for_norm is not None and any(use_mask_for_norm):
            from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform

            channels = [i for i, used in enumerate(use_mask_for_norm) if used]
            transforms.append(MaskImageTransform(apply_to_channels=channels, channel_idx_in_seg=0, set_outside_to=0))
        return ComposeTransforms(transforms + label_transforms(regions, ignore_label, deep_supervision_scales))
