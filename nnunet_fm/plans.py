"""``nnunet-fm plans add``: add a template configuration to an existing nnU-Net plans file.

The new configuration ``inherits_from`` its parent (so the parent's preprocessed data is reused), carries its
own patch/batch size and ``architecture`` block, and every trainer option as a top-level key. The file is
backed up, then replaced atomically; re-running with the same name replaces only that configuration.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnunet_fm.atomic_io import atomic_write_json, backup_file, file_lock
from nnunet_fm.errors import UserInputError
from nnunet_fm.file_names import MANIFEST_NAME
from nnunet_fm.hooks.splits import NNUNET_FOLDS, few_case_note
from nnunet_fm.options import declared_options, fixed_options, network_options, resolve_options
from nnunet_fm.preprocessing_plan import check_inplane_multiple, preprocessing_entries
from nnunet_fm.registry import network_class as network_class_of
from nnunet_fm.slice_axis import from_canonical, slice_axis_from_transpose, to_canonical
from nnunet_fm.templates import (
    STRUCTURAL_OPTIONS,
    Template,
    format_options,
    global_patch_size,
    load_template,
    patch_multiples,
    resolve_patch,
    template_names,
    trainer_class,
)

METADATA_KEY = "nnunet_fm"


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are JSON when they parse as JSON, strings otherwise.

    A key given twice with the same value is accepted; with different values it is an error naming both.
    """
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserInputError(f"--set expects key=value, got '{pair}'.")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key in parsed and parsed[key] != value:
            raise UserInputError(
                f"--set gives '{key}' twice with different values ({json.dumps(parsed[key])} and {json.dumps(value)}); "
                "keep one."
            )
        parsed[key] = value
    return parsed


def dataset_name(dataset: str | int) -> str:
    """Full dataset name (``DatasetXXX_Name``) from an id or a name, with a clear error when unknown."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(dataset if not str(dataset).isdigit() else int(dataset))
    except RuntimeError as exc:
        raise UserInputError(
            f"Dataset '{dataset}' was not found in nnUNet_raw / nnUNet_preprocessed / nnUNet_results "
            f"(check the env vars; `nnunet-fm env` prints them). nnU-Net said: {exc}"
        ) from exc


def plans_path(dataset: str | int, plans_id: str = "nnUNetPlans") -> Path:
    """Path of an existing plans file, or a clear error naming the nnU-Net command to run first."""
    preprocessed = os.environ.get("nnUNet_preprocessed")
    if not preprocessed:
        raise UserInputError("nnUNet_preprocessed is not set. Export it (see `nnunet-fm env`).")
    path = Path(preprocessed) / dataset_name(dataset) / f"{plans_id}.json"
    if not path.is_file():
        raise UserInputError(
            f"Plans file {path} does not exist. Run `nnUNetv2_plan_and_preprocess -d {dataset} -c 3d_fullres` "
            f"(or nnUNetv2_plan_experiment with -overwrite_plans_name {plans_id}) first."
        )
    return path


def _readers_of(key: str) -> list[str]:
    """Templates whose trainer or network reads ``key`` (for the unknown-key message)."""
    readers = []
    for name in template_names():
        template = load_template(name)
        if key in template.trainer_options() or key in template.network_options():
            readers.append(f"{name} ({template.trainer})")
    return readers


def _split_overrides(template: Template, overrides: dict[str, Any]) -> tuple[dict, dict, dict]:
    """Sort ``--set`` keys into structural, network (arch_kwargs) and trainer overrides; check every value."""
    structural, arch, options = {}, {}, {}
    trainer_options, net_options = template.trainer_options(), template.network_options()
    for key, value in overrides.items():
        if key in STRUCTURAL_OPTIONS:
            structural[key] = STRUCTURAL_OPTIONS[key].check(value, "--set")
        elif key in trainer_options:
            options[key] = trainer_options[key].check(value, "--set")
        elif key in net_options:
            arch[key] = net_options[key].check(value, "--set")
        else:
            bare = key.removeprefix("arch.")
            hint = f" Network options are set by their plain name: --set {bare}=..." if bare != key else ""
            readers = _readers_of(bare)
            where = f" It is read by: {', '.join(readers)}." if readers else ""
            valid = sorted(trainer_options) + sorted(net_options) + sorted(STRUCTURAL_OPTIONS)
            raise UserInputError(
                f"Key '{key}' is not read by template '{template.name}' ({template.trainer}).{where}{hint} "
                f"Keys it reads: {', '.join(valid)} (see `nnunet-fm plans list`)."
            )
    return structural, arch, options


@dataclass
class AddResult:
    """What ``plans add`` wrote."""

    plans_file: Path
    backup: Path
    configuration: str
    trainer: str
    patch_size: list[int]
    batch_size: int
    warnings: list[str] = field(default_factory=list)
    preprocess_command: str | None = None  # set when the configuration has its own preprocessed data
    memory: list[str] = field(default_factory=list)  # the memory estimate and what --gpu-memory chose


def build_configuration(plans: dict, template: Template, overrides: dict[str, Any]) -> dict:
    """The configuration dict a template produces for ``plans`` (pure; no I/O), built in the named steps below."""
    parent = _parent_configuration(plans, template)
    structural, arch_overrides, option_overrides = _split_overrides(template, overrides)
    values = {**template.structural_values(), **structural}
    options = {**template.options, **option_overrides}
    architecture = _architecture_block(template, arch_overrides)
    slice_axis = _set_slice_axis(plans, template, architecture)
    effective_arch = architecture or parent.get("architecture")
    rule_values = {**_network_values(template, architecture), **options}
    _check_whole_slice_multiple(template, parent, effective_arch, rule_values, values["inplane_size"])
    parent_view = _canonical_geometry(parent, slice_axis)
    preprocessing, whole_slice_patch = _preprocessing(plans, template, parent_view, values, slice_axis)
    base_patch = _base_patch(template, parent_view, whole_slice_patch, values, effective_arch, rule_values)
    patch = _apply_patch_rules(template, base_patch, values["patch_size"], effective_arch, rule_values, slice_axis)
    config: dict[str, Any] = {"inherits_from": template.parent, "patch_size": patch, **preprocessing}
    config.update(_batch_entries(parent, values))
    if architecture is not None:
        config["architecture"] = architecture
    config.update(options)
    config[METADATA_KEY] = {"template": template.name, "trainer": template.trainer, "set": sorted(overrides)}
    return config


def _parent_configuration(plans: dict, template: Template) -> dict:
    """The template's parent configuration, resolved through its ``inherits_from``; a user error when the plans
    file lacks it (a 2D-only dataset is named as such)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    configurations = plans.get("configurations", {})
    if template.parent not in configurations and "2d" in configurations and "3d_fullres" not in configurations:
        raise UserInputError(
            f"{plans.get('dataset_name', 'This dataset')} is 2D: nnU-Net planned only its '2d' configuration, and "
            f"template '{template.name}' is a 3D network. Train it with stock nnU-Net's 2d configuration instead."
        )
    if template.parent not in configurations:
        raise UserInputError(
            f"Parent configuration '{template.parent}' is not in the plans file (it has: "
            f"{', '.join(configurations)}). Run nnUNetv2_plan_and_preprocess with -c {template.parent} first."
        )
    return PlansManager(copy.deepcopy(plans)).get_configuration(template.parent).configuration


