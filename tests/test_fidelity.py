"""The flagship preset against its references (issue 22): Dice mode, slice axis, crop sampling, budgets."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_fm.architectures.dinov3_cube import DINOv3Cube
from nnunet_fm.architectures.dinov3_ffa import DINOv3FFA
from nnunet_fm.errors import UserInputError
from nnunet_fm.hooks.crop_sampling import ForegroundOversamplingMixin
from nnunet_fm.hooks.loss import SliceMaskedLoss
from nnunet_fm.hooks.optim import warmup_cosine_lr
from nnunet_fm.plans import build_configuration, show_configuration
from nnunet_fm.slice_axis import from_canonical, slice_axis_from_transpose, to_canonical
from nnunet_fm.templates import budget_formula, describe_templates, load_template

DATASET_ID = 951  # the planned_workspace fixture's dataset (tests/conftest.py)
FFA_TINY = {"encoder_kwargs": {"embed_dim": 32, "depth": 4, "num_heads": 2}, "taps": [1, 2, 3], "agg_heads": 2}
CUBE_TINY = {"encoder_kwargs": {"embed_dim": 32, "depth": 2, "num_heads": 2}, "taps": (0, 1)}


def _plans(nnunet_env) -> dict:
    path = nnunet_env.preprocessed / nnunet_env.dataset_folder(DATASET_ID).name / "nnUNetPlans.json"
    return json.loads(path.read_text())


# ---- Dice per sample (vesselbridge3d train.py ~1000-1038) -----------------------------------------------------


def test_ffa_configuration_computes_dice_per_sample_even_when_the_parent_pools_it(nnunet_env):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = _plans(nnunet_env)
    plans["configurations"]["3d_fullres"]["batch_dice"] = True  # as nnU-Net plans it when it also plans 3d_lowres
    config = build_configuration(plans, load_template("dinov3_ffa"), {"inplane_size": 48})
    assert config["batch_dice"] is False
    plans["configurations"]["3d_fm_dinov3_ffa"] = config
    assert PlansManager(plans).get_configuration("3d_fm_dinov3_ffa").batch_dice is False
    pooled = build_configuration(plans, load_template("dinov3_ffa"), {"inplane_size": 48, "batch_dice": None})
    assert "batch_dice" not in pooled  # null: the parent's choice
    with pytest.raises(UserInputError, match='batch_dice="yes" .*expected true or false or null'):
        build_configuration(plans, load_template("dinov3_ffa"), {"batch_dice": "yes"})


@pytest.mark.parametrize("batch_dice", [False, True])
def test_batch_loss_is_the_mean_of_the_single_sample_losses_only_per_sample(batch_dice):
    torch.manual_seed(0)
    target = torch.zeros(1, 1, 4, 16, 16, dtype=torch.long)
    target[0, 0, :, 2:6, 3:9] = 1
    target[0, 0, :, 9:11, 4:14] = 2
    targets = torch.cat([target, target.flip(-1)])  # same class counts: weighted CE averages alike
    logits = torch.randn(2, 3, 4, 16, 16)
    loss = SliceMaskedLoss.dice_ce(
        torch.tensor([0.05, 1.0, 3.0]), None, 0.0005, 20.0, batch_dice=batch_dice, present_classes_only=True
    )
    batch = loss(logits, targets).item()
    mean = (loss(logits[:1], targets[:1]).item() + loss(logits[1:], targets[1:]).item()) / 2
    assert (batch == pytest.approx(mean, abs=1e-6)) is not batch_dice


# ---- the slice axis (nnunet_fm.slice_axis) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spacing", "transpose", "axis"),
    [((3.0, 0.8, 0.8), [0, 1, 2], 0), ((0.6, 0.9, 0.9), [1, 0, 2], 1), ((0.6, 0.7, 0.9), [2, 0, 1], 1)],
)
def test_slice_axis_follows_nnunets_transpose(spacing, transpose, axis):
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    planner = ExperimentPlanner.__new__(ExperimentPlanner)  # determine_transpose only needs the spacings
    planner.dataset_fingerprint = {"spacings": [list(spacing)] * 3, "shapes_after_crop": [[64, 64, 64]] * 3}
    planner.overwrite_target_spacing = None
    planner.anisotropy_threshold = 3
    planner.suppress_transpose = False
    assert list(planner.determine_transpose()[0]) == transpose
    assert slice_axis_from_transpose(transpose) == axis
    values = ["d", "h", "w"]
    assert from_canonical(to_canonical(values, axis), axis) == values
    assert to_canonical(list(np.transpose(np.zeros((5, 6, 7)), transpose).shape), axis)[0] == 5  # raw depth first


def _raw_and_transposed():
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(1, 1, 5, 32, 48, generator=g)  # [B, C, z, y, x] as nnU-Net reads it
    return raw, raw.permute(0, 1, 3, 2, 4).contiguous()  # transpose_forward [1, 0, 2]: [B, C, y, z, x]


def test_ffa_encoder_sees_raw_axial_slices_under_nnuents_transpose():
    raw, transposed = _raw_and_transposed()
    torch.manual_seed(0)
    canonical = DINOv3FFA(1, 3, **FFA_TINY).eval()
    torch.manual_seed(0)
    sliced = DINOv3FFA(1, 3, slice_axis=1, **FFA_TINY).eval()
    seen = {}
    for name, net in (("canonical", canonical), ("sliced", sliced)):
        net.encoder.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, args[0].clone()))
    with torch.no_grad():
        expected = canonical(raw)
        out = sliced(transposed)
    assert seen["sliced"].shape == (5, 3, 32, 48)  # 5 axial slices of 32 x 48, not 32 coronal ones
    torch.testing.assert_close(seen["sliced"], seen["canonical"], rtol=0, atol=0)
    torch.testing.assert_close(out, expected.permute(0, 1, 3, 2, 4))  # logits back in nnU-Net's layout


def test_cube_model_slices_raw_axial_slices_under_nnunets_transpose():
    raw, transposed = _raw_and_transposed()
    raw, transposed = raw[..., :32], transposed[..., :32]
    torch.manual_seed(0)
    canonical = DINOv3Cube(1, 3, [5, 32, 32], **CUBE_TINY).eval()
    torch.manual_seed(0)
    sliced = DINOv3Cube(1, 3, [32, 5, 32], slice_axis=1, **CUBE_TINY).eval()
    with torch.no_grad():
        torch.testing.assert_close(sliced(transposed), canonical(raw).permute(0, 1, 3, 2, 4))


def test_slice_loss_mask_runs_along_the_slice_axis():
    target = torch.zeros(1, 1, 4, 16, 16, dtype=torch.long)
    target[0, 0, 1, 2:8, 2:8] = 1  # only raw slice 1 has foreground
    logits = torch.randn(1, 2, 4, 16, 16)
    canonical = SliceMaskedLoss.dice_ce(None, None, 0.01, 20.0)
    sliced = SliceMaskedLoss.dice_ce(None, None, 0.01, 20.0, slice_axis=1)
    masked = sliced.mask_target(target.transpose(2, 3))
    assert torch.equal(masked, canonical.mask_target(target).transpose(2, 3))
    assert (masked[:, :, :, 1] >= 0).all() and (masked[:, :, :, 0] == -1).all()  # raw slices 0, 2, 3 masked
    torch.testing.assert_close(sliced(logits.transpose(2, 3), target.transpose(2, 3)), canonical(logits, target))


def test_plans_add_records_the_slice_axis_and_lays_the_whole_slice_patch_along_it(nnunet_env):
    plans = _plans(nnunet_env)
    parent = plans["configurations"]["3d_fullres"]
    # the same data as if nnU-Net had transposed it with [1, 0, 2]
    raw = {k: list(parent[k]) for k in ("spacing", "median_image_size_in_voxels", "patch_size")}
    transposed = copy.deepcopy(plans)
    transposed["transpose_forward"], transposed["transpose_backward"] = [1, 0, 2], [1, 0, 2]
    for key, values in raw.items():
        transposed["configurations"]["3d_fullres"][key] = [values[1], values[0], values[2]]
    template = load_template("dinov3_ffa")
    straight = build_configuration(plans, template, {"inplane_size": 48})
    config = build_configuration(transposed, template, {"inplane_size": 48})
    assert straight["architecture"]["arch_kwargs"]["slice_axis"] == 0
    assert config["architecture"]["arch_kwargs"]["slice_axis"] == 1
    for key in ("spacing", "patch_size"):
        assert config[key] == [straight[key][1], straight[key][0], straight[key][2]]
    with pytest.raises(UserInputError, match=r"slice_axis 1\). Nearest valid patch: \[48, 16, 48\]"):
        build_configuration(transposed, template, {"patch_size": [47, 16, 48]})
    forced = build_configuration(transposed, template, {"inplane_size": 48, "slice_axis": 0})
    assert forced["architecture"]["arch_kwargs"]["slice_axis"] == 0  # --set wins


def test_plans_show_prints_dice_mode_slicing_and_oversampling(nnunet_env):
    from nnunet_fm.plans import add_configuration

    add_configuration(DATASET_ID, "dinov3_ffa", "3d_ffa_show", overrides={"inplane_size": 48})
    text = show_configuration(DATASET_ID, "3d_ffa_show")
    assert "batch_dice false (Dice per sample)  [plans (template dinov3_ffa)]" in text
    assert "slices: patch axis 0 = raw image axis 0 (axial slices; transpose_forward [0, 1, 2])" in text
    assert "foreground oversampling 0.0 of each batch" in text
    add_configuration(DATASET_ID, "unet_fewshot", "3d_unet_show")
    text = show_configuration(DATASET_ID, "3d_unet_show")
    assert "batch_dice false (Dice per sample)  [inherited from 3d_fullres]" in text
    assert "foreground oversampling 0.33 of each batch" in text


@pytest.mark.e2e
@pytest.mark.slow
def test_near_isotropic_dataset_trains_and_predicts_with_axial_slices_and_kept_geometry(tmp_path):
    """Spacing (z, y, x) = (0.6, 0.9, 0.9): nnU-Net transposes y first; the FFA still slices raw axis 0."""
    from nnunet_fm.demo import add_plans, prepare_dataset
    from nnunet_fm.demo_data import DemoSpec
    from nnunet_fm.nnunet_commands import Workspace, train_predict_evaluate

    ws = Workspace(tmp_path / "nnunet")
    ws.log = ws.root / "commands.log"
    prepare_dataset(ws, 953, num_train=5, num_test=2, spec=DemoSpec(shape=(20, 16, 16), spacing=(0.6, 0.9, 0.9)))
    plans_file = ws.preprocessed / ws.dataset_folder(953).name / "nnUNetPlans.json"
    assert json.loads(plans_file.read_text())["transpose_forward"] == [1, 0, 2]
    settings = [
        "num_epochs=1",
        "num_iterations_per_epoch=2",
        "num_val_iterations_per_epoch=1",
        'encoder_kwargs={"embed_dim":32,"depth":2,"num_heads":2}',
        "taps=[0,1,1]",
        "encoder_weights=none",
        "vit_amp=false",
        "agg_heads=2",
        "inplane_size=16",
    ]
    configuration = add_plans(ws, 953, "dinov3_ffa", settings)
    config = json.loads(plans_file.read_text())["configurations"][configuration]
    assert config["architecture"]["arch_kwargs"]["slice_axis"] == 1
    assert config["patch_size"][1] == 20 and config["patch_size"][0] == config["patch_size"][2] == 16
    scores = train_predict_evaluate(ws, 953, configuration, "nnUNetTrainerDINOv3FFA", predict_args=("--disable_tta",))
    images = sorted((ws.raw / ws.dataset_folder(953).name / "imagesTs").glob("*_0000.nii.gz"))
    assert len(images) == 2
    for image_path in images:
        image = sitk.ReadImage(str(image_path))
        prediction = sitk.ReadImage(str(Path(scores["prediction"]) / image_path.name.replace("_0000", "")))
        assert prediction.GetSize() == image.GetSize() == (16, 16, 20)
        assert np.allclose(prediction.GetSpacing(), image.GetSpacing())
        assert np.allclose(prediction.GetOrigin(), image.GetOrigin())
        assert np.allclose(prediction.GetDirection(), image.GetDirection())


# ---- crop sampling (vesselbridge3d train.py l. 1163-1165; nnU-Net data_loader.py l. 72) -----------------------


class _Sampler:
    def _set_batch_size_and_oversample(self):
        self.applied = self.oversample_foreground_percent


class _Trainer(ForegroundOversamplingMixin, _Sampler):
    def __init__(self, value):
        self.oversample_foreground_percent = 0.33  # nnUNetTrainer.__init__'s constant
        self.value = value

    def fm_option(self, name):
        assert name == "oversample_foreground_percent"
        return self.value


def test_oversampling_is_a_plans_option_and_the_ffa_preset_samples_uniformly():
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

    trainer = _Trainer(0.0)
    trainer._set_batch_size_and_oversample()
    assert trainer.applied == 0.0
    listing = describe_templates()
    assert "oversample_foreground_percent = 0.0  [nnUNetTrainerDINOv3FFA default]" in listing
    assert "oversample_foreground_percent = 0.33  [nnUNetTrainerUNetFewShot default]" in listing

    def forced(batch_size, percent):  # nnU-Net's own rule, on a bare loader
        loader = nnUNetDataLoader.__new__(nnUNetDataLoader)
        loader.batch_size, loader.oversample_foreground_percent = batch_size, percent
        return [loader._oversample_last_XX_percent(i) for i in range(batch_size)]

    assert forced(2, 0.33) == [False, True]  # nnU-Net's default forces foreground into half of a batch of 2
    assert forced(2, 0.0) == [False, False]


# ---- LightMedSeg budget (paper §4, nnFormer's protocol) -------------------------------------------------------


def test_lightmedseg_epochs_are_nnformer_epochs_with_a_cosine_floor():
    template = load_template("lightmedseg")
    assert budget_formula(template) == "300 epochs x 250 iterations = 75000 optimiser steps."
    listing = describe_templates()
    assert "min_lr = 1e-06  [nnUNetTrainerLightMedSeg default]" in listing
    assert warmup_cosine_lr(300, 1e-3, 10, 300, 1e-6) == pytest.approx(1e-6)
    assert warmup_cosine_lr(155, 1e-3, 10, 300, 1e-6) == pytest.approx((1e-3 + 1e-6) / 2)
    assert warmup_cosine_lr(300, 5e-3, 50, 300) == 0.0  # the FFA recipe decays to 0 (train.py l. 1538-1547)
