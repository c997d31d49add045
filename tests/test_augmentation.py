"""The `augmentation` and `mirror_axes` plans keys: the reference pipeline's invariants, nnU-Net's unchanged."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_fm.architectures.dinov3_ffa_augmentation import reference_transforms
from nnunet_fm.hooks.augmentation import AugmentationMixin

PATCH = (6, 40, 40)


def _spatial_part(patch):
    return ComposeTransforms(reference_transforms(patch)[:3])  # 3D->2D, shared 2D affine, 2D->3D


def test_reference_affine_is_shared_by_every_slice_and_leaves_depth_alone():
    torch.manual_seed(0)
    np.random.seed(0)
    pattern = torch.rand(1, 1, *PATCH[1:])
    depth_profile = torch.arange(1, PATCH[0] + 1, dtype=torch.float32).view(1, -1, 1, 1)
    image = pattern * depth_profile  # slice d = (d + 1) * the same in-plane pattern
    seg = (pattern > 0.5).long().expand(1, *PATCH).clone()
    for _ in range(5):
        out = _spatial_part(PATCH)(image=image.clone(), segmentation=seg.clone())
        moved, moved_seg = out["image"], out["segmentation"]
        assert moved.shape == (1, *PATCH) and moved_seg.shape == (1, *PATCH)
        assert not torch.allclose(moved, image)  # something moved in-plane
        # every slice got the same in-plane transform, and the depth profile is untouched
        torch.testing.assert_close(moved / depth_profile, (moved / depth_profile)[:, :1].expand_as(moved))
        assert (moved_seg == moved_seg[:, :1]).all()


def test_reference_shift_stays_within_ten_percent_of_the_slice():
    np.random.seed(1)
    size = PATCH[1]
    image = torch.zeros(1, *PATCH)
    image[:, :, size // 2 - 1 : size // 2 + 1, size // 2 - 1 : size // 2 + 1] = 1.0  # a dot at the centre
    shifts = []
    for _ in range(60):
        out = _spatial_part(PATCH)(image=image.clone())["image"][0, 0]
        ys, xs = np.nonzero(out.numpy() > 0.05)
        shifts.append(max(abs(ys.mean() - (size - 1) / 2), abs(xs.mean() - (size - 1) / 2)))
    assert max(shifts) <= 0.1 * size + 1.0  # rotation/scale keep the centre; only the +-10 % shift moves it
    assert max(shifts) > 0.05 * size  # and the shift is used


def test_reference_intensity_probabilities_and_no_flips():
    transforms = reference_transforms(PATCH)
    probabilities = [t.apply_probability for t in transforms if isinstance(t, RandomTransform)]
    assert probabilities == [0.3, 0.2]
    assert not any("Mirror" in type(t).__name__ for t in transforms)


class _Trainer(AugmentationMixin, nnUNetTrainer):
    def __init__(self, options):  # no nnU-Net set-up: only the two hooks are exercised
        self.options = options
        self.plans_manager = SimpleNamespace(transpose_forward=[0, 1, 2])
        self.configuration_manager = SimpleNamespace(configuration={})

    def fm_option(self, name):
        return self.options[name]


def test_nnunet_choice_returns_nnunets_pipeline_unchanged():
    args = (PATCH, (-0.5, 0.5), None, (0, 1, 2), False)
    ours = _Trainer({"augmentation": "nnunet"}).get_training_transforms(*args)
    stock = nnUNetTrainer.get_training_transforms(*args)
    assert [type(t).__name__ for t in ours.transforms] == [type(t).__name__ for t in stock.transforms]


@pytest.mark.parametrize("choice", ["reference", "lightmedseg"])
def test_paper_pipelines_end_with_nnunets_label_handling(choice):
    pipeline = _Trainer({"augmentation": choice}).get_training_transforms(PATCH, (-0.5, 0.5), None, None, False)
    names = [type(t).__name__ for t in pipeline.transforms]
    assert names[-1] == "RemoveLabelTransform"  # the class behind nnU-Net's RemoveLabelTansform alias
    assert ("MirrorTransform" in names) == (choice == "lightmedseg")  # the paper flips; the reference never does
    out = pipeline(image=torch.rand(1, *PATCH), segmentation=torch.randint(0, 3, (1, *PATCH)))
    assert out["image"].shape == (1, *PATCH) and out["segmentation"].min() >= 0


def test_reference_noise_has_the_references_standard_deviation():
    # vesselbridge3d train.py ~1229-1230: img + randn * noise_std with noise_std 0.01 (configs/train_3d_default.yaml)
    noise = next(
        t.transform
        for t in reference_transforms(PATCH)
        if isinstance(t, RandomTransform) and type(t.transform).__name__ == "GaussianNoiseTransform"
    )
    torch.manual_seed(0)
    out = noise(image=torch.zeros(1, *PATCH))["image"]
    assert abs(float(out.std()) - 0.01) < 0.001


def test_reference_affine_acts_in_the_plane_of_the_slice_axis():
    """Data transposed by nnU-Net ([1, 0, 2]): the raw axial slices lie along spatial axis 1; the affine must move
    them in their own plane and leave that axis alone."""
    torch.manual_seed(0)
    np.random.seed(0)
    patch = (PATCH[1], PATCH[0], PATCH[2])  # [y, z, x]
    pattern = torch.rand(1, PATCH[1], 1, PATCH[2])
    depth_profile = torch.arange(1, PATCH[0] + 1, dtype=torch.float32).view(1, 1, -1, 1)
    image = pattern * depth_profile  # raw slice z = (z + 1) * the same (y, x) pattern
    out = ComposeTransforms(reference_transforms(patch, slice_axis=1)[:5])(image=image.clone())["image"]
    assert out.shape == (1, *patch) and not torch.allclose(out, image)
    torch.testing.assert_close(out / depth_profile, (out / depth_profile)[:, :, :1].expand_as(out))