def _architecture_block(template: Template, arch_overrides: dict) -> dict | None:
    """The ``architecture`` entry of the template's network with its and the user's arch_kwargs; None when the
    trainer trains the parent's network."""
    if template.network_class_name is None:
        return None
    return {
        "network_class_name": template.network_class_name,
        "arch_kwargs": {**template.arch_kwargs, **arch_overrides},
        "_kw_requires_import": [],
    }


def _set_slice_axis(plans: dict, template: Template, architecture: dict | None) -> int:
    """The patch axis the patch rules and the whole-slice view treat as the slice axis.

    For a network with a ``slice_axis`` option it is written into ``arch_kwargs`` (unless given) as the axis that
    holds the raw image's axis 0 after the plans' ``transpose_forward``; otherwise patch axis 0.
    """
    if architecture is None or "slice_axis" not in template.network_options():
        return 0
    kwargs = architecture["arch_kwargs"]
    kwargs.setdefault("slice_axis", slice_axis_from_transpose(plans.get("transpose_forward", [0, 1, 2])))
    return kwargs["slice_axis"]


def _network_values(template: Template, architecture: dict | None) -> dict[str, Any]:
    """Effective value of every network option, checked by the network's own plans-time check."""
    stored = architecture["arch_kwargs"] if architecture is not None else {}
    values = {k: v.value for k, v in resolve_options(template.network_options(), stored, "").items()}
    check_network_options(architecture, values)
    return values


