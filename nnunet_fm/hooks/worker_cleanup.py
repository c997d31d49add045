"""Stop the data-augmentation workers when ``nnUNetv2_train`` of a plugin trainer gets SIGTERM.

nnU-Net 2.8.1 stops its augmenters only in ``on_train_end`` (``nnUNetTrainer.py`` l. 998-1003). SIGTERM's default
action ends the main process at once, without ``finally`` blocks or ``atexit``, so the daemon worker processes of
batchgenerators' ``NonDetMultiThreadedAugmenter`` (``nondet_multi_threaded_augmenter.py`` l. 238-242) are never
joined and live on as orphans: this is stock nnU-Net's behaviour. Plugin trainers turn SIGTERM into an orderly
exit: the workers are finished (``_finish``) and the process exits with 143 (128 + SIGTERM), as a killed one
would report.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from nnunet_fm.hooks.extension_points import Contribution, ExtensionPointsMixin


def _augmenter(loader: Any) -> Any:
    """The batchgenerators augmenter behind ``loader`` (plugin wrappers keep it as ``inner``), or None."""
    while loader is not None and not hasattr(loader, "_finish"):
        loader = getattr(loader, "inner", None)
    return loader


class WorkerCleanupMixin(ExtensionPointsMixin):
    """SIGTERM during training finishes the training and validation augmenters, then exits with 143."""

    fm_contributions = (Contribution("start", "fm_install_sigterm_handler", order=40),)

    def fm_install_sigterm_handler(self) -> None:
        """From the start of training on, SIGTERM stops the workers (restored in ``on_train_end``)."""
        self._fm_previous_sigterm = None
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._fm_previous_sigterm = signal.signal(signal.SIGTERM, self._fm_on_sigterm)

    def fm_stop_workers(self) -> None:
        """Finish every augmenter this trainer started (idempotent)."""
        for name in ("dataloader_train", "dataloader_val"):
            augmenter = _augmenter(getattr(self, name, None))
            if augmenter is not None:
                augmenter._finish()

    def _fm_on_sigterm(self, signum, frame) -> None:
        self.print_to_log_file("SIGTERM: stopping the data-augmentation workers and exiting (143)")
        self.fm_stop_workers()
        raise SystemExit(128 + signum)

    def on_train_end(self):
        try:
            super().on_train_end()
        finally:
            previous = getattr(self, "_fm_previous_sigterm", None)
            if previous is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, previous)
