"""The training loader of the Mean Teacher hook: fixed labelled/unlabelled split of each batch.

Every training batch holds ``unlabelled_fraction`` of its patches from unlabelled (all-ignore) cases first and
then the labelled patches, which nnU-Net's foreground oversampling treats as it treats a batch of their size
(:class:`MeanTeacherDataLoader`; SSL4MIS's ``TwoStreamBatchSampler`` fixes the split the same way, ``HiLab-git/SSL4MIS``
at 06df604, ``code/train_mean_teacher_3D.py`` l. 51: ``labeled_bs`` 2 of a batch of 4).
:func:`training_loader_override` makes nnU-Net's ``get_dataloaders`` build it for the training set.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader


def labelled_samples(target: torch.Tensor, ignore_label: int | None) -> torch.Tensor:
    """Boolean per sample of a (B, 1, ...) target: does it hold any voxel that is not ``ignore_label``."""
    if ignore_label is None:
        return torch.ones(target.shape[0], dtype=torch.bool, device=target.device)
    return (target != ignore_label).flatten(1).any(1)


def labelled_batch_size(batch_size: int, fraction: float, on_top: bool) -> int:
    """Labelled patches per batch: the plans' batch when unlabelled ones go on top, else the rest of the batch."""
    if on_top and fraction < 1:
        return batch_size
    return batch_size - round(batch_size * fraction)


class MeanTeacherDataLoader(nnUNetDataLoader):
    """nnU-Net's training loader with a fixed split: the patches of unlabelled cases first, then
    ``labelled_batch_size`` patches of labelled cases.

    Foreground oversampling applies to the labelled part exactly as nnU-Net applies it to a batch of that size
    (oversampling an all-ignore case would only crop it at random). With nnU-Net's independent draws the split is
    binomial and the oversampled last slot lands on an unlabelled patch half of the time, halving the labelled
    foreground-centred patches (its effect on the demo data: BENCHMARKS.md, "Four Mean Teacher defects the
    measurement found"). SSL4MIS fixes the split the same way (``TwoStreamBatchSampler``).
    """

    def __init__(
        self,
        data,
        batch_size: int,
        *args,
        labelled: list[str],
        unlabelled: list[str],
        labelled_batch_size: int,
        **kwargs,
    ) -> None:
        super().__init__(data, batch_size, *args, **kwargs)
        self.labelled, self.unlabelled = list(labelled), list(unlabelled)
        if not self.unlabelled:
            labelled_batch_size = batch_size
        elif not self.labelled:
            labelled_batch_size = 0
        self.labelled_batch_size = min(labelled_batch_size, batch_size)
        self.unlabelled_batch_size = batch_size - self.labelled_batch_size

    def get_indices(self) -> list[str]:
        return [
            *np.random.choice(self.unlabelled, self.unlabelled_batch_size, replace=True),
            *np.random.choice(self.labelled, self.labelled_batch_size, replace=True),
        ]

    def _oversample_last_XX_percent(self, sample_idx: int) -> bool:
        j = sample_idx - self.unlabelled_batch_size
        return j >= 0 and not j < round(self.labelled_batch_size * (1 - self.oversample_foreground_percent))

    def _probabilistic_oversampling(self, sample_idx: int) -> bool:
        return sample_idx >= self.unlabelled_batch_size and super()._probabilistic_oversampling(sample_idx)


@contextlib.contextmanager
def training_loader_override(choose: Callable[[object], Callable | None]) -> Iterator[None]:
    """Within the block, nnU-Net builds the loader of a dataset with ``choose(dataset)`` when that is not None.

    nnU-Net 2.8.1 constructs its loaders inline in ``nnUNetTrainer.get_dataloaders``, so the name it looks up is
    swapped for the duration of that one call and restored after it.
    """
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as trainer_module

    stock = trainer_module.nnUNetDataLoader

    def loader(data, *args, **kwargs):
        return (choose(data) or stock)(data, *args, **kwargs)

    trainer_module.nnUNetDataLoader = loader
    try:
        yield
    finally:
        trainer_module.nnUNetDataLoader = stock