def _check_whole_slice_multiple(
    template: Template, parent: dict, architecture: dict | None, rule_values: dict, inplane_size: int | None
) -> None:
    """A whole-slice view (``inplane_size``) must be a multiple of the in-plane multiple of the patch rules."""
    if inplane_size is None or len(parent["patch_size"]) != 3:  # 2D parents: whole_slice_geometry refuses
        return
    in_plane = patch_multiples(template.patch, 3, architecture, rule_values)[1:]
    reason = f"the in-plane multiple of template {template.name}'s patch rules {json.dumps(template.patch)}"
    if "encoder" in rule_values:
        reason += f" with encoder {rule_values['encoder']}"
    check_inplane_multiple(inplane_size, math.lcm(*in_plane), reason)


def _canonical(values: list, slice_axis: int) -> list:
    """Per-axis values of a 3D patch in [slice axis, in-plane, in-plane] order (2D ones unchanged)."""
    return to_canonical(values, slice_axis) if len(values) == 3 else list(values)


def _nnunet_order(values: list, slice_axis: int) -> list:
    """Per-axis values of a 3D patch back in nnU-Net's axis order (2D ones unchanged)."""
    return from_canonical(values, slice_axis) if len(values) == 3 else list(values)


def _canonical_geometry(parent: dict, slice_axis: int) -> dict:
    """The parent configuration with its spacing, median shape and patch in [slice axis, in-plane, in-plane] order."""
    geometry_keys = ("spacing", "median_image_size_in_voxels", "patch_size")
    return {**parent, **{k: _canonical(parent[k], slice_axis) for k in geometry_keys}}


def _preprocessing(
    plans: dict, template: Template, parent_view: dict, values: dict, slice_axis: int
) -> tuple[dict, list[int] | None]:
    """Configuration entries of the preprocessing keys (spacing in nnU-Net's order) and the whole-slice patch
    (canonical order; None without ``inplane_size``)."""
    entries, whole_slice_patch = preprocessing_entries(
        parent_view,
        plans.get("plans_name", "nnUNetPlans"),
        template.parent,
        values["intensity"],
        values["inplane_size"],
        values["max_depth"],
    )
    if "spacing" in entries:
        entries["spacing"] = _nnunet_order(entries["spacing"], slice_axis)
    return entries, whole_slice_patch


def _base_patch(
    template: Template,
    parent_view: dict,
    whole_slice_patch: list[int] | None,
    values: dict,
    architecture: dict | None,
    rule_values: dict,
) -> list[int]:
    """The patch before the patch rules (canonical order): the whole-slice patch, else the parent's; with
    ``global_patch`` the parent's median image rounded up to the rules' multiples."""
    base_patch = whole_slice_patch or parent_view["patch_size"]
    if not values["global_patch"]:
        return base_patch
    multiples = patch_multiples(template.patch, len(base_patch), architecture, rule_values)
    return global_patch_size(parent_view["median_image_size_in_voxels"], multiples)


def _apply_patch_rules(
    template: Template,
    base_patch: list[int],
    user_patch: list[int] | None,
    architecture: dict | None,
    rule_values: dict,
    slice_axis: int,
) -> list[int]:
    """The configuration's patch in nnU-Net's order: the base patch snapped to the template's patch rules, or the
    user's ``patch_size`` when it meets them (else a user error with the nearest valid patch)."""
    user_canonical = None if user_patch is None else _canonical(user_patch, slice_axis)
    patch = _nnunet_order(
        resolve_patch(
            template.patch,
            user_canonical or base_patch,
            architecture,
            rule_values,
            user_given=user_canonical is not None and slice_axis == 0,
        ),
        slice_axis,
    )
    if user_canonical is not None and patch != _nnunet_order(user_canonical, slice_axis):
        raise UserInputError(
            f"patch_size {_nnunet_order(user_canonical, slice_axis)} breaks the template's patch rules "
            f"{json.dumps(template.patch)}, which apply to [slice axis, in-plane, in-plane] (slice_axis {slice_axis}). "
            f"Nearest valid patch: {patch}; use --set patch_size={json.dumps(patch).replace(' ', '')}."
        )
    return patch


def _batch_entries(parent: dict, values: dict) -> dict[str, Any]:
    """``batch_size`` (the parent's when null) and ``batch_dice`` (omitted when null: inherited from the parent)."""
    entries: dict[str, Any] = {
        "batch_size": values["batch_size"] if values["batch_size"] is not None else parent["batch_size"]
    }
    if values["batch_dice"] is not None:
        entries["batch_dice"] = values["batch_dice"]
    return entries


def check_network_options(architecture: dict | None, values: dict) -> None:
    """A network's own plans-time check (its ``fm_check_options(values)``, if it has one) as a user error."""
    network_class = None if architecture is None else network_class_of(architecture["network_class_name"])
    check = getattr(network_class, "fm_check_options", None)
    if check is None:
        return
    try:
        check(values)
    except ValueError as exc:
        raise UserInputError(f"{exc} (plans add: nothing was written)") from exc


