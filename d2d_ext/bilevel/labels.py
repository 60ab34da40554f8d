"""The training labels and their diffusion parameters theta: what each mode trains and validates
on, the differentiable surrogate ``M(y; theta)`` of the annotator, and theta's step on it."""

from __future__ import annotations

import numpy as np
import torch

from ..annotate import Annotator, TargetBatch, crop_maps, fuse_prior, soft_labels, target_rates
from ..baselines import point_masks
from ..diffusion import diffuse
from ..files import DataError
from ..reference import soft_iou_of_probabilities
from .batches import Split


def split_labels(split: Split, mode: str, annotator: Annotator, is_train: bool) -> list:
    """``(H, W)`` float32 labels of every sample of ``split`` in training mode ``mode``, under the
    annotator's current theta: the ground-truth masks in ``full`` mode (training and validation
    alike: that baseline has masks everywhere, so it also picks best.pt on them), the point pixels
    for training in ``naive`` mode, else the pseudo-labels (also for validation in every
    point-supervised mode)."""
    if mode == "full":
        missing = [i for i, g in zip(split.ids, split.gts) if g is None]
        if missing:
            raise DataError(f"mode 'full' needs ground-truth masks; missing for {missing[:5]}")
        return [g.astype(np.float32) for g in split.gts]
    if is_train and mode == "naive":
        return [m.astype(np.float32) for m in point_masks(split.images, split.points)]
    return [m.astype(np.float32) for m in annotator.masks(split.targets)]


def surrogate(pred: torch.Tensor, batch: TargetBatch, theta: dict, steps: int) -> torch.Tensor:
    """``M(y; theta)``: ``(T, S, S)`` soft masks from the detector's crops ``pred`` ``(T, S, S)``.

    ``steps`` steps of :func:`d2d_ext.diffuse` with the targets' rates under ``theta``, normalised,
    fused with the superpixel prior as the pseudo-labels are; differentiable in ``theta``.
    """
    rates = target_rates(batch, theta)
    u = diffuse(pred.to(rates.dtype), rates, 1.0, steps)
    return fuse_prior(u, batch, theta["rho"], eps=1e-6)


def theta_step(annotator: Annotator, theta_opt: torch.optim.Optimizer, batch: TargetBatch, probs: list,
               steps: int, before_step=None) -> float:
    """One step of ``theta_opt`` on the annotator's theta: on
    ``L(M(y; theta), y_hat) + L(M(y; theta), y)``, ``L`` the mean soft-IoU loss over the targets
    of ``batch``, ``y`` the detector's probabilities on each target's crop (``probs``: ``(H, W)``
    per image of the batch), ``y_hat`` the current soft pseudo-labels (held fixed) and ``M`` the
    :func:`surrogate` with ``steps`` diffusion steps. ``before_step``: called between the
    backward pass and the step (e.g. averaging the gradients over ranks). Returns the objective."""
    pred = crop_maps(probs, batch)
    theta = annotator.params()
    with torch.no_grad():
        target = soft_labels(batch, {k: v.detach() for k, v in theta.items()})
    m = surrogate(pred, batch, theta, steps)
    loss = (soft_iou_of_probabilities(m, target.to(m.dtype)).mean()
            + soft_iou_of_probabilities(m, pred.to(m.dtype)).mean())
    theta_opt.zero_grad()
    loss.backward()
    if before_step is not None:
        before_step()
    theta_opt.step()
    return float(loss.detach())
