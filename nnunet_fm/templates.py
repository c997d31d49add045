"""Plans templates shipped in ``plans_templates/``: loading, listing and patch-size rules."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from nnunet_fm import registry
from nnunet_fm.errors import UserInputError
from nnunet_fm.options import (
    EffectiveOption,
    Option,
    declared_options,
    fixed_options,
    network_options,
    resolve_options,
)

#: keys ``plans add`` applies itself (the configuration's geometry, batch and preprocessing): top-level keys of a
#: template, settable with ``--set``, declared and checked like every option
STRUCTURAL_OPTIONS: dict[str, Option] = {
    option.name: option
    for option in (
        Option(
            "patch_size",
            None,
            "Patch size [D, H, W]; must satisfy the template's patch rules. null: the parent's patch (or the "
            "whole-slice or global patch), snapped to the patch rules.",
            "int_list",
            nullable=True,
            minimum=1,
            length=3,
        ),
        Option("batch_size", None, "Batch size. null: the parent's.", "int", nullable=True, minimum=1),
        Option(
            "intensity",
            "parent",
            "'affine': own preprocessing with unmasked z-score, so the encoder's per-slice min-max equals the raw "
            "image's; 'parent': reuse the parent's preprocessed data (nnU-Net's normalisation).",
            choices=("parent", "affine"),
        ),
        Option(
            "inplane_size",
            None,
            "Whole-slice view: in-plane spacing chosen so the median slice spans this many voxels; patch "
            "[min(max_depth, median depth), N, N]; a multiple of the encoder's patch size (16 for DINOv3, 14 for "
            "DINOv2; 336, the reference's, suits both). null: the parent's spacing and patch.",
            "int",
            nullable=True,
            minimum=1,
        ),
        Option("max_depth", 64, "Patch depth cap used with inplane_size (reference: 64).", "int", minimum=1),
        Option(
            "batch_dice",
            None,
            "nnU-Net's Dice mode: true pools Dice over the batch, false computes it per sample. null: the parent's "
            "(nnU-Net plans true for 3d_fullres when it also plans 3d_lowres).",
            "bool",
            nullable=True,
        ),
        Option(
            "global_patch",
            False,
            "true: the patch covers the dataset's median image (rounded up to the patch rules), so a median case is "
            "predicted in one window and positions inside the patch are positions in the volume.",
            "bool",
        ),
    )
}


@dataclass
class Template:
    """A configuration recipe for ``nnunet-fm plans add``: only what differs from the trainer's defaults.

    The trainer (``trainer``) names the network (its ``fm_network``) and declares the options it reads with
    their defaults; ``options`` and ``arch_kwargs`` hold the template's departures from those defaults, and
    ``structural`` its departures from the :data:`STRUCTURAL_OPTIONS` defaults (top-level keys of the JSON).
    """

    name: str
    description: str
    configuration: str
    parent: str
    trainer: str
    patch: dict = field(default_factory=dict)
    structural: dict = field(default_factory=dict)
    arch_kwargs: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    family: dict = field(default_factory=dict)  # the family's registration, read by nnunet_fm.registry

    @property
    def trainer_class(self) -> type:
        return trainer_class(self.trainer)

    @property
    def network_class_name(self) -> str | None:
        return getattr(self.trainer_class, "fm_network", None)

    def trainer_options(self) -> dict[str, Option]:
        return declared_options(self.trainer_class)

    def structural_values(self) -> dict[str, Any]:
        """Every structural key's value for this template: its own, else the declared default."""
        return {name: self.structural.get(name, option.default) for name, option in STRUCTURAL_OPTIONS.items()}

    def network_options(self) -> dict[str, Option]:
        name = self.network_class_name
        return {} if name is None else network_options(registry.network_class(name))


def trainer_class(name: str) -> type:
    """A registered plugin trainer class by name (clear error listing the plugin's trainers)."""
    family = registry.family_of_trainer(name)
    if family is None:
        names = ", ".join(registry.trainer_names())
        raise UserInputError(f"'{name}' is not a plugin trainer. Plugin trainers: {names}.")
    return family.trainer_class(name)


def template_names() -> list[str]:
    """Names of all shipped templates."""
    return registry.template_names()


