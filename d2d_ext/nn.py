"""``nn.Module`` forms of the ops: what a training script holds.

    criterion = d2d_ext.nn.SoftIoULoss(reduction="pooled", from_logits=False)  # BasicIRSTD's
    loss = criterion(model(img), mask)
"""

from typing import Optional, Sequence, Union

import torch
from torch import nn

from .soft_iou import check_reduction, soft_iou_loss

__all__ = ["SoftIoULoss"]


class SoftIoULoss(nn.Module):
    """Soft-IoU loss over the fused kernels (:func:`d2d_ext.soft_iou.soft_iou_loss`).

    Args:
        reduction: ``"mean"`` (default) of the per-sample losses, ``"sum"``, ``"none"``
            (``(N,)``), or ``"pooled"``: one IoU over the whole batch.
        from_logits: ``True`` (default): the model's raw scores, sigmoid fused. ``False``:
            probabilities in [0, 1], for models that end in a sigmoid.
        smooth: additive smoothing of numerator and denominator (>= 0).

    The losses of ISTD codebases, in these terms:

    - BasicIRSTD's and LESPS' ``SoftIoULoss``: ``SoftIoULoss("pooled", from_logits=False)``
      (probabilities, one IoU of the batch, smooth 1, deep-supervision outputs averaged);
    - MSHNet's ``SoftLoULoss``: ``SoftIoULoss("mean", from_logits=False, smooth=0.1)``;
    - d2d's trainer: ``SoftIoULoss("mean")`` with per-sample weights.

    ``forward(pred, target, weight=None)``: ``pred`` is ``(N, ...)`` or a list/tuple of such
    outputs (deep supervision), ``target`` ``(N, ...)``, ``weight`` optional ``(N,)`` per-sample
    weights (not with ``"pooled"``). Differentiable in ``pred``, ``target`` and ``weight``.
    """

    def __init__(self, reduction: str = "mean", from_logits: bool = True, smooth: float = 1.0):
        super().__init__()
        check_reduction(reduction, "SoftIoULoss")  # at construction, not at the first batch
        if not smooth >= 0:
            raise ValueError(f"SoftIoULoss: smooth must be >= 0, got {smooth!r}")
        self.reduction = reduction
        self.from_logits = bool(from_logits)
        self.smooth = float(smooth)

    def forward(
        self,
        pred: Union[torch.Tensor, Sequence[torch.Tensor]],
        target: torch.Tensor,
        weight: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        return soft_iou_loss(pred, target, weight, self.reduction, self.from_logits, self.smooth)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, from_logits={self.from_logits}, smooth={self.smooth}"
