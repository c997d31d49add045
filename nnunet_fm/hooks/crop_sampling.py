"""Foreground oversampling of training crops as a plans key (nnU-Net hard-codes it in ``__init__``).

nnU-Net 2.8.1 sets ``oversample_foreground_percent = 0.33`` (``nnUNetTrainer.py`` l. 155) and its loader centres
sample ``i`` of a batch of ``B`` on a foreground voxel when ``not i < round(B * (1 - p))``
(``data_loader.py`` l. 72, ``get_do_oversample``): with the plans' batch of 2 that is one patch in two, not a third.
vesselbridge3d draws one uniform random 64-slice crop per volume with no foreground forcing (``train.py``
l. 1163-1165, ``random.randint(0, D_full - crop_depth)``), so its preset uses 0.
"""

from __future__ import annotations

from nnunet_fm.options import Option


class ForegroundOversamplingMixin:
    """Applies ``oversample_foreground_percent`` before nnU-Net derives the per-rank sampling from it."""

    fm_options = (
        Option(
            "oversample_foreground_percent",
            0.33,
            "Share of each batch centred on a foreground voxel (nnU-Net: 0.33, i.e. round(B * 0.67) random "
            "patches first; with B = 2 one patch in two); 0 = uniform random crops (vesselbridge3d).",
            "float",
            minimum=0.0,
            maximum=1.0,
        ),
    )

    def _set_batch_size_and_oversample(self):
        self.oversample_foreground_percent = float(self.fm_option("oversample_foreground_percent"))
        super()._set_batch_size_and_oversample()
