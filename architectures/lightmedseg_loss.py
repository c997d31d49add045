"""LightMedSeg's training objective (arXiv 2603.07228, §3.7): Dice + CE + boundary-band BCE.

All three terms use the same per-batch inverse voxel frequency class weights: with ``n_c`` the
number of non-ignored voxels of class ``c`` in the batch, ``w_c = 1 / n_c`` for classes present
in the batch and ``w_c = 0`` for absent ones, normalised to ``sum_c w_c = 1`` (so a missing
class never produces an infinite weight; it still gets gradient from CE through the softmax).

* Dice: batch soft Dice per class (the ``MemoryEfficientSoftDiceLoss`` formulation, background
  included), combined as ``1 - sum_c w_c * dice_c``.
* CE: nnU-Net's ``RobustCrossEntropyLoss`` per voxel, averaged with voxel weight ``w[y]``
  (equivalently: the mean over present classes of each class's mean CE).
* Boundary: class-boundary voxels (a label change inside the 3x3(x3) neighbourhood) dilated by
  ``boundary_radius`` voxels in the L-infinity norm (max-pooling with a cubic window), then a
  per-class binary cross-entropy between the softmax probability and the one-hot target,
  weighted over classes by ``w``, summed over the band and divided by the band size. An empty
  band gives 0.

``ignore_label`` voxels contribute to no term (and receive zero gradient); like nnU-Net's
``DC_and_CE_loss``, the CE uses ``ignore_index`` and Dice a loss mask. Label changes between a
class and an ignored region count as boundaries, but ignored voxels are never inside the band.
Class frequencies and Dice sums are per process (no all-gather under DDP). Computed in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss
from torch import nn

__all__ = ["DiceCEBoundaryLoss", "boundary_band", "inverse_frequency_weights"]


def _max_pool(x: torch.Tensor, kernel: int) -> torch.Tensor:
    pool = F.max_pool3d if x.ndim == 5 else F.max_pool2d
    return pool(x, kernel, stride=1, padding=kernel // 2)


def boundary_band(labels: torch.Tensor, radius: int) -> torch.Tensor:
    """Boolean band ``[B, 1, ...]`` around label changes, dilated by ``radius`` (L-infinity).

    ``labels`` is an integer label map ``[B, 1, ...]`` (2D or 3D). A voxel is a boundary voxel
    when its 3x3(x3) neighbourhood holds more than one label value.
    """
    lab = labels.float()
    edge = _max_pool(lab, 3) != -_max_pool(-lab, 3)
    if radius > 0:
        edge = _max_pool(edge.float(), 2 * radius + 1) > 0
    return edge


def inverse_frequency_weights(labels: torch.Tensor, valid: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-batch class weights ``1 / n_c`` over present classes (0 for absent), summing to 1."""
    counts = torch.bincount(labels[valid].flatten(), minlength=num_classes)[:num_classes].float()
    inv = torch.where(counts > 0, 1.0 / counts.clamp_min(1.0), torch.zeros_like(counts))
    return inv / inv.sum().clamp_min(1e-12)


class DiceCEBoundaryLoss(nn.Module):
    """``weight_dice * Dice + weight_ce * CE + weight_boundary * boundary BCE`` (see module doc).

    ``forward(logits [B, C, ...], target [B, 1, ...] integer labels) -> scalar``.
    """

    def __init__(
        self,
        weight_dice: float = 1.0,
        weight_ce: float = 1.0,
        weight_boundary: float = 1.0,
        boundary_radius: int = 2,
        ignore_label: int | None = None,
        smooth: float = 1e-5,
    ) -> None:
        super().__init__()
        if boundary_radius < 0:
            raise ValueError(f"boundary_radius must be >= 0, got {boundary_radius}")
        self.weight_dice = weight_dice
        self.weight_ce = weight_ce
        self.weight_boundary = weight_boundary
        self.boundary_radius = boundary_radius
        self.ignore_label = ignore_label
        self.smooth = smooth
        ignore_index = ignore_label if ignore_label is not None else -100
        self.ce = RobustCrossEntropyLoss(reduction="none", ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == logits.ndim - 1:
            target = target.unsqueeze(1)
        if target.shape[1] != 1:
            raise ValueError(f"target must be an integer label map [B, 1, ...], got {tuple(target.shape)}")
        logits = logits.float()
        num_classes = logits.shape[1]
        labels = target.long()
        with torch.no_grad():
            if self.ignore_label is not None:
                valid = labels != self.ignore_label
                clean = torch.where(valid, labels, torch.zeros_like(labels))
            else:
                valid = torch.ones_like(labels, dtype=torch.bool)
                clean = labels
            weights = inverse_frequency_weights(clean, valid, num_classes)
            onehot = torch.zeros_like(logits).scatter_(1, clean, 1.0) * valid
            band = (
                boundary_band(labels, self.boundary_radius) & valid
                if self.weight_boundary != 0
                else torch.zeros_like(valid)
            )
        vmask = valid.float()
        log_p = torch.log_softmax(logits, dim=1)
        probs = log_p.exp()

        total = logits.new_zeros(())
        if self.weight_dice != 0:
            axes = [0, *range(2, logits.ndim)]
            intersect = (probs * onehot).sum(axes)
            sum_pred = (probs * vmask).sum(axes)
            sum_gt = onehot.sum(axes)
            dice = (2 * intersect + self.smooth) / (sum_pred + sum_gt + self.smooth).clamp_min(1e-8)
            total = total + self.weight_dice * (1 - (weights * dice).sum())
        if self.weight_ce != 0:
            ce = self.ce(logits, labels)  # [B, ...], zero at ignored voxels
            voxel_w = weights[clean[:, 0]] * vmask[:, 0]
            total = total + self.weight_ce * (ce * voxel_w).sum() / voxel_w.sum().clamp_min(1e-12)
        if self.weight_boundary != 0:
            log1m_p = torch.log((-torch.expm1(log_p)).clamp_min(1e-12))
            bce = -(onehot * log_p + (1 - onehot) * log1m_p)
            per_voxel = (bce * weights.view(1, -1, *([1] * (logits.ndim - 2)))).sum(1, keepdim=True)
            bmask = band.float()
            total = total + self.weight_boundary * (per_voxel * bmask).sum() / bmask.sum().clamp_min(1.0)
        return total
