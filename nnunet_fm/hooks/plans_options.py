"""Read trainer options from the plans configuration (the one place users customise training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nnunet_fm import registry
from nnunet_fm.errors import UserInputError
from nnunet_fm.options import EffectiveOption, Option, declared_options, fixed_options, resolve_options


def check_preprocessed_data(plans: dict, configuration: str) -> None:
    """Refuse to train a configuration whose preprocessed data does not exist, naming the command that makes it.

    ``plans add`` prints that command for a configuration with its own ``data_identifier``; without it,
    nnU-Net's ``initialize()`` fails with a ``FileNotFoundError`` traceback. Anything unusual (no
    ``nnUNet_preprocessed``, an unknown configuration) is left to nnU-Net's own messages.
    """
    import os

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    root = os.environ.get("nnUNet_preprocessed")
    dataset = plans.get("dataset_name")
    if not root or not dataset or configuration not in plans.get("configurations", {}):
        return
    identifier = PlansManager(plans).get_configuration(configuration).data_identifier
    folder = Path(root) / dataset / identifier
    if folder.is_dir() and any(folder.iterdir()):
        return
    state = "is empty" if folder.is_dir() else "does not exist"
    plans_name = plans.get("plans_name", "nnUNetPlans")
    command = f"nnUNetv2_preprocess -d {dataset} -plans_name {plans_name} -c {configuration}"
    raise UserInputError(
        f"Configuration '{configuration}' of {dataset} has no preprocessed data: {folder} {state}. Run\n"
        f"  {command}\n"
        "(the line `nnunet-fm plans add` printed), then start nnUNetv2_train again. Nothing was written."
    )


class PlansOptionsMixin:
    """A trainer option's value: ``fm_fixed`` (variant pins), else the plans configuration, else the default.

    Each hook declares the keys it reads in ``fm_options``; a family changes defaults in ``fm_defaults``.
    This mixin owns the trainer ``__init__`` (nnU-Net records init args by introspection, so the signature
    must stay exactly nnUNetTrainer's).
    """

    fm_options = (
        Option("num_epochs", 1000, "Training epochs (nnU-Net default 1000).", "int", minimum=1),
        Option(
            "save_every",
            10,
            "Write checkpoint_latest.pth every N epochs (nnU-Net: 50; --c resumes from it).",
            "int",
            minimum=1,
        ),
    )
    fm_defaults: dict[str, Any] = {}
    fm_fixed: dict[str, Any] = {}

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        check_preprocessed_data(plans, configuration)  # before nnU-Net's __init__ writes its output folder
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.label_manager.has_regions and not getattr(self, "fm_supports_regions", False):
            raise UserInputError(
                f"{type(self).__name__} trains with classes (softmax), not regions; dataset.json of "
                f"{self.plans_manager.dataset_name} defines region labels. Either train the regions with stock "
                "nnUNetTrainer, or give dataset.json integer class labels (BraTS: 1 necrosis, 2 oedema, 3 enhancing) "
                "and train this trainer on the classes; nnUNetv2_evaluate_folder with a dataset.json that keeps the "
                "regions (-djfile) then scores whole tumour / tumour core / enhancing tumour from the class "
                "predictions, as the LightMedSeg paper does (documentation/recipes.md: 'Regions (BraTS)')."
            )
        self.fm_check_configuration(configuration)
        self._fm_options = self.fm_effective_options()
        for name in ("num_epochs", "save_every"):
            setattr(self, name, int(self.fm_option(name)))
        self.enable_deep_supervision = False

    @classmethod
    def fm_declared_options(cls) -> dict[str, Option]:
        """Every option this trainer reads, with its defaults."""
        return declared_options(cls)

    def fm_check_configuration(self, name: str) -> None:
        """Refuse a configuration this trainer would misread: another network, or keys it would ignore."""
        configuration = self.configuration_manager.configuration
        trainer = type(self).__name__
        expected = getattr(self, "fm_network", None)
        found = (configuration.get("architecture") or {}).get("network_class_name")
        if expected is not None and found != expected:
            dataset = self.plans_manager.dataset_name
            family = registry.family_of_class(type(self))
            advice = (
                f"Add the trainer's configuration first: `nnunet-fm plans add -d {dataset} --template "
                f"{family.template}`, then `nnUNetv2_train {dataset} {family.configuration} FOLD -tr {trainer}`."
                if family is not None
                else f"Set architecture.network_class_name to {expected} in the configuration."
            )
            raise UserInputError(
                f"Configuration '{name}' of {dataset} builds {found}, but {trainer} trains "
                f"{expected.rsplit('.', 1)[-1]}; training it would silently train another network. {advice}"
            )
        stray = sorted(set(configuration) & (registry.plugin_option_names() - set(self.fm_declared_options())))
        if stray:
            raise UserInputError(
                f"Configuration '{name}' sets {stray}, which {trainer} does not read (network options belong in "
                "architecture.arch_kwargs). Re-create it with `nnunet-fm plans add` or remove the keys; "
                "`nnunet-fm plans show` lists what each key does."
            )

    def fm_effective_options(self) -> dict[str, EffectiveOption]:
        """Effective value and source of every option, checked against its declaration."""
        return resolve_options(
            self.fm_declared_options(),
            self.configuration_manager.configuration,
            type(self).__name__,
            fixed_options(type(self)),
        )

    def fm_option(self, name: str) -> Any:
        """Value of a declared option for this trainer and configuration."""
        if name not in self._fm_options:
            raise KeyError(f"{type(self).__name__} does not declare option '{name}' (add it to a hook's fm_options).")
        return self._fm_options[name].value
