"""Declared options: trainer defaults and pinned values are checked against their declarations."""

from __future__ import annotations

import pytest

from nnunet_fm import registry
from nnunet_fm.errors import UserInputError
from nnunet_fm.hooks.train_step import AmpClipTrainStepMixin
from nnunet_fm.options import Option, declared_options, network_options
from nnunet_fm.templates import STRUCTURAL_OPTIONS


class _Amp(AmpClipTrainStepMixin):
    pass


def test_defaults_and_fixed_values_must_satisfy_their_declaration() -> None:
    assert declared_options(type("Ok", (_Amp,), {"fm_defaults": {"amp_dtype": "float16"}}))["amp_dtype"].default == (
        "float16"
    )
    bad_default = type("BadDefault", (_Amp,), {"fm_defaults": {"amp_dtype": "fp8"}})
    with pytest.raises(TypeError, match=r"BadDefault\.fm_defaults.*amp_dtype='fp8'.*\"bfloat16\" or \"float16\""):
        declared_options(bad_default)
    bad_fixed = type("BadFixed", (_Amp,), {"fm_fixed": {"grad_clip": -1.0}})
    with pytest.raises(TypeError, match=r"BadFixed\.fm_fixed.*grad_clip=-1\.0"):
        declared_options(bad_fixed)
    with pytest.raises(TypeError, match=r"fm_fixed sets undeclared option\(s\) \['nope'\]"):
        declared_options(type("Undeclared", (_Amp,), {"fm_fixed": {"nope": 1}}))


def test_every_registered_trainer_declares_valid_defaults() -> None:
    for name in registry.trainer_names():
        options = declared_options(registry.family_of_trainer(name).trainer_class(name))
        assert options and all(o._accepts(o.default) for o in options.values()), name


def test_undeclared_network_option_gets_the_constructor_help() -> None:
    class Net:
        def __init__(self, input_channels: int, num_classes: int, width: int = 8) -> None: ...

    assert network_options(Net)["width"].help == "Net(width=...), see its docstring."


def test_int_list_option_checks_its_length_and_each_entry_range() -> None:
    option = Option("patch", None, "A patch.", "int_list", nullable=True, minimum=1, length=3)
    assert option.check([1, 2, 3]) == [1, 2, 3] and option.check(None) is None
    for bad in ([1, 2], [0, 2, 3], [1, 2, True], 64, [1.0, 2, 3]):
        with pytest.raises(UserInputError, match=r"expected a JSON list of 3 integers in \[1, inf\] or null"):
            option.check(bad, "--set")
    assert Option("taps", [1], "Taps.", "int_list").check([-3, 0]) == [-3, 0]  # no length, no range: any ints


def test_structural_keys_are_declared_options_whose_defaults_they_accept() -> None:
    assert list(STRUCTURAL_OPTIONS) == [
        "patch_size",
        "batch_size",
        "intensity",
        "inplane_size",
        "max_depth",
        "batch_dice",
        "global_patch",
    ]
    assert all(option._accepts(option.default) for option in STRUCTURAL_OPTIONS.values())
    with pytest.raises(UserInputError, match=r'intensity="raw" \(--set\) is not valid: expected "parent" or "affine"'):
        STRUCTURAL_OPTIONS["intensity"].check("raw", "--set")
    with pytest.raises(UserInputError, match="batch_dice=1 .*true or false or null"):
        STRUCTURAL_OPTIONS["batch_dice"].check(1)
