"""Per-sample reweighting: the meta-classifier that maps a training sample's statistics to its
weight ``alpha``, and its step on the one-step hypergradient of the validation loss."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..models import final_logits
from ..reference import soft_iou_reference
from .config import HYPERGRADIENTS, META_LOSSES

N_STATS = 12


def sample_statistics(logits: torch.Tensor, labels: torch.Tensor, loss_avg: torch.Tensor) -> torch.Tensor:
    """``(B, 12)`` per-sample training statistics (no gradient) for the meta-classifier.

    Mean probability, mean binary entropy, L1 and L2 residuals, top-10% residual, soft-IoU loss,
    Dice, boundary-band error, log label area, log predicted area, agreement (mean of p inside the
    label), and the sample's running average of its training loss. ``logits``, ``labels``:
    ``(B, 1, h, w)``; ``loss_avg``: ``(B,)``.
    """
    with torch.no_grad():
        p = torch.sigmoid(logits.float()).flatten(1)
        y = labels.float().flatten(1)
        r = (p - y).abs()
        ent = -(p * torch.log(p + 1e-6) + (1 - p) * torch.log(1 - p + 1e-6)).mean(1)
        k = max(1, r.shape[1] // 10)
        top = r.topk(k, dim=1).values.mean(1)
        inter = (p * y).sum(1)
        loss = 1 - (inter + 1) / (p.sum(1) + y.sum(1) - inter + 1)
        dice = (2 * inter + 1) / (p.sum(1) + y.sum(1) + 1)
        lab = labels.float()
        band = (F.max_pool2d(lab, 5, 1, 2) - (-F.max_pool2d(-lab, 5, 1, 2))).flatten(1)
        band_err = (r * band).sum(1) / (band.sum(1) + 1)
        area_y = torch.log1p(y.sum(1)) / 10
        area_p = torch.log1p(p.sum(1)) / 10
        inside = (p * y).sum(1) / (y.sum(1) + 1e-6)
        return torch.stack([p.mean(1) * 100, ent, r.mean(1) * 100, (r ** 2).mean(1) * 100, top, loss,
                            dice, band_err, area_y, area_p, inside, loss_avg], 1)


class MetaWeighter(torch.nn.Module):
    """``alpha = sigmoid(MLP(stats) / 0.25)`` normalised to mean 1 over the batch; stats ``(B, 12)``."""

    def __init__(self, n_stats: int = N_STATS, hidden: int = 32, temperature: float = 0.25):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(n_stats, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
        self.temperature = temperature

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.net(stats).squeeze(1) / self.temperature)
        return w / w.mean().clamp_min(1e-6)


def validation_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str = "per-sample") -> torch.Tensor:
    """0-d soft-IoU loss of a validation batch, twice differentiable; ``logits``, ``labels``
    ``(B, ...)``. ``"per-sample"``: the mean of the samples' losses (every crop counts the same);
    ``"pooled"``: one soft-IoU of the whole batch (sums over every pixel of every crop), so a sample
    counts by its pixels, as in the dataset-level IoU that detectors are scored by."""
    if kind == "pooled":
        return soft_iou_reference(logits.reshape(1, -1), labels.reshape(1, -1))[0]
    if kind != "per-sample":
        raise ValueError(f"validation_loss: kind must be one of {META_LOSSES}, got {kind!r}")
    return soft_iou_reference(logits, labels).mean()


def hypergradient_step(model, meta, meta_opt, x, y, loss_avg, vx, vy, inner_lr: float, before_step=None,
                       meta_loss: str = "per-sample", form: str = "exact") -> float:
    """One step of the meta-classifier ``meta`` on the one-step hypergradient.

    ``alpha = meta(stats(model(x), y))``; ``w' = w - inner_lr * grad_w mean_i(alpha_i l_i(w))``;
    the step follows ``d L_val(w') / d phi = -inner_lr / B * sum_i <grad L_val(w'), grad l_i(w)>
    d alpha_i / d phi``. ``form="exact"``: double backward through the look-ahead.
    ``form="first-order"``: ``grad L_val`` taken at ``w`` instead of ``w'`` (gradient alignment;
    the two differ by O(inner_lr)); the B alignments ``<grad L_val(w), grad l_i(w)>`` come from one
    forward-mode pass (a Jacobian-vector product of the per-sample losses along ``grad L_val``),
    which is cheaper than differentiating through a gradient. Either way the detector's own weights
    and buffers are left untouched. ``x, y``: ``(B, 1, h, w)`` training crops and labels,
    ``loss_avg``: ``(B,)`` their running loss averages (:func:`sample_statistics`); ``vx, vy``:
    validation crops; ``meta_loss``: the form of ``L_val`` (:func:`validation_loss`).
    Returns ``L_val`` at ``w'`` (exact) or at ``w`` (first-order).
    """
    if form not in HYPERGRADIENTS:
        raise ValueError(f"hypergradient form must be one of {HYPERGRADIENTS}, got {form!r}")
    params = dict(model.named_parameters())

    def logits_at(weights, inputs):  # BatchNorm's running statistics move in train mode: on copies
        buffers = {k: v.clone() for k, v in model.named_buffers()}
        return final_logits(functional_call(model, (weights, buffers), (inputs,)))

    if form == "exact":
        logits = logits_at(params, x)
        alpha = meta(sample_statistics(logits, y, loss_avg))
        losses = soft_iou_reference(logits, y)  # twice differentiable (the op's backward is not)
        grads = torch.autograd.grad((alpha * losses).mean(), list(params.values()), create_graph=True,
                                    allow_unused=True)
        ahead = {k: (p - inner_lr * g if g is not None else p) for (k, p), g in zip(params.items(), grads)}
        val_loss = validation_loss(logits_at(ahead, vx), vy, meta_loss)
        objective = val_loss
    else:
        val_loss = validation_loss(logits_at(params, vx), vy, meta_loss)
        grads = torch.autograd.grad(val_loss, list(params.values()), allow_unused=True)
        direction = {k: (g if g is not None else torch.zeros_like(p)) for (k, p), g in zip(params.items(), grads)}

        def per_sample_losses(weights):
            logits = logits_at(weights, x)
            return soft_iou_reference(logits, y), logits

        with torch.no_grad(), warnings.catch_warnings():
            # torch registers its forward-mode decompositions with torch.jit.script on the first
            # jvp and warns that jit.script is deprecated: torch's internals, nothing a user can act on
            warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)
            _, align, logits = torch.func.jvp(per_sample_losses, ({k: p.detach() for k, p in params.items()},),
                                              (direction,), has_aux=True)
        alpha = meta(sample_statistics(logits, y, loss_avg))
        # d L_val(w') / d alpha_i to first order, times alpha_i: its gradient in phi is the step's
        objective = -inner_lr * (alpha * align).mean()
    meta_opt.zero_grad()
    objective.backward(inputs=list(meta.parameters()))
    if before_step is not None:  # e.g. averaging the gradients over ranks
        before_step()
    meta_opt.step()
    model.zero_grad(set_to_none=True)
    return float(val_loss.detach())
