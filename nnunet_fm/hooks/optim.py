"""AdamW over trainable parameters with linear warmup then cosine decay (stepped per epoch, as nnU-Net does)."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler

from nnunet_fm.options import Option


def warmup_cosine_lr(epoch: int, peak_lr: float, warmup: int, total: int, min_lr: float = 0.0) -> float:
    """Learning rate at ``epoch``: linear warmup to ``peak_lr`` over ``warmup`` epochs, then cosine to ``min_lr``."""
    if epoch < warmup:
        return peak_lr * (epoch + 1) / warmup
    progress = (epoch - warmup) / max(1, total - warmup)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


class WarmupCosineLR(LRScheduler):
    """``step(epoch)`` sets the learning rate of every param group to ``warmup_cosine_lr(epoch, ...)``."""

    def __init__(self, optimizer: torch.optim.Optimizer, peak_lr: float, warmup: int, total: int, min_lr: float = 0.0):
        self.peak_lr, self.warmup, self.total, self.min_lr = peak_lr, warmup, total, min_lr
        super().__init__(optimizer, -1)

    def get_lr(self) -> list[float]:
        return [warmup_cosine_lr(max(self.last_epoch, 0), self.peak_lr, self.warmup, self.total, self.min_lr)] * len(
            self.optimizer.param_groups
        )

    def step(self, epoch: int | None = None) -> None:
        self.last_epoch = self.last_epoch + 1 if epoch is None else epoch
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = self.get_lr()


class AdamWWarmupCosineMixin:
    """``configure_optimizers``: AdamW on parameters that require grad; frozen encoders are left out."""

    fm_options = (
        Option("initial_lr", 5e-3, "Peak learning rate of AdamW (after warmup).", "float", minimum=0.0),
        Option("weight_decay", 0.05, "AdamW weight decay.", "float", minimum=0.0),
        Option(
            "warmup_epochs",
            50,
            "Linear warmup epochs before cosine decay (at most num_epochs // 10).",
            "int",
            minimum=0,
        ),
        Option(
            "min_lr",
            0.0,
            "Learning rate the cosine decay ends at (vesselbridge3d: 0, its lr_lambda ignores the yaml's min_lr).",
            "float",
            minimum=0.0,
        ),
    )

    def configure_optimizers(self):
        self.initial_lr = float(self.fm_option("initial_lr"))
        self.weight_decay = float(self.fm_option("weight_decay"))
        trainable = [p for p in self.network.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=self.initial_lr, weight_decay=self.weight_decay)
        warmup = min(int(self.fm_option("warmup_epochs")), self.num_epochs // 10)
        min_lr = float(self.fm_option("min_lr"))
        if min_lr > self.initial_lr:
            from nnunet_fm.errors import UserInputError

            raise UserInputError(
                f"min_lr={min_lr} is above initial_lr={self.initial_lr}; the cosine decay must end below its peak. "
                "Lower min_lr with `nnunet-fm plans add ... --set min_lr=...`."
            )
        return optimizer, WarmupCosineLR(optimizer, self.initial_lr, warmup, self.num_epochs, min_lr)
