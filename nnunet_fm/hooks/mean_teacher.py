"""Mean Teacher (Tarvainen & Valpola 2017) as a trainer hook: the semi-supervised re-training stage of SFR.

With ``ssl: mean_teacher`` every training patch, labelled or not, gets a consistency loss (mean squared
difference of the softmax maps) between the student on the patch and an EMA teacher on a noised copy of it,
weighted by the sigmoid ramp-up ``consistency_weight * exp(-5 (1 - t)^2)``, ``t = epoch / consistency_rampup_epochs``.
Unlabelled cases are ordinary nnU-Net cases whose label map is all ``ignore`` (``nnunet-fm add-unlabelled``), so
the supervised loss skips them and the data pipeline stays stock; ``unlabelled_fraction`` sets their expected
share of each batch: every training batch holds exactly that many patches of unlabelled cases first and then the
labelled patches, which nnU-Net's foreground oversampling treats as it treats a batch of their size
(:class:`MeanTeacherDataLoader`; SSL4MIS's ``TwoStreamBatchSampler`` fixes the split the same way).

Defaults follow the 3D Mean Teacher of SSL4MIS (``HiLab-git/SSL4MIS`` at 06df604,
``code/train_mean_teacher_3D.py``): EMA decay 0.99 with the true average over the first steps (l. 56, 74),
consistency weight 0.1 (l. 59) ramped up over the whole run (l. 61-62 and 155: 200 "epochs" of 150 iterations
= the 30,000 of ``max_iterations``, l. 38), half of each batch unlabelled and added on top of the labelled
patches (``labeled_bs`` 2 of a batch of 4, l. 51, where the fully supervised script trains with batch 2,
``code/train_fully_supervised_3D.py`` l. 40: ``unlabelled_on_top`` grows nnU-Net's batch to
``batch / (1 - unlabelled_fraction)``, so a step sees as many labelled patches as without Mean Teacher), the
student on the clean patch and the teacher on the patch plus Gaussian noise of std 0.1 clipped to +-0.2
(l. 140-144), and ``nnUNetv2_predict`` uses the student, which SSL4MIS validates and saves (l. 214); ``predict_with:
teacher`` (or ``nnunet-fm predict-with teacher``) predicts with the EMA model, which the original Mean Teacher reports
as the better one after long runs (why not by default: documentation/semi_supervised.md, ``predict_with``).
Deviation, an option: the consistency term covers labelled patches too (SSL4MIS: the unlabelled half only, l. 157),
as the original Mean Teacher does.

The teacher is a dict of EMA tensors of the *trainable* parameters, swapped into the network for a no-grad
pass: frozen encoders are shared, never copied. Checkpoints keep nnU-Net's format with the weights prediction
uses in ``network_weights`` (what stock ``nnUNetv2_predict`` loads) and the other set plus the EMA step under
``fm_mean_teacher``; ``--c`` restores student, teacher and ramp. Under DDP every rank applies the same EMA to
identical (all-reduced) parameters, so the teachers stay identical.

The hook meets the trainer at its extension points (:mod:`nnunet_fm.hooks.extension_points`): the grown batch,
the teacher at the start of training, its own training step and the EMA update after each optimiser step. The
batch split lives in :mod:`nnunet_fm.hooks.mean_teacher_loader`, the teacher/student switch of saved checkpoints in
:mod:`nnunet_fm.hooks.mean_teacher_weights`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from nnunet_fm.hooks.extension_points import Contribution
from nnunet_fm.hooks.mean_teacher_loader import (
    MeanTeacherDataLoader,
    labelled_batch_size,
    labelled_samples,
    training_loader_override,
)
from nnunet_fm.hooks.mean_teacher_weights import CHECKPOINT_KEY, to_cpu_keeping_aliases
from nnunet_fm.options import Option


def ema_alpha(step: int, decay: float) -> float:
    """EMA weight of the teacher at optimiser step ``step`` (0-based): ``min(1 - 1 / (step + 1), decay)``."""
    return min(1.0 - 1.0 / (step + 1), decay)


def rampup_weight(epoch: int, weight: float, rampup_epochs: int) -> float:
    """Sigmoid ramp-up ``weight * exp(-5 (1 - t)^2)`` with ``t = min(epoch / rampup_epochs, 1)``."""
    if rampup_epochs <= 0:
        return weight
    t = min(max(epoch, 0) / rampup_epochs, 1.0)
    return weight * math.exp(-5.0 * (1.0 - t) ** 2)


def consistency_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the two softmax maps (fp32); the teacher side carries no gradient."""
    return F.mse_loss(student_logits.float().softmax(1), teacher_logits.detach().float().softmax(1))


