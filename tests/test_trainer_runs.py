"""A short run of every plugin trainer with its template (in the spirit of timm's tests/test_models.py).

Each trainer is built in-process from the planned fixture dataset with its template and its family's tiny settings
(``nnunet_fm.tools.tiny_settings``), then:
``initialize()``, one ``train_step``, one ``validation_step``, a checkpoint save/load round trip, and its
effective options equal what it declares. Fast: no subprocess, no nnUNetv2 command.
"""

import copy
import json

import numpy as np
import pytest
import torch

from nnunet_fm import registry
from nnunet_fm.ext_trainers import nnunet_fm_trainers
from nnunet_fm.options import declared_options, fixed_options
from nnunet_fm.plans import add_configuration
from nnunet_fm.templates import load_template, template_for_trainer
from nnunet_fm.tools.tiny_settings import tiny_settings

DATASET_ID = 951  # the planned_workspace fixture's dataset (tests/conftest.py)
#: each family's tiny network and trainer settings (plans add --set values), by template
TINY = {
    f.template: {**tiny_settings(f.name).arch_kwargs, **tiny_settings(f.name).plans_overrides}
    for f in registry.families()
}
SHORT = {"num_epochs": 2, "num_iterations_per_epoch": 1, "num_val_iterations_per_epoch": 1}
TRAINERS = registry.trainer_names()


def _build(env, trainer_name: str):
    template, _ = template_for_trainer(trainer_name)
    configuration = f"3d_run_{trainer_name}"
    add_configuration(DATASET_ID, template, name=configuration, overrides={**TINY[template], **SHORT})
    folder = env.preprocessed / env.dataset_folder(DATASET_ID).name
    plans = {
        **json.loads((folder / "nnUNetPlans.json").read_text()),
        "continue_training": False,
    }  # run_training adds it
    dataset_json = json.loads((folder / "dataset.json").read_text())
    trainer_cls = getattr(nnunet_fm_trainers, trainer_name)
    return trainer_cls(plans, configuration, 0, dataset_json, torch.device("cpu")), template


@pytest.mark.parametrize("trainer_name", TRAINERS)
def test_trainer_runs_and_round_trips_its_checkpoint(nnunet_env, trainer_name, tmp_path):
    trainer, template = _build(nnunet_env, trainer_name)
    trainer_cls = type(trainer)

    # effective options are exactly the declared ones; template values and pinned values win over defaults
    declared = declared_options(trainer_cls)
    effective = trainer.fm_effective_options()
    assert set(effective) == set(declared)
    for name, value in {**load_template(template).options, **fixed_options(trainer_cls)}.items():
        assert effective[name].value == value
    assert trainer.num_epochs == SHORT["num_epochs"]
    assert trainer.enable_deep_supervision is False

    trainer.on_train_start()  # initialize(), split, loss, dataloaders, budget
    try:
        assert trainer.num_iterations_per_epoch == 1 and trainer.num_val_iterations_per_epoch == 1
        trainer.on_train_epoch_start()
        loss = trainer.train_step(next(trainer.dataloader_train))["loss"]
        assert np.isfinite(loss)
        trainer.on_validation_epoch_start()
        val = trainer.validation_step(next(trainer.dataloader_val))
        assert np.isfinite(val["loss"]) and len(val["tp_hard"]) == trainer.label_manager.num_segmentation_heads - 1

        checkpoint = tmp_path / "checkpoint.pth"
        trainer.save_checkpoint(str(checkpoint))
        # stock nnUNetv2_predict mirrors over exactly the axes the checkpoint allows
        mirror = effective["mirror_axes"].value
        expected_axes = (0, 1, 2) if mirror == "nnunet" else (tuple(mirror) if mirror else None)
        stored = torch.load(checkpoint, weights_only=False)["inference_allowed_mirroring_axes"]
        assert stored == expected_axes
        saved = {k: v.clone() for k, v in trainer.network.state_dict().items()}
        with torch.no_grad():
            for parameter in trainer.network.parameters():
                parameter.add_(1.0)
        trainer.load_checkpoint(str(checkpoint))
        for key, value in trainer.network.state_dict().items():
            assert torch.equal(value, saved[key]), key
    finally:
        trainer.dataloader_train = trainer.dataloader_val = None


def test_trainer_refuses_a_configuration_that_builds_another_network(nnunet_env):
    """`nnUNetv2_train D 3d_fullres 0 -tr nnUNetTrainerDINOv3FFA` must not silently train a plain U-Net."""
    from nnunet_fm.errors import UserInputError

    folder = nnunet_env.preprocessed / nnunet_env.dataset_folder(DATASET_ID).name
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())
    for trainer_name in ("nnUNetTrainerDINOv3FFA", "nnUNetTrainerDINOv3Cube", "nnUNetTrainerLightMedSeg"):
        trainer_cls = getattr(nnunet_fm_trainers, trainer_name)
        with pytest.raises(UserInputError, match=r"nnunet-fm plans add -d Dataset951_\w+ --template"):
            trainer_cls({**plans, "continue_training": False}, "3d_fullres", 0, dataset_json, torch.device("cpu"))
    # a user's subclass is pointed at its registered base's template and configuration
    subclass = type("MyFFATrainer", (nnunet_fm_trainers.nnUNetTrainerDINOv3FFA,), {})
    with pytest.raises(UserInputError, match=r"--template dinov3_ffa`, then `nnUNetv2_train \S+ 3d_fm_dinov3_ffa "):
        subclass({**plans, "continue_training": False}, "3d_fullres", 0, dataset_json, torch.device("cpu"))
    # the stock U-Net baseline trains the parent's network by design
    unet = nnunet_fm_trainers.nnUNetTrainerUNetFewShot
    unet({**plans, "continue_training": False}, "3d_fullres", 0, dataset_json, torch.device("cpu"))
    # a key another family's trainer reads is refused, not silently ignored
    stray = copy.deepcopy(plans)
    stray["configurations"]["3d_fullres"]["boundary_weight"] = 2.0  # LightMedSeg's loss option
    with pytest.raises(
        UserInputError, match=r"sets \['boundary_weight'\], which nnUNetTrainerUNetFewShot does not read"
    ):
        unet({**stray, "continue_training": False}, "3d_fullres", 0, dataset_json, torch.device("cpu"))
