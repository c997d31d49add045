"""Checkpoints written once and atomically, with what hooks add to them: a kill mid-write keeps the previous file."""

from __future__ import annotations

from nnunet_fm.atomic_io import atomic_torch_save
from nnunet_fm.hooks.extension_points import contributions
from nnunet_fm.network_interfaces import unwrap


class AtomicCheckpointMixin:
    """nnU-Net's checkpoint dict plus the ``checkpoint`` contributions, saved by one atomic ``torch.save``.

    The dict is nnU-Net 2.8.1's (``nnUNetTrainer.save_checkpoint``, l. 1195-1218: same keys, rank 0 only, nothing
    when checkpointing is disabled). Stock nnU-Net ``torch.save``s straight onto ``checkpoint_latest.pth``; a
    ``kill -9`` during that write left a truncated file and ``nnUNetv2_train --c`` failed with ``EOFError``
    (``tests/test_resume.py``). A ``checkpoint`` contribution (:mod:`nnunet_fm.hooks.extension_points`) gets the
    dict before the write and adds its entries, so a hook's state is written with it, not in a second pass.
    """

    def fm_checkpoint(self) -> dict:
        """The dict nnU-Net's ``save_checkpoint`` writes."""
        return {
            "network_weights": unwrap(self.network).state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
        }

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoint = self.fm_checkpoint()
        for contribution in contributions(type(self), "checkpoint"):
            getattr(self, contribution.method)(checkpoint)
        atomic_torch_save(checkpoint, filename)