def teacher_view(data: torch.Tensor, std: float) -> torch.Tensor:
    """The teacher's input: ``data`` plus Gaussian noise of std ``std`` clipped to +-2 std (SSL4MIS l. 140-142)."""
    if std <= 0:
        return data
    return data + (std * torch.randn_like(data)).clamp(-2 * std, 2 * std)


def _as_list(x) -> list:
    return x if isinstance(x, list) else [x]


def _rows(x, keep: torch.Tensor):
    """Samples ``keep`` of a tensor or of each tensor of a deep-supervision list."""
    return [t[keep] for t in x] if isinstance(x, list) else x[keep]


class MeanTeacherMixin:
    """Switched on by ``ssl: mean_teacher``; a no-op otherwise. Meets the trainer at its extension points."""

    fm_contributions = (
        Contribution("batch_size", "fm_mean_teacher_batch_size"),
        Contribution("start", "fm_init_teacher", order=30),
        Contribution("train_step", "fm_mean_teacher_step", switch="ssl=mean_teacher"),
        Contribution("after_step", "fm_mean_teacher_after_step"),
        Contribution("unlabelled_cases", "fm_unlabelled_cases"),
        Contribution("checkpoint", "fm_mean_teacher_checkpoint"),
    )

    fm_options = (
        Option("ssl", None, "Semi-supervised method: null or 'mean_teacher'.", choices=(None, "mean_teacher")),
        Option("ema_decay", 0.99, "Mean Teacher: EMA decay of the teacher.", "float", minimum=0.0, maximum=1.0),
        Option("consistency_weight", 0.1, "Mean Teacher: weight of the consistency loss.", "float", minimum=0.0),
        Option(
            "supervised_weight",
            0.5,
            "Mean Teacher: weight of the supervised Dice + CE (SSL4MIS: 0.5 * (Dice + CE)).",
            "float",
            minimum=0.0,
        ),
        Option(
            "consistency_rampup_epochs",
            None,
            "Mean Teacher: epochs of the sigmoid ramp-up (null: the whole run, num_epochs).",
            "int",
            nullable=True,
            minimum=0,
        ),
        Option(
            "unlabelled_fraction",
            0.5,
            "Mean Teacher: share of each batch drawn from unlabelled (all-ignore) cases (rounded to whole patches).",
            "float",
            minimum=0.0,
            maximum=1.0,
        ),
        Option(
            "unlabelled_on_top",
            True,
            "Mean Teacher: grow the batch to batch / (1 - unlabelled_fraction) so that each step keeps the plans' "
            "number of labelled patches (SSL4MIS); false: unlabelled patches replace labelled ones.",
            "bool",
        ),
        Option(
            "consistency_noise",
            0.1,
            "Mean Teacher: std of the Gaussian noise added to the teacher's input (clipped at 2 std).",
            "float",
            minimum=0.0,
        ),
        Option(
            "predict_with",
            "student",
            "Mean Teacher: weights nnUNetv2_predict uses (SSL4MIS keeps the student; the EMA teacher lags in "
            "short runs).",
            choices=("teacher", "student"),
        ),
    )

    # ---- set-up -------------------------------------------------------------------------------------------
    @property
    def fm_ssl(self) -> bool:
        return self.fm_option("ssl") == "mean_teacher"

    def fm_unlabelled_cases(self, keys: list[str]) -> list[str]:
        """Training cases whose label map is all ``ignore`` (only looked for when Mean Teacher is on)."""
        ignore = self.label_manager.ignore_label
        if not self.fm_ssl or ignore is None:
            return []
        cache = self.__dict__.setdefault("_fm_unlabelled_cache", {})
        missing = [k for k in keys if k not in cache]
        if missing:
            dataset = self.dataset_class(self.preprocessed_dataset_folder, missing)
            for k in missing:
                cache[k] = bool((np.asarray(dataset.load_case(k)[1][:]) == ignore).all())
        return [k for k in keys if cache[k]]

    def fm_mean_teacher_batch_size(self, batch_size: int) -> int:
        """The batch grown by the unlabelled patches put on top of the plans' batch (``unlabelled_on_top``)."""
        if not self.fm_ssl:
            return batch_size
        fraction = float(self.fm_option("unlabelled_fraction"))
        self.fm_labelled_batch_size = labelled_batch_size(batch_size, fraction, self.fm_option("unlabelled_on_top"))
        if self.fm_option("unlabelled_on_top") and fraction < 1:
            return max(batch_size, round(batch_size / (1.0 - fraction)))
        return batch_size

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        if self.fm_ssl:
            unlabelled = set(self.fm_unlabelled_cases(list(dataset_tr.identifiers)))
            labelled = [k for k in dataset_tr.identifiers if k not in unlabelled]
            if not unlabelled and self.fm_option("unlabelled_on_top"):
                self.batch_size = self.fm_plans_batch_size  # nothing to put on top
            self._fm_training_cases = (dataset_tr, labelled, sorted(unlabelled))
        return dataset_tr, dataset_val

    def get_dataloaders(self):
        if not self.fm_ssl:
            return super().get_dataloaders()
        self._fm_training_cases = None
        built = []

        def choose(data):
            if self._fm_training_cases is None or data is not self._fm_training_cases[0]:
                return None
            _, labelled, unlabelled = self._fm_training_cases

            def build(*args, **kwargs):
                built.append(
                    MeanTeacherDataLoader(
                        *args,
                        labelled=labelled,
                        unlabelled=unlabelled,
                        labelled_batch_size=self.fm_labelled_batch_size,
                        **kwargs,
                    )
                )
                return built[-1]

            return build

        with training_loader_override(choose):
            loaders = super().get_dataloaders()
        for loader in built:
            self.print_to_log_file(
                f"Mean Teacher: {len(loader.labelled)} labelled + {len(loader.unlabelled)} unlabelled training "
                f"case(s); each batch of {loader.batch_size}: {loader.unlabelled_batch_size} unlabelled + "
                f"{loader.labelled_batch_size} labelled patches"
            )
        return loaders

    def fm_init_teacher(self) -> None:
        """The teacher starts as a copy of the student (unless a resumed checkpoint restored it)."""
        if self.fm_ssl and getattr(self, "_fm_teacher", None) is None:
            self._fm_teacher = {n: p.detach().clone() for n, p in self._fm_trainable().items()}
            self._fm_ema_step = 0

    # ---- training -----------------------------------------------------------------------------------------
    def _fm_trainable(self) -> dict[str, torch.nn.Parameter]:
        from nnunet_fm.network_interfaces import unwrap

        return {n: p for n, p in unwrap(self.network).named_parameters() if p.requires_grad}

    def fm_trainable_state(self) -> dict[str, torch.Tensor]:
        """The network's ``state_dict`` entries of trainable parameters under every name they have.

        Modules reachable by two paths put one parameter under several keys (dynamic-network-architectures'
        ``all_modules.0`` / ``conv``, the decoder's ``encoder``: 4 keys per encoder convolution), while
        ``named_parameters`` names it once; a checkpoint whose keys for one parameter disagree loads whichever
        comes last. Aliases share storage, so saving them costs nothing.
        """
        from nnunet_fm.network_interfaces import unwrap

        trainable = {id(p) for p in self._fm_trainable().values()}
        state = unwrap(self.network).state_dict(keep_vars=True)
        return {k: v.detach() for k, v in state.items() if id(v) in trainable}

    @contextlib.contextmanager
    def fm_teacher_weights(self) -> Iterator[None]:
        """The network with the teacher's parameters (frozen parameters untouched), student restored after."""
        params = self._fm_trainable()
        student = {n: p.data for n, p in params.items()}
        for n, p in params.items():
            p.data = self._fm_teacher[n]
        try:
            yield
        finally:
            for n, p in params.items():
                p.data = student[n]

    def fm_consistency_weight(self) -> float:
        rampup = self.fm_option("consistency_rampup_epochs")
        rampup = self.num_epochs if rampup is None else int(rampup)
        return rampup_weight(self.current_epoch, float(self.fm_option("consistency_weight")), rampup)

    def fm_mean_teacher_step_active(self) -> bool:
        return self.fm_ssl

    def fm_mean_teacher_step(self, data: torch.Tensor, target) -> torch.Tensor:
        """Supervised plus ramped consistency loss, back-propagated (scaled); returns the unscaled loss."""
        supervised, consistency = self.fm_step_losses(data, target)
        # SSL4MIS code/train_mean_teacher_3D.py l. 154-158: 0.5 * (dice + ce) + consistency_weight * consistency
        loss = float(self.fm_option("supervised_weight")) * supervised + self.fm_consistency_weight() * consistency
        self.scale_loss(loss).backward()
        return loss

    def fm_step_losses(self, data: torch.Tensor, target) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's supervised loss and its (unweighted) consistency loss, both with the student's graph."""
        with self.fm_autocast():
            student = self.network(data)
            supervised = self.fm_supervised_loss(student, target)
        # a separate autocast region: autocast caches low-precision copies of parameters per region, and the
        # teacher's weights live in the same Parameter objects, so inside the student's region it would reuse them
        with torch.no_grad(), self.fm_teacher_weights(), self.fm_autocast():
            teacher = self.network(teacher_view(data, float(self.fm_option("consistency_noise"))))
        return supervised, consistency_loss(student, teacher)

    def fm_supervised_loss(self, student, target) -> torch.Tensor:
        """The loss over the patches of labelled cases only (SSL4MIS l. 150-153: ``outputs[:labeled_bs]``).

        nnU-Net's per-sample Dice (``batch_dice`` false for 3d_fullres) scores an all-ignore patch as a constant 1,
        so leaving unlabelled patches in the batch would shrink the labelled patches' Dice gradient by their share.
        """
        keys = getattr(self, "_fm_batch_keys", None)
        unlabelled = getattr(self, "_fm_unlabelled_cache", {})
        if keys is not None and len(keys) == len(_as_list(target)[0]):
            # by case: augmentation pads an all-ignore patch with background at its borders (nnU-Net turns the
            # seg padding value -1 into 0), which a voxel test would take for labels
            labelled = torch.tensor([not unlabelled.get(k, False) for k in keys], device=_as_list(target)[0].device)
        else:
            labelled = labelled_samples(_as_list(target)[0], self.label_manager.ignore_label)
        if bool(labelled.all()):
            return self.loss(student, target)
        if not bool(labelled.any()):
            return sum(o.float().sum() for o in _as_list(student)) * 0.0  # zero, but part of the graph
        return self.loss(_rows(student, labelled), _rows(target, labelled))

    @torch.no_grad()
    def fm_ema_update(self) -> None:
        """Move the teacher towards the student by the step's EMA weight."""
        alpha = ema_alpha(self._fm_ema_step, float(self.fm_option("ema_decay")))
        for n, p in self._fm_trainable().items():
            self._fm_teacher[n].mul_(alpha).add_(p.detach(), alpha=1.0 - alpha)
        self._fm_ema_step += 1

    def fm_mean_teacher_after_step(self) -> None:
        if self.fm_ssl:
            self.fm_ema_update()

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def fm_mean_teacher_checkpoint(self, checkpoint: dict) -> None:
        """``network_weights`` = the weights prediction uses (``predict_with``); the other set and the EMA step
        under ``fm_mean_teacher``, every key of a trainable parameter in both."""
        if not self.fm_ssl or getattr(self, "_fm_teacher", None) is None:
            return
        student = self.fm_trainable_state()
        with self.fm_teacher_weights():
            teacher = self.fm_trainable_state()  # views of the teacher's tensors, written before the next step
        to_teacher = self.fm_option("predict_with") == "teacher"
        if to_teacher:
            checkpoint["network_weights"].update(teacher)
        checkpoint[CHECKPOINT_KEY] = {
            "network_weights_are": "teacher" if to_teacher else "student",
            "other_trainable": to_cpu_keeping_aliases(student if to_teacher else teacher),
            "ema_step": self._fm_ema_step,
        }

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        if not isinstance(filename_or_checkpoint, str):
            return  # nnU-Net 2.8.1 itself only loads from a path
        checkpoint = torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False)
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None:
            return
        params = self._fm_trainable()
        loaded = {n: p.detach().clone() for n, p in params.items()}  # what network_weights put in the network
        other = {n: t.to(self.device) for n, t in saved["other_trainable"].items()}
        if saved["network_weights_are"] == "teacher":
            self._fm_teacher = loaded
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(other[n])  # the student continues training
        else:
            self._fm_teacher = other
        self._fm_ema_step = int(saved["ema_step"])
