"""The model families the plugin ships: network, trainers, template.

Each family is declared by the ``family`` block of its template, ``plans_templates/<family>.json`` (the network
class, the trainer module, trainer variants and aliases); this module reads those blocks. Test and benchmark data
are not part of a family's declaration: its tiny CPU test settings live in ``nnunet_fm/tools/tiny_settings.py``,
its benchmark rows in ``nnunet_fm/tools/bench/models.py``. It imports no network, trainer, nnU-Net or torch
module: classes are imported only when asked for (:meth:`Family.network_class`, :meth:`Family.trainer_class`,
:func:`trainer_classes`). Read by the
``nnUNet_extTrainer`` shim (its exports), ``nnunet_fm.templates`` (trainer -> template), the trainers' own
configuration check, ``nnunet-fm doctor`` (what must resolve), the benchmark and the tests.

Adding a family: ``architectures/<family>.py``, ``trainers/<family>.py`` and ``plans_templates/<family>.json`` with
its ``family`` block, plus its tiny settings (tests/test_network_contract.py fails on a trainer class no template
names and on a family without tiny settings).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from nnunet_fm.errors import UserInputError


@dataclass(frozen=True)
class Family:
    """A model family: its network, its trainers (the first is the main one) and template."""

    name: str
    #: dotted network class (its trainers' ``fm_network`` reads it); None: nnU-Net's own network from the parent plans
    network: str | None
    #: module defining ``trainers`` (import path)
    trainer_module: str
    trainers: tuple[str, ...]
    #: shipped ``plans_templates/<template>.json`` (its ``trainer`` is the main trainer)
    template: str
    #: the configuration name its template adds
    configuration: str = ""
    #: trainer names outside the plugin that stand for the main trainer (stock nnUNetTrainer in few-shot grids)
    aliases: tuple[str, ...] = ()

    @property
    def trainer(self) -> str:
        """The main trainer (the template's)."""
        return self.trainers[0]

    def network_class(self) -> type | None:
        """The network class (imported now), or None for nnU-Net's own network."""
        return None if self.network is None else network_class(self.network)

    def trainer_class(self, name: str | None = None) -> type:
        """Trainer ``name`` (default: the main trainer) of this family, imported now."""
        name = self.trainer if name is None else name
        if name not in self.trainers:
            raise KeyError(f"{name} is not a trainer of family {self.name}: {', '.join(self.trainers)}")
        return import_object(f"{self.trainer_module}.{name}")


#: the keys of a template's ``family`` block
FAMILY_KEYS = frozenset({"network", "trainer_module", "variants", "aliases"})


def _family_from_template(name: str, raw: dict) -> Family:
    """The :class:`Family` a template's ``family`` block declares (its main trainer: the template's ``trainer``)."""
    block = raw.get("family")
    if not isinstance(block, dict):
        raise ValueError(f"plans_templates/{name}.json has no 'family' block (network, trainer_module, ...).")
    unknown = sorted(set(block) - FAMILY_KEYS)
    if unknown:
        raise ValueError(
            f"plans_templates/{name}.json: unknown 'family' keys {unknown} (known: {sorted(FAMILY_KEYS)}); tiny test "
            "settings go in nnunet_fm/tools/tiny_settings.py, benchmark rows in nnunet_fm/tools/bench/models.py."
        )
    return Family(
        name=name,
        network=block["network"],
        trainer_module=block["trainer_module"],
        trainers=(raw["trainer"], *block.get("variants", ())),
        template=name,
        configuration=raw["configuration"],
        aliases=tuple(block.get("aliases", ())),
    )


def template_names() -> list[str]:
    """Names of all shipped templates (``plans_templates/<name>.json``), sorted."""
    folder = resources.files("nnunet_fm.plans_templates")
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def read_template(name: str) -> dict:
    """The raw JSON of a shipped template."""
    return json.loads(resources.files("nnunet_fm.plans_templates").joinpath(f"{name}.json").read_text())


def _load_families() -> tuple[Family, ...]:
    """One family per shipped template, in template-name order (reads JSON only)."""
    return tuple(_family_from_template(name, read_template(name)) for name in template_names())


#: every shipped family (from the templates' ``family`` blocks)
FAMILIES: tuple[Family, ...] = _load_families()


def import_object(dotted: str) -> Any:
    """``module.attribute`` imported now; import errors propagate (unlike ``pydoc.locate``)."""
    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def network_class(dotted: str) -> type:
    """The class a plans ``architecture.network_class_name`` names, imported now: the one way the plugin resolves it.

    A name that does not import is a UserInputError carrying the import's own message (a missing module, a
    dependency the module needs, a misspelt class).
    """
    try:
        found = import_object(dotted)
    except (ImportError, AttributeError, ValueError) as exc:
        raise UserInputError(
            f"Network class '{dotted}' (architecture.network_class_name) cannot be imported: {exc}. Check the name "
            "(e.g. nnunet_fm.architectures.lightmedseg.LightMedSeg) and that its package is installed."
        ) from exc
    if not isinstance(found, type):
        raise UserInputError(f"network_class_name '{dotted}' names {type(found).__name__}, not a class.")
    return found


def families() -> tuple[Family, ...]:
    """Every registered family."""
    return FAMILIES


def family(name: str) -> Family:
    """The family called ``name`` (KeyError listing the names otherwise)."""
    for entry in FAMILIES:
        if entry.name == name:
            return entry
    raise KeyError(f"unknown model family {name!r}; registered: {', '.join(f.name for f in FAMILIES)}")


def family_of_trainer(trainer: str) -> Family | None:
    """The family one of whose trainers is called ``trainer``, or None."""
    return next((f for f in FAMILIES if trainer in f.trainers), None)


def family_of_class(cls: type) -> Family | None:
    """The family of ``cls`` or of its nearest registered base class (a user's subclass trains its base's)."""
    return next(filter(None, (family_of_trainer(k.__name__) for k in cls.__mro__)), None)


def plugin_trainer(name: str) -> str | None:
    """``name`` when it is a registered trainer, the main trainer of the family listing it in ``aliases``, else None."""
    if family_of_trainer(name) is not None:
        return name
    return next((f.trainer for f in FAMILIES if name in f.aliases), None)


def trainer_names() -> list[str]:
    """Every registered trainer name, sorted."""
    return sorted(name for f in FAMILIES for name in f.trainers)


def trainer_classes() -> dict[str, type]:
    """Every registered trainer class by name (imports every trainer module)."""
    return {name: f.trainer_class(name) for f in FAMILIES for name in f.trainers}


def plugin_option_names() -> set[str]:
    """Every option name a registered trainer or network reads (imports those classes; nnU-Net's trainer lookup
    has imported them already when a trainer starts)."""
    from nnunet_fm.options import declared_options, network_options

    names: set[str] = set()
    for entry in FAMILIES:
        names.update(*(declared_options(entry.trainer_class(t)) for t in entry.trainers))
        network = entry.network_class()
        if network is not None:
            names.update(network_options(network))
    return names