def load_template(name: str) -> Template:
    """Load a shipped template by name (clear error listing the valid names); its values are checked."""
    if name not in template_names():
        raise UserInputError(f"Unknown template '{name}'. Available templates: {', '.join(template_names())}.")
    raw = registry.read_template(name)
    structural = {key: raw.pop(key) for key in list(raw) if key in STRUCTURAL_OPTIONS}
    template = Template(name=name, structural=structural, **raw)
    for values, declared, owner in (
        (template.structural, STRUCTURAL_OPTIONS, "plans add"),
        (template.options, template.trainer_options(), template.trainer),
        (template.arch_kwargs, template.network_options(), template.network_class_name),
    ):
        for key, value in values.items():
            if key not in declared:
                raise UserInputError(f"Template '{name}' sets '{key}', which {owner} does not read.")
            declared[key].check(value, f"template {name}")
    return template


def describe_templates() -> str:
    """Every template with the effective default of every option and where it comes from (``plans list``)."""
    lines = []
    for name in template_names():
        t = load_template(name)
        lines.append(f"{name}: {t.description}")
        lines.append(f"  configuration: {t.configuration} (inherits_from {t.parent}); trainer: {t.trainer}")
        lines.append(f"  patch rules: {json.dumps(t.patch)}")
        lines.append(f"  budget: {budget_formula(t)}")
        lines.append("  structural keys (top-level plans keys, applied by plans add):")
        lines += format_options(
            resolve_options(STRUCTURAL_OPTIONS, t.structural, "plans add"),
            {k: f"template {name}" for k in t.structural},
        )
        lines.append(f"  trainer options (top-level plans keys, read by {t.trainer}):")
        lines += format_options(
            resolve_options(t.trainer_options(), t.options, t.trainer, fixed_options(t.trainer_class)),
            {k: f"template {name}" for k in t.options},
        )
        if t.network_class_name:
            lines.append(f"  network options (architecture.arch_kwargs of {t.network_class_name}):")
            network = t.network_class_name.rsplit(".", 1)[-1]
            lines += format_options(
                resolve_options(t.network_options(), t.arch_kwargs, network),
                {k: f"template {name}" for k in t.arch_kwargs},
            )
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def budget_formula(template: Template) -> str:
    """How many optimiser steps the template's defaults take, in words and with its own numbers."""
    from nnunet_fm.hooks.budget import iterations_per_pass

    values = {k: v.value for k, v in resolve_options(template.trainer_options(), template.options, "").items()}
    epochs, iterations, k = values["num_epochs"], values["num_iterations_per_epoch"], values.get("few_shot_k")
    if iterations is not None:
        return f"{epochs} epochs x {iterations} iterations = {epochs * iterations} optimiser steps."
    batch_size = template.structural_values()["batch_size"]
    batch = batch_size or "B"
    text = f"an epoch is one pass over the training cases: {epochs} x ceil(n_train / {batch}) optimiser steps"
    if k is not None and batch_size:
        steps = epochs * iterations_per_pass(k, batch_size)
        crops = steps * batch_size  # every step draws a full batch, the last one of a pass too
        text += f" (few_shot_k={k}: {steps} steps x batch {batch_size} = {crops} training crops)"
    return text + "."


def format_options(resolved: dict[str, EffectiveOption], sources: dict[str, str] | None = None) -> list[str]:
    """One line per option: ``name = value  [source]  # help (accepted values)``."""
    sources = sources or {}
    return [
        f"    {name} = {json.dumps(e.value)}  [{sources.get(name, e.source)}]  # {e.option.help} "
        f"({e.option.describe_values()})"
        for name, e in sorted(resolved.items())
    ]


def _encoder_patch(ndim: int, options: dict) -> list[int]:
    """``[1, ..., p, p]``: the frozen encoder's patch size ``p`` in-plane (its ``encoder`` / ``encoder_kwargs``)."""
    from nnunet_fm.encoders import encoder_spec

    try:
        patch = encoder_spec(options["encoder"], options.get("encoder_kwargs")).patch_size
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise UserInputError(
            f"Patch rule 'encoder_patch' needs the encoder's patch size, but encoder={options.get('encoder')!r} "
            f"with encoder_kwargs={options.get('encoder_kwargs')!r} cannot be built: {exc}"
        ) from exc
    return [1] * (ndim - 2) + [patch, patch]


