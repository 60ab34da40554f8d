"""The bi-level trainer (the paper's Sections 3.1 and 3.3): detectors from single points.

One epoch of ``mode="bilevel"``, after ``warmup_epochs`` epochs of plain training:

- **Inner level (dynamic aggregation).** Every iteration the detector weights ``w`` take an
  AdamW step on ``L_tr(w; alpha, theta) + beta * L_val(w; theta)``: ``L_tr`` is
  :func:`d2d_ext.weighted_soft_iou` of a training batch against its pseudo-labels with the
  sample weights ``alpha``, ``L_val`` the soft-IoU of a validation batch against *its*
  pseudo-labels (no ground truth anywhere).
- **Sample weights.** A meta-classifier (an MLP, :class:`MetaWeighter`) maps per-sample training
  statistics (:func:`sample_statistics`) to ``alpha_i = sigmoid(z_i / 0.25)`` divided by the
  batch mean. Every ``meta_every`` iterations it takes a step on the exact one-step hypergradient
  ``d L_val(w - lr * grad_w mean_i(alpha_i l_i)) / d phi`` (double backward through one SGD step
  of the detector: the "learning to reweight" form), with the plain-torch soft-IoU, which is twice
  differentiable; ``L_val`` there is the mean of the validation crops' losses, or with
  ``meta_loss="pooled"`` one soft-IoU over the whole validation batch (:func:`validation_loss`).
  ``hypergradient="first-order"`` takes the gradient-alignment form instead: ``grad L_val`` at
  ``w`` rather than at the look-ahead ``w'`` (they differ by O(lr)).
- **Diffusion parameters.** Every ``theta_every`` epochs, ``theta`` takes one Adam step on
  ``L_val(M(y; theta), y_hat) + L_val(M(y; theta), y)`` where ``y`` is the detector's
  probability map on each target's crop, ``y_hat`` the current soft pseudo-label and
  ``M(y; theta) = normalise(rho * normalise(diffuse(y, rates(theta))) + (1 - rho) * C)``
  (:func:`surrogate`). Then the training and validation pseudo-labels are regenerated from the
  cached image-only target data (only the diffusion, fusion and binarisation re-run); the time
  this takes is logged as ``label_update_seconds``.

Other modes: ``full`` (ground-truth masks), ``naive`` (the point pixels as the label), ``fixed``
(the initial pseudo-labels, plain training). Ablation switches: ``balance=False`` (alpha = 1),
``online_labels=False`` (theta never updated), ``beta=0``, ``joint=True`` (direct joint learning:
alpha and theta follow the gradient of the *training* loss at every step, no look-ahead).

Validation data come from the training split (``val_fraction`` of it, or an explicit split) and
are labelled by the annotator; the best checkpoint is the one with the lowest validation loss
(``select="val-loss"``) or the highest validation IoU (``select="val-iou"``). With
``weight_ema`` (any mode) an exponential moving average of the detector's weights, updated after
every step, is what validates, guides theta and is tested.

Modules: :mod:`~d2d_ext.bilevel.config` (the settings), :mod:`~d2d_ext.bilevel.batches` (crops,
normalisation, predictions), :mod:`~d2d_ext.bilevel.reweight` (the sample weights),
:mod:`~d2d_ext.bilevel.labels` (the labels and theta), :mod:`~d2d_ext.bilevel.distributed`
(several processes), :mod:`~d2d_ext.bilevel.checkpoint` (the checkpoint file),
:mod:`~d2d_ext.bilevel.selection` (best.pt, top samples), :mod:`~d2d_ext.bilevel.evaluate`
(``d2d test``) and :mod:`~d2d_ext.bilevel.loop` (the :class:`Trainer`). The names below are
importable from ``d2d_ext.bilevel`` itself.
"""

from .batches import Split, normalise_image, pad16, predict, random_crops
from .checkpoint import FORMAT, imported_checkpoint, load_checkpoint, save_checkpoint
from .config import HYPERGRADIENTS, META_LOSSES, MODES, SCHEDULES, SELECTIONS, TrainConfig
from .evaluate import evaluate_checkpoint
from .labels import surrogate
from .loop import Trainer
from .reweight import N_STATS, MetaWeighter, hypergradient_step, sample_statistics, validation_loss
from .selection import select_top, selection_score

__all__ = [
    "FORMAT",
    "HYPERGRADIENTS",
    "META_LOSSES",
    "MODES",
    "N_STATS",
    "SCHEDULES",
    "SELECTIONS",
    "MetaWeighter",
    "Split",
    "TrainConfig",
    "Trainer",
    "evaluate_checkpoint",
    "hypergradient_step",
    "imported_checkpoint",
    "load_checkpoint",
    "normalise_image",
    "pad16",
    "predict",
    "random_crops",
    "sample_statistics",
    "save_checkpoint",
    "select_top",
    "selection_score",
    "surrogate",
    "validation_loss",
]
