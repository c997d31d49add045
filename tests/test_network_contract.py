"""Contract over every registered model family (in the spirit of timm's tests/test_models.py).

Network side, for every family with its own network, built with its tiny settings (``nnunet_fm.tools.tiny_settings``,
one entry per registered family) through the path trainers take (``PlansNetworkMixin.build_network_architecture``
on a plans-style configuration): forward and backward on CPU, output ``[B, classes, *patch]`` as one tensor (no
deep supervision), the frozen encoder gets no gradient and every trainable parameter does, and ``torch.compile``
gives the same forward and gradients.
Registry side: every registered trainer resolves through nnU-Net's own lookup, and the shim, ``plans list``,
the templates, the benchmark and ``doctor`` follow the registry (a family added to it appears in all of them).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
import shutil
import time
from pathlib import Path

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

import nnunet_fm.trainers
from nnunet_fm import doctor, registry
from nnunet_fm.environment import EXT_TRAINER_VARIABLE, shim_folder
from nnunet_fm.errors import UserInputError
from nnunet_fm.ext_trainers import nnunet_fm_trainers
from nnunet_fm.network_interfaces import FrozenEncoder, unwrap
from nnunet_fm.templates import describe_templates, load_template, template_for_trainer, template_names, trainer_class
from nnunet_fm.tools import bench
from nnunet_fm.tools.tiny_settings import TINY, tiny_settings
from nnunet_fm.trainers.lightmedseg import nnUNetTrainerLightMedSeg

NETWORK_FAMILIES = [f for f in registry.families() if f.network is not None]
#: families whose cold inductor compile (forward + backward) takes over 60 s on 2 CPU cores (95-150 s measured)
SLOW_INDUCTOR = {"dinov3_ffa", "dinov3_cube", "lightmedseg"}
CXX = next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)


def _ids(family: registry.Family) -> str:
    return family.name


def build_tiny(family: registry.Family) -> nn.Module:
    """The family's network at its tiny settings, built by its main trainer from a plans-style configuration."""
    tiny = tiny_settings(family.name)
    configuration = {
        "patch_size": list(tiny.patch_size),
        "batch_size": tiny.batch_size,
        "architecture": {
            "network_class_name": family.network,
            "arch_kwargs": dict(tiny.arch_kwargs),
            "_kw_requires_import": [],
        },
    }
    torch.manual_seed(0)
    return family.trainer_class().build_network_architecture(
        PlansManager({"configurations": {"tiny": configuration}}),
        ConfigurationManager(configuration),
        tiny.input_channels,
        tiny.num_classes,
        enable_deep_supervision=False,  # what every plugin trainer passes (PlansOptionsMixin)
    )


def tiny_batch(family: registry.Family) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random batch (input, labels) of the family's tiny settings."""
    tiny = tiny_settings(family.name)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(tiny.batch_size, tiny.input_channels, *tiny.patch_size, generator=g)
    return x, torch.randint(0, tiny.num_classes, (tiny.batch_size, *tiny.patch_size), generator=g)


