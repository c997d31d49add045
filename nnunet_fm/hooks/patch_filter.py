"""Re-draw training patches whose foreground fraction is below ``min_fg_frac`` (bounded retries)."""

from __future__ import annotations

import torch

from nnunet_fm.hooks.loss import foreground_mask
from nnunet_fm.options import Option


def foreground_fraction(target: torch.Tensor, ignore_label: int | None) -> torch.Tensor:
    """Per-sample fraction of foreground voxels in a label batch [B, 1, ...]."""
    return foreground_mask(target, ignore_label).flatten(1).float().mean(1)


class ForegroundFilteredBatches:
    """Wraps nnU-Net's batch generator; replaces low-foreground samples with samples of later batches."""

    def __init__(self, batches, min_fg_frac: float, max_retries: int, ignore_label: int | None):
        self.inner = batches
        self.min_fg_frac = min_fg_frac
        self.max_retries = max_retries
        self.ignore_label = ignore_label

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self.inner)
        for _ in range(self.max_retries):
            low = foreground_fraction(_first(batch["target"]), self.ignore_label) < self.min_fg_frac
            if not low.any():
                break
            fresh = next(self.inner)
            fresh_ok = foreground_fraction(_first(fresh["target"]), self.ignore_label) >= self.min_fg_frac
            for slot, source in zip(low.nonzero().flatten().tolist(), fresh_ok.nonzero().flatten().tolist()):
                _copy_sample(batch, fresh, slot, source)
        return batch

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _first(target):
    return target[0] if isinstance(target, list) else target


def _copy_sample(batch: dict, fresh: dict, slot: int, source: int) -> None:
    batch["data"][slot] = fresh["data"][source]
    targets = batch["target"] if isinstance(batch["target"], list) else [batch["target"]]
    fresh_targets = fresh["target"] if isinstance(fresh["target"], list) else [fresh["target"]]
    for dst, src in zip(targets, fresh_targets):
        dst[slot] = src[source]
    batch["keys"][slot] = fresh["keys"][source]


class ForegroundFilterMixin:
    """Applies ``min_fg_frac`` to the training batches (validation batches are left as drawn)."""

    fm_options = (
        Option(
            "min_fg_frac",
            0.0,
            "Re-draw training patches whose foreground fraction is below this (bounded retries).",
            "float",
            minimum=0.0,
            maximum=1.0,
        ),
        Option("min_fg_retries", 10, "Maximum re-draws per batch for min_fg_frac.", "int", minimum=0),
    )

    def get_dataloaders(self):
        train, val = super().get_dataloaders()
        threshold = float(self.fm_option("min_fg_frac"))
        if threshold > 0:
            retries = int(self.fm_option("min_fg_retries"))
            train = ForegroundFilteredBatches(train, threshold, retries, self.label_manager.ignore_label)
        return train, val

    def on_train_end(self):
        if isinstance(self.dataloader_train, ForegroundFilteredBatches):
            self.dataloader_train = self.dataloader_train.inner  # so nnU-Net shuts its workers down
        super().on_train_end()
