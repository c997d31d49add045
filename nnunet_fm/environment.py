"""Where the plugin's trainer shims live, and the environment lines nnU-Net needs to find them."""

from __future__ import annotations

import os
from pathlib import Path

NNUNET_PATH_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
EXT_TRAINER_VARIABLE = "nnUNet_extTrainer"


def shim_folder() -> Path:
    """The folder holding only flat shim modules that re-export the plugin's trainers."""
    return Path(__file__).resolve().parent / "ext_trainers"


def plugin_env(base: dict[str, str] | None = None, extra_trainer_folders: list[str] | None = None) -> dict:
    """A copy of ``base`` (default: os.environ) whose ``nnUNet_extTrainer`` starts with the plugin's shims.

    Extra folders (e.g. a user's or the tests' own trainers) follow, then entries that were already set.
    """
    env = dict(os.environ if base is None else base)
    entries = [str(shim_folder()), *(extra_trainer_folders or [])]
    existing = env.get(EXT_TRAINER_VARIABLE, "").split(os.pathsep)
    entries += [p for p in existing if p.strip() and p not in entries]
    env[EXT_TRAINER_VARIABLE] = os.pathsep.join(entries)
    return env


def env_lines() -> list[str]:
    """Shell lines a user pastes into their profile to use the plugin with nnU-Net."""
    lines = [f"export {EXT_TRAINER_VARIABLE}={plugin_env()[EXT_TRAINER_VARIABLE]}"]
    for name in NNUNET_PATH_VARIABLES:
        current = os.environ.get(name)
        # an unset path stays a comment: `eval "$(nnunet-fm env)"` must not export a placeholder
        lines.append(f"export {name}={current}" if current else f"# export {name}=/path/to/{name}  # not set yet")
    return lines


def default_device() -> str:
    """The one ``--device`` default of every plugin command: cuda when available, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
