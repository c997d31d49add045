"""Training augmentation and mirroring as plans keys: nnU-Net's pipeline or a paper's own.

``augmentation``:

- ``"nnunet"``: nnU-Net's ``get_training_transforms`` unchanged.
- a family's own pipeline, defined in the family's module that :data:`FAMILY_AUGMENTATIONS` names:
  ``"reference"`` (the DINOv3-FFA reference, vesselbridge3d; ``architectures/dinov3_ffa_augmentation.py``) and
  ``"lightmedseg"`` (LightMedSeg §4; ``architectures/lightmedseg_augmentation.py``). The hook adds nnU-Net's
  masking and label handling (:func:`label_transforms`) after the family's transforms.

``mirror_axes``: ``"nnunet"`` keeps nnU-Net's choice; ``null`` or a list of axes sets the axes nnU-Net mirrors
in training (``"nnunet"`` pipeline) and at test time: it is stored in the checkpoint as
``inference_allowed_mirroring_axes``, so stock ``nnUNetv2_predict`` follows it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from nnunet_fm.options import Option

#: ``augmentation`` value -> the family module defining it, imported on use. Such a module provides
#: ``training_transforms(patch_size, rotation_for_da, mirror_axes, slice_axis) -> list`` (spatial and intensity
#: transforms, no label handling) and ``WHOLE_CROP`` (True: they transform the sampled patch itself, so nnU-Net's
#: enlarged initial crop is not requested).
FAMILY_AUGMENTATIONS = {
    "reference": "nnunet_fm.architectures.dinov3_ffa_augmentation",
    "lightmedseg": "nnunet_fm.architectures.lightmedseg_augmentation",
}
AUGMENTATIONS = ("nnunet", *FAMILY_AUGMENTATIONS)


def family_augmentation(name: str) -> ModuleType:
    """The family module that :data:`FAMILY_AUGMENTATIONS` names for the ``augmentation`` value ``name``."""
    return importlib.import_module(FAMILY_AUGMENTATIONS[name])


def _mirror_axes_valid(value: Any) -> bool:
    if value is None or value == "nnunet":
        return True
    return isinstance(value, list) and all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a < 3 for a in value)


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
        augmentation = self.fm_option("augmentation")
        if augmentation != "nnunet" and family_augmentation(augmentation).WHOLE_CROP:
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
        from nnunet_fm.slice_axis import configured_slice_axis

        slice_axis = configured_slice_axis(self.plans_manager, self.configuration_manager)
        transforms = family_augmentation(choice).training_transforms(
            patch_size, rotation_for_DA, mirror_axes, slice_axis
        )
        if use_mask_for_norm is not None and any(use_mask_for_norm):
            from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform

            channels = [i for i, used in enumerate(use_mask_for_norm) if used]
            transforms.append(MaskImageTransform(apply_to_channels=channels, channel_idx_in_seg=0, set_outside_to=0))
        return ComposeTransforms(transforms + label_transforms(regions, ignore_label, deep_supervision_scales))
