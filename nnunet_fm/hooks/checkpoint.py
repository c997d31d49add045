"""Checkpoints written atomically: a kill mid-write keeps the previous file instead of a truncated one."""

from __future__ import annotations

import os


class AtomicCheckpointMixin:
    """nnU-Net's ``save_checkpoint`` into ``<name>.partial``, renamed onto ``<name>`` when complete.

    Stock nnU-Net ``torch.save``s straight onto ``checkpoint_latest.pth``; a ``kill -9`` during that write left a
    truncated file and ``nnUNetv2_train --c`` failed with ``EOFError`` (``tests/test_resume.py``).
    """

    def save_checkpoint(self, filename: str) -> None:
        partial = f"{filename}.partial"
        super().save_checkpoint(partial)
        if os.path.isfile(partial):  # not written on other DDP ranks or with checkpointing disabled
            os.replace(partial, filename)
