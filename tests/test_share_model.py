"""Sharing a trained plugin model: export to zip, install into a fresh nnUNet_results, predict without the
encoder weights file the model was trained from (the checkpoint carries every weight)."""

import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import save_file

from nnunet_fm.demo import add_plans
from nnunet_fm.encoders import FrozenViTEncoder
from nnunet_fm.nnunet_commands import Workspace, predict

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DATASET_ID = 951  # the planned_workspace fixture's dataset (tests/conftest.py)
TINY_ENCODER = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def _arrays(folder):
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


def test_export_install_predict_without_the_encoder_weights_file(planned_workspace, tmp_path):
    ws = planned_workspace
    torch.manual_seed(0)
    weights = tmp_path / "dinov3_tiny.safetensors"
    vit = FrozenViTEncoder("vit_small_patch16_dinov3", taps=(0, 1), **TINY_ENCODER).vit
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))
    settings = [
        'encoder_kwargs={"embed_dim":32,"depth":2,"num_heads":2}',
        "taps=[0,1]",
        f"encoder_weights={weights}",
        "vit_amp=false",
        "cube_size=[8,16,16]",
        "num_epochs=1",
        "num_iterations_per_epoch=2",
        "num_val_iterations_per_epoch=1",
    ]
    configuration = add_plans(ws, DATASET_ID, "dinov3_cube", settings, name="3d_shared")
    trainer = "nnUNetTrainerDINOv3Cube"
    ws.run("nnUNetv2_train", str(DATASET_ID), configuration, "0", "-tr", trainer, "-device", "cpu")
    original = predict(ws, DATASET_ID, configuration, trainer, 0, tmp_path / "original")

    archive = tmp_path / "model.zip"
    ws.run(
        "nnUNetv2_export_model_to_zip",
        "-d",
        str(DATASET_ID),
        "-o",
        str(archive),
        "-c",
        configuration,
        "-tr",
        trainer,
        "-f",
        "0",
        "--not_strict",
    )
    weights.unlink()  # the receiving machine does not have it
    fresh = Workspace(
        tmp_path / "receiver", raw=ws.raw, preprocessed=ws.preprocessed, extra_trainer_folders=ws.extra_trainer_folders
    )
    fresh.run("nnUNetv2_install_pretrained_model_from_zip", str(archive))
    installed = fresh.results / ws.dataset_folder(DATASET_ID).name / f"{trainer}__nnUNetPlans__{configuration}"
    assert (installed / "fold_0" / "checkpoint_final.pth").is_file()
    received = predict(fresh, DATASET_ID, configuration, trainer, 0, tmp_path / "received")
    ours, theirs = _arrays(original), _arrays(received)
    assert ours.keys() == theirs.keys() and len(ours) == 2
    for name in ours:
        assert np.array_equal(ours[name], theirs[name]), name
    shutil.rmtree(tmp_path / "receiver")
