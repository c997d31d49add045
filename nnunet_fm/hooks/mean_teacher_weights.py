"""Teacher/student weights of Mean Teacher checkpoints: which set ``network_weights`` holds.

A checkpoint of ``ssl: mean_teacher`` keeps nnU-Net's format with the weights prediction uses in
``network_weights`` (what stock ``nnUNetv2_predict`` loads) and the other set plus the EMA step under
``fm_mean_teacher`` (:data:`CHECKPOINT_KEY`). :func:`switch_checkpoint_weights` and :func:`switch_model_weights`
(``nnunet-fm predict-with``) swap the two sets in place, keeping every key a parameter has in the network's
``state_dict``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nnunet_fm.atomic_io import atomic_torch_save
from nnunet_fm.errors import UserInputError

CHECKPOINT_KEY = "fm_mean_teacher"

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth")


def _where(tensor: torch.Tensor) -> tuple:
    """Equal for two tensors exactly when they are views of the same memory with the same shape."""
    return tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.shape


def to_cpu_keeping_aliases(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` on the CPU, keys that share a tensor on the device sharing one CPU copy (saved once)."""
    copies: dict[tuple, torch.Tensor] = {}
    result = {}
    for key, tensor in state.items():
        where = _where(tensor)
        if where not in copies:
            copies[where] = tensor.cpu()
        result[key] = copies[where]
    return result


def switch_checkpoint_weights(checkpoint_file: str | Path, use: str) -> bool:
    """Make ``network_weights`` of a Mean Teacher checkpoint hold the ``use`` ('teacher'/'student') weights.

    The other set moves to ``fm_mean_teacher`` (nothing is lost, so switching back restores the file's weights);
    written atomically. Returns whether the file changed.
    """
    if use not in ("teacher", "student"):
        raise UserInputError(f"use={use!r}: expected 'teacher' or 'student'.")
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    saved = checkpoint.get(CHECKPOINT_KEY)
    if saved is None:
        raise UserInputError(
            f"{checkpoint_file} was not trained with ssl=mean_teacher (no teacher/student pair in it); "
            "its network_weights are the only weights it has."
        )
    if saved["network_weights_are"] == use:
        return False
    weights, other = checkpoint["network_weights"], saved["other_trainable"]
    for key, tensor in other.items():
        other[key], weights[key] = weights[key], tensor
    saved["network_weights_are"] = use
    atomic_torch_save(checkpoint, checkpoint_file)
    return True


def switch_model_weights(model_folder: str | Path, folds: list[str], use: str) -> list[Path]:
    """:func:`switch_checkpoint_weights` on every checkpoint of ``folds``; returns the files that changed."""
    model_folder = Path(model_folder)
    fold_folders = [model_folder / f"fold_{fold}" for fold in folds]
    missing = [f for f in fold_folders if not any((f / n).is_file() for n in CHECKPOINT_NAMES)]
    if missing:
        raise UserInputError(
            f"No checkpoint in {missing[0]}; give a trained model folder (-m, or -d -c -tr) and its folds (-f)."
        )
    files = [f / n for f in fold_folders for n in CHECKPOINT_NAMES if (f / n).is_file()]
    for file in files:  # check every file before changing any
        if CHECKPOINT_KEY not in torch.load(file, map_location="cpu", weights_only=False):
            raise UserInputError(
                f"{file} was not trained with ssl=mean_teacher: it holds one set of weights, which nnUNetv2_predict "
                "already uses; nothing changed."
            )
    return [file for file in files if switch_checkpoint_weights(file, use)]
