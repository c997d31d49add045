"""Hooks meet at declared extension points: the order in which a trainer lists its mixins changes nothing."""

import json
import random

import numpy as np
import pytest
import torch

from nnunet_fm.errors import UserInputError
from nnunet_fm.hooks.extension_points import Contribution, ExtensionPointsMixin, contributions

DATASET_ID = 951  # the planned_workspace fixture's dataset (tests/conftest.py)

# every hook that takes part in a step: Mean Teacher's batch, strategy, start-up and after-step contributions,
# few-shot choice beside unlabelled cases, class counts shared by class weights and the prior bias
SETTINGS = {
    "ssl": "mean_teacher",
    "unlabelled_on_top": False,
    "consistency_noise": 0.1,
    "consistency_rampup_epochs": 0,
    "few_shot_k": 3,
    "use_mfb": True,
    "bg_weight": 0.5,
    "init_prior_bias": True,
    "num_epochs": 1,
    "num_iterations_per_epoch": None,
    "num_val_iterations_per_epoch": 1,
}


def _composed(order: str) -> type:
    """nnUNetTrainerUNetFewShot's hooks listed in their own order or reversed, as a new trainer class."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_fm.ext_trainers.nnunet_fm_trainers import nnUNetTrainerUNetFewShot
    from nnunet_fm.trainers.base import nnUNetTrainerFMBase

    hooks = [b for b in nnUNetTrainerFMBase.__bases__ if b is not nnUNetTrainer]
    assert len(hooks) > 10
    if order == "reversed":
        hooks.reverse()
    body = {"fm_defaults": nnUNetTrainerUNetFewShot.fm_defaults, "__module__": __name__}
    return type(f"nnUNetTrainerUNetFewShotHooks{order.title()}", (*hooks, nnUNetTrainer), body)


def _first_step(nnunet_env, order: str) -> dict:
    from nnunet_fm.plans import add_configuration

    name = f"3d_hooks_{order}"
    add_configuration(DATASET_ID, "unet_fewshot", name=name, overrides=SETTINGS)
    folder = nnunet_env.preprocessed / nnunet_env.dataset_folder(DATASET_ID).name
    plans = {**json.loads((folder / "nnUNetPlans.json").read_text()), "continue_training": False}
    plans["configurations"]["3d_hooks"] = plans["configurations"][name]  # one name: same records, same seeds
    dataset_json = json.loads((folder / "dataset.json").read_text())
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    trainer = _composed(order)(plans, "3d_hooks", 0, dataset_json, torch.device("cpu"))
    trainer.on_train_start()
    try:
        initial = {n: p.detach().clone() for n, p in trainer.network.named_parameters()}
        loss = trainer.train_step(next(trainer.dataloader_train))["loss"]
        return {
            "loss": loss,
            "batch_size": trainer.batch_size,
            "iterations": trainer.num_iterations_per_epoch,
            "strategy": trainer.fm_train_step_strategy(),
            "initial": initial,
            "parameters": {n: p.detach().clone() for n, p in trainer.network.named_parameters()},
            "teacher": {n: t.clone() for n, t in trainer._fm_teacher.items()},
        }
    finally:
        trainer.dataloader_train = trainer.dataloader_val = None


def test_hooks_in_another_order_give_the_same_first_step_bit_for_bit(nnunet_env, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # augmentation in this process, from the seeded generators
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        listed, reversed_ = (_first_step(nnunet_env, order) for order in ("listed", "reversed"))
    finally:
        torch.set_num_threads(threads)
    assert listed["strategy"] == reversed_["strategy"] == "fm_mean_teacher_step"
    assert (listed["batch_size"], listed["iterations"]) == (reversed_["batch_size"], reversed_["iterations"])
    assert listed["loss"] == reversed_["loss"] and np.isfinite(listed["loss"])
    for key in ("initial", "parameters", "teacher"):
        assert listed[key].keys() == reversed_[key].keys() and len(listed[key]) > 10
        for n, tensor in listed[key].items():
            assert torch.equal(tensor, reversed_[key][n]), (key, n)
    stepped = listed["parameters"]
    assert any(not torch.equal(stepped[n], t) for n, t in listed["initial"].items())  # the optimiser stepped
    # the after-step contribution ran: the first EMA update (weight 0) copies the stepped student into the teacher
    assert all(torch.equal(stepped[n], t) for n, t in listed["teacher"].items())


class _Points(ExtensionPointsMixin):
    configuration_name = "3d_x"
    fm_contributions = (
        Contribution("start", "late", order=2),
        Contribution("start", "early", order=1),
        Contribution("train_step", "first", switch="a=true"),
        Contribution("train_step", "second", switch="b=true"),
    )

    def __init__(self, first: bool, second: bool) -> None:
        self.on = {"first": first, "second": second}

    def first_active(self) -> bool:
        return self.on["first"]

    def second_active(self) -> bool:
        return self.on["second"]


def test_contributions_run_in_declared_order_and_two_step_strategies_are_refused():
    assert [c.method for c in contributions(_Points, "start")] == ["early", "late"]
    assert _Points(False, False).fm_train_step_strategy() is None
    assert _Points(False, True).fm_train_step_strategy() == "second"
    with pytest.raises(UserInputError, match="a=true and b=true each replace the training step"):
        _Points(True, True).fm_train_step_strategy()
    with pytest.raises(ValueError, match="unknown point"):
        Contribution("begin", "x")
