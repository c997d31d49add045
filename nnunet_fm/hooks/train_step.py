"""Training step with configurable autocast dtype and gradient clipping, and a loss/backward hook."""

from __future__ import annotations

import contextlib

import torch

from nnunet_fm.hooks.extension_points import Contribution, ExtensionPointsMixin
from nnunet_fm.network_interfaces import unwrap
from nnunet_fm.options import Option
from nnunet_fm.precision import bf16_supported

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class AmpClipTrainStepMixin(ExtensionPointsMixin):
    """bf16 (or fp16 + grad scaler) autocast on CUDA only; clip at ``grad_clip``.

    On a GPU without bf16 (V100, T4) ``amp_dtype: bfloat16`` falls back, with one printed line, to fp16 autocast
    with nnU-Net's grad scaler and the frozen encoder in fp32 (``nnunet_fm.precision``).

    A hook changes how the loss is computed and back-propagated with a ``train_step`` contribution
    (:mod:`nnunet_fm.hooks.extension_points`); ``after_step`` contributions run after the optimiser step.
    """

    fm_contributions = (Contribution("start", "fm_choose_precision", order=10),)

    fm_options = (
        Option("grad_clip", 1.0, "Gradient-norm clipping threshold (0 = no clipping).", "float", minimum=0.0),
        Option(
            "amp_dtype",
            "bfloat16",
            "Autocast dtype on CUDA (float16 uses nnU-Net's grad scaler). CPU never autocasts.",
            choices=tuple(AMP_DTYPES),
        ),
    )

    def fm_choose_precision(self) -> None:
        """Keep bf16 where the GPU has it, else fall back to fp16 with a grad scaler (start of training)."""
        if self.fm_option("amp_dtype") != "bfloat16":  # validated against the Option's choices
            return
        if bf16_supported(self.device.type):
            self.grad_scaler = None  # bf16 has fp32's exponent range: no loss scaling needed
            return
        # a GPU without bf16 (V100, T4): bf16 autocast would raise at the first step
        encoder = getattr(unwrap(self.network), "encoder", None)
        if getattr(encoder, "amp", False):
            encoder.amp = False  # the frozen encoder in fp32 (its outliers overflow fp16)
        if self.grad_scaler is None:
            self.grad_scaler = torch.GradScaler(self.device.type)
        self.print_to_log_file(
            "This GPU has no bf16 (torch.cuda.is_bf16_supported() is False): training with fp16 autocast and "
            "nnU-Net's grad scaler, the frozen encoder in fp32; --set amp_dtype=float16 chooses this explicitly.",
            also_print_to_console=True,
        )

    def fm_amp_dtype(self) -> torch.dtype:
        """The autocast dtype on CUDA: ``amp_dtype``, or float16 where the GPU has no bf16."""
        dtype = AMP_DTYPES[self.fm_option("amp_dtype")]
        return torch.float16 if dtype == torch.bfloat16 and not bf16_supported(self.device.type) else dtype

    def fm_autocast(self):
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.fm_amp_dtype())

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss

    def forward_backward(self, data: torch.Tensor, target) -> torch.Tensor:
        """Compute the loss and back-propagate it (scaled); returns the unscaled loss."""
        strategy = self.fm_train_step_strategy()
        if strategy is not None:
            return getattr(self, strategy)(data, target)
        with self.fm_autocast():
            loss = self.loss(self.network(data), target)
        self.scale_loss(loss).backward()
        return loss

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = (
            [t.to(self.device, non_blocking=True) for t in target]
            if isinstance(target, list)
            else target.to(self.device, non_blocking=True)
        )
        self.optimizer.zero_grad(set_to_none=True)
        self._fm_batch_keys = batch.get("keys")  # which cases the patches come from (nnU-Net's loader sets it)
        try:
            loss = self.forward_backward(data, target)
        finally:
            self._fm_batch_keys = None
        parameters = [p for p in self.network.parameters() if p.requires_grad]
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
        clip = float(self.fm_option("grad_clip"))
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(parameters, clip)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        self.fm_run("after_step")
        return {"loss": loss.detach().cpu().numpy()}