def check_buildable(plans: dict, name: str, config: dict, dataset_json: Path) -> None:
    """The network builds from the configuration's options and its ``encoder_weights`` can be loaded (user errors)."""
    from nnunet_fm.plans_checks import build_on_meta, check_encoder_weights

    meta = json.loads(dataset_json.read_text()) if dataset_json.is_file() else None
    network = build_on_meta(plans, name, config, meta)
    check_encoder_weights(config.get("encoder_weights"), network)


def read_plans(path: Path) -> dict:
    """A plans file's content, or a clear error when it is not valid JSON."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserInputError(f"Plans file {path} is not valid JSON ({exc}); restore it from a .bak file.") from exc


def add_configuration(
    dataset: str | int,
    template_name: str,
    name: str | None = None,
    plans_id: str = "nnUNetPlans",
    overrides: dict[str, Any] | None = None,
    force: bool = False,
    gpu_memory: float | None = None,
) -> AddResult:
    """Add (or replace) a template configuration in a plans file; locked, atomic, with a backup.

    Replacing a configuration the plugin did not write (e.g. nnU-Net's ``2d``) needs ``force``. The
    configuration's training memory is estimated (:mod:`nnunet_fm.memory_plan`); with ``gpu_memory`` (GB) the
    crop depth, then the batch, are reduced until the estimate fits.
    """
    template = load_template(template_name)
    path = plans_path(dataset, plans_id)
    config_name = name or template.configuration
    if config_name == template.parent:
        raise UserInputError(f"--name must differ from the parent configuration '{template.parent}'.")
    with file_lock(path):  # read-modify-write under a lock: concurrent adds must not lose each other's work
        plans = read_plans(path)
        existing = plans["configurations"].get(config_name)
        if existing is not None and METADATA_KEY not in existing and not force:
            raise UserInputError(
                f"Configuration '{config_name}' already exists in {path} and was not written by nnunet-fm; "
                "choose another --name, or pass --force to replace it (a backup is kept)."
            )
        config = build_configuration(plans, template, overrides or {})
        check_buildable(plans, config_name, config, path.parent / "dataset.json")
        memory = fit_memory(plans, config_name, config, path.parent, gpu_memory)
        plans["configurations"][config_name] = config
        backup = backup_file(path)
        atomic_write_json(path, plans)
    warnings = configuration_warnings(dataset_name(dataset), template, config)
    memory_lines = []
    if memory is not None:
        warnings += memory.warnings
        memory_lines = [*memory.notes, memory.estimate.summary()]
    preprocess = None
    if "data_identifier" in config and not (path.parent / config["data_identifier"]).is_dir():
        preprocess = f"nnUNetv2_preprocess -d {dataset_name(dataset)} -plans_name {plans_id} -c {config_name}"
    return AddResult(
        path,
        backup,
        config_name,
        template.trainer,
        config["patch_size"],
        config["batch_size"],
        warnings,
        preprocess,
        memory_lines,
    )


def fit_memory(plans: dict, name: str, config: dict, dataset_folder: Path, gpu_memory: float | None):
    """Estimate ``config``'s memory and, with ``gpu_memory``, shrink its crop depth then batch to fit (in place)."""
    from nnunet_fm.memory_plan import plan_memory

    if gpu_memory is not None and not gpu_memory > 0:
        raise UserInputError(f"--gpu-memory {gpu_memory:g} is not valid: give the GPU's memory in GB, e.g. 16.")
    dataset_json = dataset_folder / "dataset.json"
    meta = json.loads(dataset_json.read_text()) if dataset_json.is_file() else None
    memory = plan_memory(plans, name, config, meta, dataset_folder, gpu_memory)
    if memory is not None:
        config["patch_size"], config["batch_size"] = memory.patch, memory.batch_size
    return memory


def configuration_warnings(dataset: str, template: Template, config: dict) -> list[str]:
    """Things that are legal but almost always a mistake, told once when the configuration is written."""
    nnUNet_raw = os.environ.get("nnUNet_raw")
    warnings = []
    preprocessed = Path(os.environ.get("nnUNet_preprocessed", "")) / dataset / "dataset.json"
    if preprocessed.is_file():
        note = few_case_note(int(json.loads(preprocessed.read_text()).get("numTraining", NNUNET_FOLDS)))
        if note:
            warnings.append(note)
    few_shot_k = config.get("few_shot_k", template.trainer_options()["few_shot_k"].default)
    if few_shot_k is not None and nnUNet_raw and (Path(nnUNet_raw) / dataset / MANIFEST_NAME).is_file():
        warnings.append(
            f"{dataset} is pseudo-labelled, but few_shot_k={few_shot_k} trains on only {few_shot_k} of its cases; "
            "add --set few_shot_k=null to use every labelled and pseudo-labelled case."
        )
    return warnings


def show_configuration(
    dataset: str | int, configuration: str, plans_id: str = "nnUNetPlans", trainer: str | None = None
) -> str:
    """Effective value of every option a plugin configuration's trainer and network read, and its source."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    path = plans_path(dataset, plans_id)
    plans = read_plans(path)
    if configuration not in plans["configurations"]:
        raise UserInputError(
            f"{path} has no configuration '{configuration}' (it has: {', '.join(plans['configurations'])})."
        )
    resolved = PlansManager(plans).get_configuration(configuration).configuration
    metadata = plans["configurations"][configuration].get(METADATA_KEY) or resolved.get(METADATA_KEY) or {}
    trainer = trainer or metadata.get("trainer")
    if trainer is None:
        raise UserInputError(
            f"Configuration '{configuration}' was not written by `nnunet-fm plans add`; name the trainer with -tr."
        )
    template = load_template(metadata["template"]) if metadata.get("template") else None
    user_keys = set(metadata.get("set", []))

    def source(name: str, default_source: str) -> str:
        if name in user_keys:
            return "plans (--set)"
        if template is not None and (name in template.options or name in template.arch_kwargs):
            return f"plans (template {template.name})"
        return default_source

    trainer_cls = trainer_class(trainer)
    lines = [f"{dataset_name(dataset)} / {configuration} ({path})", f"  trainer {trainer}:"]
    trainer_effective = resolve_options(declared_options(trainer_cls), resolved, trainer, fixed_options(trainer_cls))
    lines += format_options(
        trainer_effective, {k: source(k, e.source) for k, e in trainer_effective.items() if e.source == "plans"}
    )
    architecture = resolved.get("architecture") or {}
    network_name = architecture.get("network_class_name", "")
    slice_axis = None
    if network_name.startswith("nnunet_fm."):
        network = network_class_of(network_name)
        effective = resolve_options(network_options(network), architecture.get("arch_kwargs", {}), network.__name__)
        slice_axis = effective["slice_axis"].value if "slice_axis" in effective else None
        lines.append(f"  network {network_name} (architecture.arch_kwargs):")
        lines += format_options(
            effective, {k: source(k, e.source) for k, e in effective.items() if e.source == "plans"}
        )
    else:
        lines.append(f"  network {network_name or '?'} (nnU-Net's; see its arch_kwargs in the plans file)")
    lines.append(f"  patch_size {resolved['patch_size']}, batch_size {resolved['batch_size']}")
    own = plans["configurations"][configuration]
    if "batch_dice" in user_keys:
        dice_source = "plans (--set)"
    elif "batch_dice" in own:
        dice_source = f"plans (template {template.name})" if template is not None else "plans"
    else:
        dice_source = f"inherited from {own.get('inherits_from', 'the parent')}"
    mode = "Dice pooled over the batch" if resolved.get("batch_dice") else "Dice per sample"
    lines.append(f"  batch_dice {json.dumps(resolved.get('batch_dice'))} ({mode})  [{dice_source}]")
    transpose = plans.get("transpose_forward", [0, 1, 2])
    lines.append("  " + slicing_summary(transpose, slice_axis))
    oversample = trainer_effective.get("oversample_foreground_percent")
    if oversample is not None:
        lines.append(f"  foreground oversampling {oversample.value} of each batch ({oversample.source})")
    memory = fit_memory(plans, configuration, plans["configurations"][configuration], path.parent, None)
    if memory is not None:
        lines.append("  " + memory.estimate.summary())
    return "\n".join(lines)


def slicing_summary(transpose_forward: list[int], slice_axis: int | None) -> str:
    """Which raw-image axis the configuration's 2D encoder slices (its network's effective ``slice_axis``), or,
    for a network without one (``None``), the axis its per-slice rules use."""
    order = [int(a) for a in transpose_forward]
    if slice_axis is not None:
        axis = int(slice_axis)
        raw = order[axis]
        kind = "axial slices" if raw == 0 else "NOT the axial slices (raw axis 0); re-run plans add to fix"
        return (
            f"slices: patch axis {axis} = raw image axis {raw} ({kind}; transpose_forward {order}); the 2D encoder "
            "and the per-slice loss mask run along it"
        )
    axis = order.index(0)
    return f"slices: per-slice loss mask along patch axis {axis} = raw image axis 0 (transpose_forward {order})"