def loss_and_grads(network: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Output and gradients (by parameter name of the unwrapped network) of one cross-entropy step."""
    network.zero_grad(set_to_none=True)
    out = network(x)
    nn.functional.cross_entropy(out, y).backward()
    return out.detach(), {n: p.grad.clone() for n, p in unwrap(network).named_parameters() if p.grad is not None}


# ---------------------------------------------------------------- network side


@pytest.mark.parametrize("family", NETWORK_FAMILIES, ids=_ids)
def test_network_forward_backward_contract(family: registry.Family) -> None:
    network = build_tiny(family)
    assert type(network) is family.network_class()
    network.train()
    x, y = tiny_batch(family)
    out, grads = loss_and_grads(network, x, y)

    # deep supervision off: one full-resolution float32 tensor, not a list of scales
    assert isinstance(out, torch.Tensor)
    tiny = tiny_settings(family.name)
    assert tuple(out.shape) == (tiny.batch_size, tiny.num_classes, *tiny.patch_size)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert getattr(getattr(network, "decoder", None), "deep_supervision", False) is False

    # the frozen parameters are exactly the pretrained encoder's (if any); they get no gradient
    encoder = getattr(network, "encoder", None)
    expected_frozen = (
        {f"encoder.{n}" for n, _ in encoder.named_parameters()} if isinstance(encoder, FrozenEncoder) else set()
    )
    frozen = {n for n, p in network.named_parameters() if not p.requires_grad}
    assert frozen == expected_frozen
    assert not frozen & set(grads)
    # every trainable parameter is used: it gets a finite gradient (no registered network has an unused one)
    trainable = {n for n, p in network.named_parameters() if p.requires_grad}
    assert trainable and set(grads) == trainable, f"no gradient: {sorted(trainable - set(grads))}"
    assert all(torch.isfinite(g).all() for g in grads.values())


def _compile_cases() -> list:
    """(family, backend): dynamo + AOTAutograd tracing (aot_eager) in the fast tier, inductor in the slow one."""
    cases = [pytest.param(f, "aot_eager", id=f"{f.name}-aot_eager") for f in NETWORK_FAMILIES]
    for f in NETWORK_FAMILIES:
        marks = [pytest.mark.slow] if f.name in SLOW_INDUCTOR else []
        cases.append(pytest.param(f, "inductor", id=f"{f.name}-inductor", marks=marks))
    return cases


@pytest.mark.parametrize(("family", "backend"), _compile_cases())
def test_network_compiles_on_cpu(family: registry.Family, backend: str) -> None:
    """torch.compile forward + backward in training mode gives eager's output and gradients."""
    if backend == "inductor" and CXX is None:
        pytest.skip("no C++ compiler (g++, c++ or clang++) on PATH: torch.compile's inductor backend needs one")
    network = build_tiny(family).train()
    x, y = tiny_batch(family)
    eager_out, eager_grads = loss_and_grads(network, x, y)
    torch._dynamo.reset()
    try:
        start = time.perf_counter()
        out, grads = loss_and_grads(torch.compile(network, backend=backend), x, y)
        print(f"{family.name}: torch.compile({backend}) forward + backward in {time.perf_counter() - start:.1f} s")
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(out, eager_out, rtol=1e-4, atol=1e-5)
    assert set(grads) == set(eager_grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-3, atol=1e-6, msg=name)


# ---------------------------------------------------------------- trainer side


def test_every_registered_trainer_resolves_through_nnunet(monkeypatch: pytest.MonkeyPatch) -> None:
    """nnUNetv2_train's own lookup, with only the shim folder on nnUNet_extTrainer, finds the registry's classes."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.setenv(EXT_TRAINER_VARIABLE, str(shim_folder()))
    for family in registry.families():
        for name in family.trainers:
            found = recursive_find_trainer_class_by_name(name)
            assert found is family.trainer_class(name)
    assert [c.name for c in doctor.check_trainers_resolve()] == [f"trainer {n}" for n in registry.trainer_names()]
    assert all(c.ok for c in doctor.check_trainers_resolve())
    assert [c.name for c in doctor.check_networks_import()] == [f"network {f.name}" for f in NETWORK_FAMILIES]
    assert all(c.ok for c in doctor.check_networks_import())


def test_shim_exports_exactly_the_registered_trainers() -> None:
    assert nnunet_fm_trainers.__all__ == registry.trainer_names()
    for family in registry.families():
        for name in family.trainers:
            assert getattr(nnunet_fm_trainers, name) is family.trainer_class(name)


def test_every_trainer_module_is_registered() -> None:
    """A trainer class under trainers/ that no template's family block names fails here (base.py: shared bases)."""
    defined = {}
    for module_info in pkgutil.iter_modules(nnunet_fm.trainers.__path__):
        if module_info.name == "base":
            continue
        module = importlib.import_module(f"nnunet_fm.trainers.{module_info.name}")
        for name, obj in vars(module).items():
            if isinstance(obj, type) and issubclass(obj, nnUNetTrainer) and obj.__module__ == module.__name__:
                defined[name] = module.__name__
    registered = {name: f.trainer_module for f in registry.families() for name in f.trainers}
    assert defined == registered


def test_families_agree_with_their_trainers_and_templates() -> None:
    assert sorted(f.name for f in registry.families()) == sorted({f.name for f in registry.families()})
    assert set(template_names()) == {f.template for f in registry.families()}
    for family in registry.families():
        main = family.trainer_class()
        # the network is stated once, in the template's family block; every trainer reads it from there
        assert main.fm_network == family.network
        classes = {k for n in family.trainers for k in family.trainer_class(n).__mro__}
        assert {k.__name__ for k in classes if "fm_network" in vars(k)} == {"PlansNetworkMixin"}
        assert load_template(family.template).trainer == family.trainer
        for name in family.trainers:
            assert issubclass(family.trainer_class(name), main)
            assert template_for_trainer(name) == (family.template, name)
            assert trainer_class(name) is family.trainer_class(name)
    assert template_for_trainer("nnUNetTrainer") == ("unet_fewshot", "nnUNetTrainerUNetFewShot")
    with pytest.raises(UserInputError, match="No template trains 'nnUNetTrainerNope'.*nnUNetTrainerDINOv3FFA_1shot"):
        template_for_trainer("nnUNetTrainerNope")
    with pytest.raises(UserInputError, match="'nnUNetTrainerNope' is not a plugin trainer"):
        trainer_class("nnUNetTrainerNope")


def test_every_family_has_tiny_settings_and_no_other_name_has() -> None:
    """The tiny settings are stated once, in ``nnunet_fm/tools/tiny_settings.py``: one entry per registered family."""
    families = {f.name for f in registry.families()}
    assert not families - set(TINY), f"registered families without tiny settings: {sorted(families - set(TINY))}"
    assert not set(TINY) - families, f"tiny settings of no registered family: {sorted(set(TINY) - families)}"
    with pytest.raises(KeyError, match=r"'new_family' has no tiny test settings: add them to .*tiny_settings.TINY"):
        tiny_settings("new_family")


def test_plans_list_and_bench_follow_the_registry() -> None:
    listing = describe_templates().splitlines()
    for family in registry.families():
        assert any(line.startswith(f"{family.template}: ") for line in listing)
        assert any(line.endswith(f"trainer: {family.trainer}") for line in listing)
    assert [(row.key, row.label, row.encoder) for row in bench.BENCH_MODELS] == [
        (k, *v) for k, v in bench.MODELS.items()
    ]
    assert set(bench.DEFAULT_MODELS) <= set(bench.MODELS)
    # the reference row is stock nnU-Net, no plugin family; every other row measures a registered family
    [stock] = [row for row in bench.BENCH_MODELS if row.family is None]
    assert stock.key == bench.STOCK and bench.TRAINERS[stock.key] == "nnUNetTrainer" == bench.STOCK_TRAINER
    assert bench.STOCK not in bench.NETWORK_CLASSES  # nnU-Net's own network, from the plans or its planner
    for row in bench.BENCH_MODELS:
        if row.family is not None:
            family = registry.family(row.family)
            assert bench.TRAINERS[row.key] == family.trainer
            assert bench.NETWORK_CLASSES.get(row.key) == family.network
    # every family with a network of its own has a row
    benched = {row.family for row in bench.BENCH_MODELS}
    assert {f.name for f in NETWORK_FAMILIES} <= benched


class nnUNetTrainerNewFamily(nnUNetTrainerLightMedSeg):
    """A stand-in for a newly added family's trainer (only registered in the test below)."""


def test_a_family_is_declared_by_its_template_alone() -> None:
    """The registry's entry of a family is its template's ``family`` block, nothing else."""
    raw = json.loads((Path(registry.__file__).parents[1] / "plans_templates" / "dinov3_ffa.json").read_text())
    ffa = registry._family_from_template("dinov3_ffa", raw)
    assert ffa == registry.family("dinov3_ffa")
    assert ffa.trainers[0] == raw["trainer"] and ffa.trainers[1:] == tuple(raw["family"]["variants"])
    with pytest.raises(ValueError, match=r"plans_templates/new_family.json has no 'family' block"):
        registry._family_from_template("new_family", {k: v for k, v in raw.items() if k != "family"})
    # test and benchmark data are not part of it: a stale 'tiny' block is refused, naming where it goes
    stale = {**raw, "family": {**raw["family"], "tiny": {"patch_size": [2, 16, 16]}}}
    with pytest.raises(ValueError, match=r"unknown 'family' keys \['tiny'\].*nnunet_fm/tools/tiny_settings.py"):
        registry._family_from_template("dinov3_ffa", stale)


def test_a_family_added_to_the_registry_appears_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """A registered family (what a new template's ``family`` block gives) is all the shim, the template lookup
    and doctor need to know of it."""
    new = dataclasses.replace(
        registry.family("lightmedseg"), name="new_family", trainer_module=__name__, trainers=("nnUNetTrainerNewFamily",)
    )
    monkeypatch.setattr(registry, "FAMILIES", (*registry.FAMILIES, new))
    try:
        shim = importlib.reload(nnunet_fm_trainers)
        assert "nnUNetTrainerNewFamily" in shim.__all__ and shim.nnUNetTrainerNewFamily is nnUNetTrainerNewFamily
        assert template_for_trainer("nnUNetTrainerNewFamily") == ("lightmedseg", "nnUNetTrainerNewFamily")
        assert trainer_class("nnUNetTrainerNewFamily") is nnUNetTrainerNewFamily
        assert "nnUNetTrainerNewFamily" in doctor.plugin_trainer_names()
        assert "network new_family" in {c.name for c in doctor.check_networks_import()}
    finally:
        monkeypatch.undo()
        importlib.reload(nnunet_fm_trainers)
        vars(nnunet_fm_trainers).pop("nnUNetTrainerNewFamily", None)  # reload keeps old globals
    assert "nnUNetTrainerNewFamily" not in nnunet_fm_trainers.__all__
