"""``nnunet-fm doctor``: check the installation and print a report with fixes."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

from nnunet_fm import registry
from nnunet_fm.environment import EXT_TRAINER_VARIABLE, NNUNET_PATH_VARIABLES, plugin_env, shim_folder

MIN_NNUNET = (2, 8, 1)


@dataclass
class Check:
    """One line of the report."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def plugin_trainer_names() -> list[str]:
    """Every trainer of the family registry (what the shim exports)."""
    return registry.trainer_names()


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int("".join(ch for ch in part if ch.isdigit()) or 0) for part in text.split(".")[:3])


def check_nnunet_version() -> Check:
    from importlib.metadata import version

    found = version("nnunetv2")
    ok = _version_tuple(found) >= MIN_NNUNET
    return Check("nnunetv2 version", ok, found, "" if ok else "pip install -U 'nnunetv2>=2.8.1'")


def check_env_vars() -> list[Check]:
    checks = []
    for name in NNUNET_PATH_VARIABLES:
        value = os.environ.get(name)
        ok = bool(value) and Path(value).is_dir()
        checks.append(Check(name, ok, value or "not set", "" if ok else f"mkdir -p DIR && export {name}=DIR"))
    ext = os.environ.get(EXT_TRAINER_VARIABLE, "")
    ok = str(shim_folder()) in ext.split(os.pathsep)
    checks.append(
        Check(
            EXT_TRAINER_VARIABLE,
            ok,
            ext or "not set",
            "" if ok else f"export {EXT_TRAINER_VARIABLE}={plugin_env()[EXT_TRAINER_VARIABLE]}",
        )
    )
    return checks


def check_trainers_resolve() -> list[Check]:
    """Resolve every plugin trainer through nnU-Net's own lookup, in this environment as nnUNetv2_train sees it."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    fix = f"export {EXT_TRAINER_VARIABLE}={plugin_env()[EXT_TRAINER_VARIABLE]} (see `nnunet-fm env`)"
    checks = []
    for name in plugin_trainer_names():
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's "not found ... Searching in:" chatter
                cls = recursive_find_trainer_class_by_name(name)
            checks.append(Check(f"trainer {name}", True, f"{cls.__module__}.{cls.__name__}"))
        except Exception as exc:  # report every failure, keep checking the others
            checks.append(Check(f"trainer {name}", False, str(exc).splitlines()[0], fix))
    return checks


def check_networks_import() -> list[Check]:
    """Import every registered family's network class (a broken install fails here, not at training time)."""
    checks = []
    for family in registry.families():
        if family.network is None:
            continue
        try:
            family.network_class()
            checks.append(Check(f"network {family.name}", True, family.network))
        except Exception as exc:  # report every failure, keep checking the others
            error = (f"{type(exc).__name__}: {exc}".splitlines() or [""])[0]
            fix = "install the module the error names, or reinstall nnunet-fm (pip install -e .)"
            checks.append(Check(f"network {family.name}", False, error, fix))
    return checks


#: the frozen encoders' weights fallback (plans key encoder_weights wins per configuration)
ENCODER_WEIGHTS_CHECK = "encoder weights (fallback)"


def check_encoder_weights() -> Check:
    from nnunet_fm.encoders import ENCODER_WEIGHTS_ENV_VAR, resolve_weights_spec

    spec = resolve_weights_spec(None)
    if spec in ("hub", "none"):
        return Check(
            ENCODER_WEIGHTS_CHECK,
            spec == "none",
            f"{ENCODER_WEIGHTS_ENV_VAR} unset -> '{spec}' for configurations without encoder_weights",
            "offline machines: download the encoder's checkpoint (timm, Meta or HF format, e.g. DINOv3 ViT-S/16) and "
            "set it per configuration (`nnunet-fm plans add ... --set encoder_weights=/path/to/file`), or for every "
            f"configuration: export {ENCODER_WEIGHTS_ENV_VAR}=/path/to/file",
        )
    ok = Path(spec).exists()
    return Check(ENCODER_WEIGHTS_CHECK, ok, spec, "" if ok else f"{spec} does not exist; fix {ENCODER_WEIGHTS_ENV_VAR}")


def check_cuda() -> Check:
    import torch

    if torch.cuda.is_available():
        return Check("CUDA", True, torch.cuda.get_device_name(0))
    return Check(
        "CUDA",
        False,
        "no GPU visible: training works with -device cpu but is slow",
        "use a machine with an NVIDIA GPU for real training",
    )


def run_checks() -> list[Check]:
    checks = [check_nnunet_version(), *check_env_vars(), *check_trainers_resolve(), *check_networks_import()]
    try:
        checks.append(check_encoder_weights())
    except ImportError as exc:
        checks.append(Check(ENCODER_WEIGHTS_CHECK, False, f"encoder module unavailable: {exc}"))
    checks.append(check_cuda())
    return checks


def format_report(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"[{'ok' if check.ok else '!!'}] {check.name}: {check.detail}")
        if check.fix and not check.ok:
            lines.append(f"      fix: {check.fix}")
    return "\n".join(lines)