def _multiple_per_axis(entry: Any, ndim: int, architecture: dict | None, options: dict) -> list[int] | None:
    """Resolve one ``multiple_of`` entry: a list of ints, 'strides', 'encoder_patch' (the frozen encoder's patch
    size in-plane, 1 along the slice axis), or the name of an option (e.g. cube_size)."""
    if isinstance(entry, list):
        return [int(v) for v in entry]
    if entry == "encoder_patch":
        return _encoder_patch(ndim, options)
    if entry == "strides":
        strides = (architecture or {}).get("arch_kwargs", {}).get("strides")
        if not strides:
            return None
        return [math.prod(int(s[axis]) for s in strides) for axis in range(ndim)]
    value = options.get(entry)
    return None if value is None else [int(v) for v in value]


def patch_multiples(rules: dict, ndim: int, architecture: dict | None, options: dict) -> list[int]:
    """Per-axis value every patch axis must be a multiple of (lcm of all rule entries)."""
    multiples = [1] * ndim
    for entry in rules.get("multiple_of", []):
        per_axis = _multiple_per_axis(entry, ndim, architecture, options)
        if per_axis is None:
            continue
        if len(per_axis) != ndim:
            raise UserInputError(f"Patch rule {entry!r} has {len(per_axis)} axes but the patch has {ndim}.")
        multiples = [math.lcm(a, b) for a, b in zip(multiples, per_axis)]
    return multiples


def global_patch_size(median_shape: list[int], multiples: list[int]) -> list[int]:
    """The median image shape rounded up to the per-axis multiples: one window covers a median case."""
    return [math.ceil(int(v) / m) * m for v, m in zip(median_shape, multiples)]


def _valid_near(value: int, multiple: int, low: int) -> int:
    """Nearest multiple of ``multiple`` to ``value`` that is at least ``low``."""
    nearest = max(multiple, math.floor(value / multiple + 0.5) * multiple)  # ties round up
    return max(nearest, math.ceil(low / multiple) * multiple)


def resolve_patch(
    rules: dict,
    base_patch: list[int],
    architecture: dict | None,
    options: dict,
    user_given: bool,
) -> list[int]:
    """Apply a template's patch rules.

    A patch derived from the parent configuration is snapped to the nearest valid size; a patch the user
    gave explicitly is checked and rejected with the nearest valid sizes when it breaks a rule.
    """
    ndim = len(base_patch)
    multiples = patch_multiples(rules, ndim, architecture, options)
    minimum = rules.get("min") or [1] * ndim
    maximum = rules.get("max") or [None] * ndim
    snapped = []
    for axis, (value, mult, low, high) in enumerate(zip(base_patch, multiples, minimum, maximum)):
        valid = _valid_near(int(value), mult, low)
        if high is not None and valid > high:
            valid = (high // mult) * mult
            if valid < max(low, mult):
                raise UserInputError(
                    f"Patch rule cannot be met on axis {axis}: it needs a multiple of {mult} between {low} and "
                    f"{high}. Change the rule's inputs (e.g. cube_size) with --set."
                )
        snapped.append(valid)
    if user_given and snapped != [int(v) for v in base_patch]:
        raise UserInputError(
            f"patch_size {list(base_patch)} breaks the template's patch rules (per-axis multiples {multiples}, "
            f"minimum {list(minimum)}, maximum {list(maximum)}). Nearest valid patch: {snapped}; "
            f"use --set patch_size={json.dumps(snapped).replace(' ', '')}."
        )
    return snapped


def template_for_trainer(trainer: str) -> tuple[str, str]:
    """(template name, plugin trainer) for a trainer name or a family's alias (its ``family.aliases``)."""
    resolved = registry.plugin_trainer(trainer)
    if resolved is None:
        known = sorted({*registry.trainer_names(), *(a for f in registry.families() for a in f.aliases)})
        raise UserInputError(f"No template trains '{trainer}'. Trainers with templates: {', '.join(known)}.")
    return registry.family_of_trainer(resolved).template, resolved
