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
  of the detector: the "learning to reweight" form). The losses inside that look-ahead use the
  plain-torch soft-IoU, which is twice differentiable; ``L_val`` there is the mean of the
  validation crops' losses, or with ``meta_loss="pooled"`` one soft-IoU over the whole validation
  batch (:func:`validation_loss`). ``hypergradient="first-order"`` takes the gradient-alignment
  form instead: the same sum with ``grad L_val`` at ``w`` rather than at the look-ahead ``w'``
  (they differ by O(lr); per-sample alignments from one forward-mode pass, no double backward).
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
(``select="val-loss"``) or the highest validation IoU (``select="val-iou"``).
With ``weight_ema`` (any mode) an exponential moving average of the detector's weights, updated
after every step (``torch.optim.swa_utils.AveragedModel``), is what validates, guides theta and
is tested.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .annotate import (
    Annotator,
    AnnotatorConfig,
    DiffusionParams,
    TargetBatch,
    crop_maps,
    fuse_prior,
    prepare_targets,
    soft_labels,
    target_rates,
)
from .baselines import point_masks
from .data import (
    POINT_SOURCES,
    DataError,
    IRDataset,
    json_line,
    remove_stale_temps,
    valid_point_source,
    write_bytes_atomic,
)
from .diffusion import diffuse
from .metrics import ISTDMetrics
from .models import MODEL_NAMES, ConvertedWeights, build_model, final_logits
from .progress import Progress
from .reference import soft_iou_of_probabilities, soft_iou_reference
from .soft_iou import soft_iou, weighted_soft_iou

MODES = ("bilevel", "full", "naive", "fixed")
META_LOSSES = ("per-sample", "pooled")
HYPERGRADIENTS = ("exact", "first-order")
SELECTIONS = ("val-loss", "val-iou")
SCHEDULES = ("cosine", "constant")
N_STATS = 12


def _one_of(default: str, choices: tuple, ignore_case: bool = False):
    """A setting that takes one of ``choices``: :meth:`TrainConfig.validate` checks it, and the
    command line (:mod:`d2d_ext.cli`) builds its option from this field's default and choices."""
    return field(default=default, metadata={"choices": choices, "ignore_case": ignore_case})


@dataclass
class TrainConfig:
    """Settings of a training run (stored in every checkpoint)."""

    mode: str = _one_of("bilevel", MODES)
    model: str = _one_of("unet", MODEL_NAMES, ignore_case=True)  # as build_model reads it
    points: str = "centroid"  # a point source of IRDataset.points
    epochs: int = 40
    warmup_epochs: int = 8  # the paper: 80 of 400
    theta_every: int = 2  # epochs between theta updates (the paper: 20 of 400)
    meta_every: int = 4  # iterations between meta-classifier updates (the reference code: 4)
    beta: float = 0.1  # weight of L_val in the inner update
    balance: bool = True  # learn alpha (False: alpha = 1)
    online_labels: bool = True  # update theta and regenerate labels
    joint: bool = False  # direct joint learning (ablation)
    lr: float = 1e-3
    schedule: str = _one_of("cosine", SCHEDULES)  # "cosine": lr decays to 0 over the epochs (half a cosine)
    weight_decay: float = 1e-4
    meta_lr: float = 1e-3
    theta_lr: float = 1e-2
    inner_lr: float = 1e-3  # the look-ahead SGD step: small, in the linear regime (0.1 overshoots and inverts the weights)
    meta_loss: str = _one_of("per-sample", META_LOSSES)  # the meta-classifier's validation loss
    hypergradient: str = _one_of("exact", HYPERGRADIENTS)  # the meta-classifier's step
    # decay per iteration of an exponential moving average of the detector's weights and BatchNorm
    # statistics (0: off); where on, the average is what validates (and so picks best.pt), what
    # the theta step reads and what a checkpoint's `test` scores; the training steps move the live weights
    weight_ema: float = 0.0
    # what picks best.pt: "val-loss" (the lowest mean per-image soft-IoU loss on the validation
    # images) or "val-iou" (the highest IoU over the validation set, pixels pooled as the test
    # scores them); against the validation labels either way (pseudo-labels in point modes)
    select: str = _one_of("val-loss", SELECTIONS)
    batch_size: int = 8
    # validation crops per bi-level iteration (the beta term and the meta step); 0: batch_size.
    # They are most of a bi-level iteration's cost beyond a plain one: the beta term's forward and
    # backward run on training and validation crops together
    val_batch_size: int = 0
    crop_size: int = 128
    val_fraction: float = 0.2
    val_split: str = ""  # an explicit validation split (else a seeded share of the training split)
    surrogate_steps: int = 16
    seed: int = 0
    train_split: str = "train"

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if f.metadata.get("ignore_case"):
                value = str(value).strip().lower()
            if choices is not None and value not in choices:
                raise ValueError(f"{f.name} must be one of {choices}, got {getattr(self, f.name)!r}")
        if not valid_point_source(self.points):
            raise ValueError(f"points must be one of {POINT_SOURCES}, got {self.points!r}")
        if self.crop_size % 16:
            raise ValueError(f"crop_size must be a multiple of 16, got {self.crop_size}")
        if not 0.0 <= self.weight_ema < 1.0:
            raise ValueError(f"weight_ema must be in [0, 1) (0: off), got {self.weight_ema}")
        if not self.theta_lr >= 0:
            raise ValueError(f"theta_lr must be >= 0, got {self.theta_lr}")
        if self.meta_every < 1 or self.theta_every < 1:
            raise ValueError(f"meta_every and theta_every must be >= 1, got {self.meta_every} and {self.theta_every}")
        if self.epochs < 0 or self.batch_size < 1 or self.val_batch_size < 0:
            raise ValueError("epochs must be >= 0, batch_size >= 1 and val_batch_size >= 0")


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


@dataclass
class Split:
    """Images, points, labels of one set of samples (numpy, native resolution)."""

    ids: list
    images: list  # (H, W) float32
    points: list  # (K, 2) (x, y)
    gts: list  # (H, W) bool or None
    targets: TargetBatch | None = None  # the annotator's cached image-only data
    labels: list | None = None  # (H, W) float32 current training labels


def normalise_image(image: np.ndarray, input_norm: dict | None = None) -> np.ndarray:
    """Per-image standardisation (no dataset statistics to recompute or store).

    ``input_norm = {"mean": m, "std": s}``: ``(255 * image - m) / s`` instead, the normalisation
    of BasicIRSTD / LESPS (their ``img_norm_cfg``, in grey levels of 8-bit images) that a network
    trained there expects (see :func:`imported_checkpoint`).
    """
    if input_norm is not None:
        return ((255.0 * image - float(input_norm["mean"])) / float(input_norm["std"])).astype(np.float32)
    return ((image - image.mean()) / (image.std() + 1e-6)).astype(np.float32)


def random_crops(split: Split, indices: np.ndarray, size: int, rng: np.random.Generator):
    """``(B, 1, size, size)`` images and labels: random crops (zero-padded), random flips."""
    xs, ys = [], []
    for i in indices:
        img, lab = normalise_image(split.images[i]), split.labels[i]
        H, W = img.shape
        ph, pw = max(size - H, 0), max(size - W, 0)
        if ph or pw:
            img = np.pad(img, ((0, ph), (0, pw)))
            lab = np.pad(lab, ((0, ph), (0, pw)))
        y0 = int(rng.integers(0, img.shape[0] - size + 1))
        x0 = int(rng.integers(0, img.shape[1] - size + 1))
        ci, cl = img[y0:y0 + size, x0:x0 + size], lab[y0:y0 + size, x0:x0 + size]
        if rng.random() < 0.5:
            ci, cl = ci[:, ::-1], cl[:, ::-1]
        if rng.random() < 0.5:
            ci, cl = ci[::-1], cl[::-1]
        xs.append(np.ascontiguousarray(ci))
        ys.append(np.ascontiguousarray(cl))
    return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys))[:, None]


def pad16(image: np.ndarray, input_norm: dict | None = None) -> torch.Tensor:
    """``(1, 1, H16, W16)`` normalised image (see :func:`normalise_image`), zero-padded to
    multiples of 16."""
    H, W = image.shape
    img = np.pad(normalise_image(image, input_norm), ((0, (-H) % 16), (0, (-W) % 16)))
    return torch.from_numpy(img)[None, None]


@torch.no_grad()
def predict(model: torch.nn.Module, image: np.ndarray, input_norm: dict | None = None) -> np.ndarray:
    """``(H, W)`` float32 probabilities of ``model`` on a whole image (normalised as
    :func:`normalise_image` does with ``input_norm``)."""
    was_training = model.training
    model.eval()
    parameter = next(model.parameters())
    logits = final_logits(model(pad16(image, input_norm).to(parameter.device, parameter.dtype)))
    model.train(was_training)
    H, W = image.shape
    return torch.sigmoid(logits)[0, 0, :H, :W].float().cpu().numpy()


# ----------------------------------------------------------------------------------------------
# Sample weights
# ----------------------------------------------------------------------------------------------


def sample_statistics(logits: torch.Tensor, labels: torch.Tensor, ema: torch.Tensor) -> torch.Tensor:
    """``(B, 12)`` per-sample training statistics (no gradient) for the meta-classifier.

    Mean probability, mean binary entropy, L1 and L2 residuals, top-10% residual, soft-IoU loss,
    Dice, boundary-band error, log label area, log predicted area, agreement (mean of p inside the
    label), and the sample's EMA loss. ``logits``, ``labels``: ``(B, 1, h, w)``; ``ema``: ``(B,)``.
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
                            dice, band_err, area_y, area_p, inside, ema], 1)


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


def hypergradient_step(model, meta, meta_opt, x, y, ema, vx, vy, inner_lr: float, before_step=None,
                       meta_loss: str = "per-sample", form: str = "exact") -> float:
    """One step of the meta-classifier ``meta`` on the one-step hypergradient.

    ``alpha = meta(stats(model(x), y))``; ``w' = w - inner_lr * grad_w mean_i(alpha_i l_i(w))``;
    the step follows ``d L_val(w') / d phi = -inner_lr / B * sum_i <grad L_val(w'), grad l_i(w)>
    d alpha_i / d phi``. ``form="exact"``: double backward through the look-ahead.
    ``form="first-order"``: ``grad L_val`` taken at ``w`` instead of ``w'`` (gradient alignment;
    the two differ by O(inner_lr)); the B alignments ``<grad L_val(w), grad l_i(w)>`` come from one
    forward-mode pass (a Jacobian-vector product of the per-sample losses along ``grad L_val``),
    about half the cost of the exact form. Either way the detector's own weights and buffers are
    left untouched. ``x, y``: ``(B, 1, h, w)`` training crops and labels, ``ema``: ``(B,)``;
    ``vx, vy``: validation crops; ``meta_loss``: the form of ``L_val`` (:func:`validation_loss`).
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
        alpha = meta(sample_statistics(logits, y, ema))
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
        alpha = meta(sample_statistics(logits, y, ema))
        # d L_val(w') / d alpha_i to first order, times alpha_i: its gradient in phi is the step's
        objective = -inner_lr * (alpha * align).mean()
    meta_opt.zero_grad()
    objective.backward(inputs=list(meta.parameters()))
    if before_step is not None:  # e.g. averaging the gradients over ranks
        before_step()
    meta_opt.step()
    model.zero_grad(set_to_none=True)
    return float(val_loss.detach())


# ----------------------------------------------------------------------------------------------
# The diffusion surrogate
# ----------------------------------------------------------------------------------------------


def surrogate(pred: torch.Tensor, batch: TargetBatch, theta: dict, steps: int) -> torch.Tensor:
    """``M(y; theta)``: ``(T, S, S)`` soft masks from the detector's crops ``pred`` ``(T, S, S)``.

    ``steps`` steps of :func:`d2d_ext.diffuse` with the targets' rates under ``theta``, normalised,
    fused with the superpixel prior as the pseudo-labels are; differentiable in ``theta``.
    """
    rates = target_rates(batch, theta)
    u = diffuse(pred.to(rates.dtype), rates, 1.0, steps)
    return fuse_prior(u, batch, theta["rho"], eps=1e-6)


def selection_score(record: dict, select: str) -> float:
    """What best.pt minimises: the epoch's validation loss, or minus its validation IoU
    (``select`` is ``"val-loss"`` or ``"val-iou"``); an undefined value (NaN) never wins."""
    value = record["val_loss"] if select == "val-loss" else record["val_iou"]
    if value is None or math.isnan(value):  # None: a NaN as log.jsonl writes it (a resumed run)
        return math.inf
    return float(value) if select == "val-loss" else -float(value)


def _distributed_setup() -> tuple:
    """``(rank, world_size, device)``: joins the process group that ``torchrun`` describes
    (``WORLD_SIZE`` > 1: NCCL on GPUs, gloo on CPUs); one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world, device


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------

FORMAT = "d2d_ext.train/1"


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic: written to a temporary file in the same folder, then renamed over ``path``."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes_atomic(path, buf.getvalue())


def _one_line(text, limit: int = 400) -> str:
    """``text`` on one line (torch's messages span several), at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def load_checkpoint(path) -> dict:
    """Load a checkpoint without running code from it (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"cannot load checkpoint {path}: the file is empty")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors, truncated files, foreign formats
        # torch's own text runs over several lines and may suggest weights_only=False: keep the cause
        text = str(err).split("WeightsUnpickler error:", 1)[-1]
        cause = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
        raise DataError(f"cannot load checkpoint {path}: not a PyTorch checkpoint of tensors and plain data, "
                        f"or a damaged one ({_one_line(cause.split('. ')[0])})") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DataError(f"{path} is not a d2d_ext training checkpoint (format {FORMAT})")
    return state


def imported_checkpoint(converted: ConvertedWeights, source: str, input_norm: dict | None = None) -> dict:
    """A checkpoint of d2d's format holding a detector's weights from elsewhere (see
    :func:`d2d_ext.models.convert_checkpoint`), for ``d2d test`` / :func:`evaluate_checkpoint`.

    It holds no trainer state (optimisers, theta, sample weights): a run cannot resume from it.
    ``model_kwargs`` rebuilds the network; ``input_norm`` (``{"mean", "std"}`` in 8-bit grey
    levels, as BasicIRSTD's ``img_norm_cfg``), where given, replaces the per-image
    standardisation of the images fed to it; ``source`` records where the weights came from.
    Images are zero-padded to multiples of 16 after normalisation (:func:`pad16`), theirs to
    multiples of 32: images whose sides are multiples of 32 get their test code's maps, others
    may differ near the bottom and right borders.
    """
    state = {"format": FORMAT, "config": {"model": converted.model}, "model_kwargs": dict(converted.kwargs),
             "model": converted.state_dict, "source": str(source)}
    if input_norm is not None:
        mean, std = float(input_norm["mean"]), float(input_norm["std"])
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise DataError(f"input normalisation needs a finite mean and a std > 0, got mean {mean}, std {std}")
        state["input_norm"] = {"mean": mean, "std": std}
    return state


# ----------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------


class Trainer:
    """Trains a detector on a dataset folder; writes ``RUN/`` (see :func:`train`)."""

    def __init__(self, dataset, run_dir, config: TrainConfig, annotator_config: AnnotatorConfig | None = None,
                 progress: bool = True, log=print):
        config.validate()
        self.cfg = config
        self.ds = IRDataset(dataset)
        self.run = Path(run_dir)
        self.progress = progress
        self.log = log
        self.rank, self.world, self.device = _distributed_setup()
        torch.manual_seed(config.seed)
        self.model = build_model(config.model).to(self.device)
        self.net = self.model  # what the training step calls: the DDP wrapper when distributed
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.averaged = None
        if config.weight_ema > 0:
            self.averaged = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(config.weight_ema),
                                          use_buffers=True)
        self.meta = MetaWeighter().to(self.device)
        self.meta_opt = torch.optim.Adam(self.meta.parameters(), lr=config.meta_lr)
        self.annotator = Annotator(annotator_config or AnnotatorConfig(), DiffusionParams())
        self.theta_opt = torch.optim.Adam(self.annotator.params.parameters(), lr=config.theta_lr)
        self.epoch = 0
        self.best_val = math.inf
        self._load_data()

    # -- data ------------------------------------------------------------------------------
    def _load_split(self, ids) -> Split:
        ds, cfg = self.ds, self.cfg
        images = [ds.load_image(i) for i in ids]
        points = [ds.points(i, cfg.points, seed=cfg.seed) for i in ids]
        gts = [ds.load_mask(i) if ds.has_mask(i) else None for i in ids]
        return Split(list(ids), images, points, gts)

    def _load_data(self) -> None:
        cfg = self.cfg
        ids = self.ds.ids(cfg.train_split)
        if cfg.val_split:
            val_ids = self.ds.ids(cfg.val_split)
            train_ids = [i for i in ids if i not in set(val_ids)]
        else:
            order = np.random.default_rng([cfg.seed, 7]).permutation(len(ids))
            n_val = max(1, int(round(cfg.val_fraction * len(ids))))
            val_ids = sorted(ids[j] for j in order[:n_val])
            train_ids = sorted(ids[j] for j in order[n_val:])
        if not train_ids:
            raise DataError(f"no training images left in split {cfg.train_split!r} after taking validation images")
        self.train_set, self.val_set = self._load_split(train_ids), self._load_split(val_ids)
        for split in (self.train_set, self.val_set):
            split.targets = prepare_targets(split.images, split.points, self.annotator.config)
        self.ema = torch.zeros(len(self.train_set.ids))
        self.refresh_labels()

    def refresh_labels(self) -> float:
        """(Re)make every training and validation label under the current theta; returns seconds."""
        t0 = time.perf_counter()
        cfg = self.cfg
        for split, is_train in ((self.train_set, True), (self.val_set, False)):
            # the full-supervision baseline has masks everywhere: it validates (and so picks
            # best.pt) on them too, not on pseudo-labels it would never have
            if cfg.mode == "full":
                missing = [i for i, g in zip(split.ids, split.gts) if g is None]
                if missing:
                    raise DataError(f"mode 'full' needs ground-truth masks; missing for {missing[:5]}")
                split.labels = [g.astype(np.float32) for g in split.gts]
            elif is_train and cfg.mode == "naive":
                split.labels = [m.astype(np.float32) for m in point_masks(split.images, split.points)]
            else:  # pseudo-labels (also for validation in every point-supervised mode)
                split.labels = [m.astype(np.float32) for m in self.annotator.masks(split.targets)]
        return time.perf_counter() - t0

    @property
    def detector(self) -> torch.nn.Module:
        """The weights that validate, guide theta and are tested: the running average where
        ``weight_ema`` is on, else the live model."""
        return self.averaged.module if self.averaged is not None else self.model

    # -- steps -----------------------------------------------------------------------------
    def learning_rate(self) -> float:
        """The detector's learning rate for the current epoch."""
        if self.cfg.schedule == "constant" or self.cfg.epochs <= 1:
            return self.cfg.lr
        return 0.5 * self.cfg.lr * (1 + math.cos(math.pi * self.epoch / self.cfg.epochs))

    def _outer_active(self) -> bool:
        return self.cfg.mode == "bilevel" and self.epoch >= self.cfg.warmup_epochs

    def _alpha(self, logits, labels, idx) -> torch.Tensor:
        if not (self._outer_active() and self.cfg.balance):
            return torch.ones(labels.shape[0], device=labels.device)
        return self.meta(sample_statistics(logits, labels, self.ema[idx].to(labels.device)))

    def _meta_step(self, x, y, idx, vx, vy) -> None:
        reduce = (lambda: self._all_reduce_grads(self.meta)) if self.world > 1 else None
        hypergradient_step(self.model, self.meta, self.meta_opt, x, y, self.ema[idx].to(self.device), vx, vy,
                           self.cfg.inner_lr, before_step=reduce, meta_loss=self.cfg.meta_loss,
                           form=self.cfg.hypergradient)

    def _all_reduce_grads(self, module: torch.nn.Module) -> None:
        """Average the gradients of ``module`` over the ranks (no-op in one process)."""
        if self.world == 1:
            return
        for p in module.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad /= self.world

    def _theta_step(self, val_probs: list | None = None) -> dict:
        """One Adam step of theta on the surrogate objective over the validation targets
        (``val_probs``: the detector's ``(H, W)`` probabilities on them, if already computed)."""
        # theta follows the validation targets; in direct joint learning, the training ones
        split = self.train_set if self.cfg.joint or not len(self.val_set.targets) else self.val_set
        batch = split.targets
        if len(batch) == 0:
            return {}
        if split is not self.val_set or val_probs is None:
            val_probs = [predict(self.detector, im) for im in split.images]
        pred = crop_maps(val_probs, batch)
        theta = self.annotator.params()
        with torch.no_grad():
            target = soft_labels(batch, {k: v.detach() for k, v in theta.items()})
        m = surrogate(pred, batch, theta, self.cfg.surrogate_steps)
        loss = soft_iou_of_probabilities(m, target.to(m.dtype)).mean() + soft_iou_of_probabilities(m, pred.to(m.dtype)).mean()
        self.theta_opt.zero_grad()
        loss.backward()
        self._all_reduce_grads(self.annotator.params)
        self.theta_opt.step()
        return {"surrogate_loss": float(loss.detach())}

    def train_epoch(self) -> dict:
        cfg, tr, va = self.cfg, self.train_set, self.val_set
        order = np.random.default_rng([cfg.seed, self.epoch]).permutation(len(tr.ids))
        rng = np.random.default_rng([cfg.seed, self.epoch, self.rank])  # this rank's crops
        torch.manual_seed(cfg.seed * 100003 + self.epoch)
        for group in self.opt.param_groups:  # a function of the epoch: nothing to save for --resume
            group["lr"] = self.learning_rate()
        self.model.train()
        # every rank runs the same number of iterations on its own share of the batches
        n_batches = max(1, len(order) // (cfg.batch_size * self.world))
        t0 = time.perf_counter()
        sums = {"train_loss": 0.0, "alpha": []}
        dev = self.device
        bar = Progress(n_batches, f"epoch {self.epoch + 1}/{cfg.epochs}") if self.progress and self.rank == 0 else None
        for b in range(n_batches):
            start = (b * self.world + self.rank) * cfg.batch_size
            idx = order[start:start + cfg.batch_size]
            if len(idx) == 0:
                idx = order[:cfg.batch_size]
            tidx = torch.from_numpy(idx)
            x, y = (t.to(dev) for t in random_crops(tr, idx, cfg.crop_size, rng))
            vidx = rng.integers(0, len(va.ids), size=min(cfg.val_batch_size or cfg.batch_size, len(va.ids)))
            vx, vy = (t.to(dev) for t in random_crops(va, vidx, cfg.crop_size, rng))
            if self._outer_active() and cfg.balance and not cfg.joint and b % cfg.meta_every == 0:
                self._meta_step(x, y, tidx, vx, vy)
            with_val = cfg.mode == "bilevel" and cfg.beta > 0
            # one forward pass for the training and validation crops (DDP counts one per backward)
            out = self.net(torch.cat([x, vx]) if with_val else x)
            outs = list(out) if isinstance(out, (list, tuple)) else [out]
            B = x.shape[0]
            logits = outs[-1][:B]
            alpha = self._alpha(logits.detach(), y, tidx)
            if not (self._outer_active() and cfg.joint):
                alpha = alpha.detach()
            loss = weighted_soft_iou([o[:B] for o in outs], y, alpha)
            total = loss
            if with_val:
                total = total + cfg.beta * soft_iou(outs[-1][B:], vy).mean()
            self.opt.zero_grad()
            self.meta_opt.zero_grad()
            total.backward()
            self.opt.step()
            if self.averaged is not None:
                self.averaged.update_parameters(self.model)
            if self._outer_active() and cfg.joint and cfg.balance:
                self._all_reduce_grads(self.meta)
                self.meta_opt.step()
            with torch.no_grad():
                delta = torch.zeros_like(self.ema)
                delta[tidx] = 0.1 * (soft_iou(logits.detach(), y).cpu() - self.ema[tidx])
                if self.world > 1:
                    torch.distributed.all_reduce(delta)
                self.ema += delta
            sums["train_loss"] += float(loss.detach())
            sums["alpha"].append(alpha.detach().cpu())
            if bar:
                bar.update()
        if bar:
            bar.close()
        if self.world > 1:  # BatchNorm statistics: each rank's last batch moved its own; take rank 0's
            for buf in self.model.buffers():
                torch.distributed.broadcast(buf, 0)
            if self.averaged is not None:  # its averaged BatchNorm statistics too
                for buf in self.averaged.module.buffers():
                    torch.distributed.broadcast(buf, 0)
        record = {"epoch": self.epoch, "lr": self.learning_rate(), "train_loss": sums["train_loss"] / n_batches}
        alphas = torch.cat(sums["alpha"])
        record["alpha_mean"], record["alpha_std"] = float(alphas.mean()), float(alphas.std()) if len(alphas) > 1 else 0.0
        record["label_update_seconds"] = 0.0
        self.epoch += 1
        # the theta step and the validation both need the detector on the validation images
        val_probs = [predict(self.detector, im) for im in va.images]
        if (cfg.mode == "bilevel" and cfg.online_labels and self.epoch > cfg.warmup_epochs
                and (self.epoch - cfg.warmup_epochs) % cfg.theta_every == 0):
            record.update(self._theta_step(val_probs))
            record["label_update_seconds"] = self.refresh_labels()
        record["theta"] = self.annotator.params.values()
        record.update(self.validate(val_probs))
        record["epoch_seconds"] = time.perf_counter() - t0
        return record

    @torch.no_grad()
    def validate(self, probs: list | None = None) -> dict:
        """Validation loss and metrics against the validation labels (pseudo-labels; the masks in
        ``full`` mode);
        ``probs``: the detector's ``(H, W)`` probabilities on the validation images, if computed."""
        va = self.val_set
        if probs is None:
            probs = [predict(self.detector, im) for im in va.images]
        metrics = ISTDMetrics()
        losses = []
        for prob, lab in zip(probs, va.labels):
            losses.append(float(soft_iou_of_probabilities(torch.from_numpy(prob)[None], torch.from_numpy(lab)[None])[0]))
            metrics.update(prob, lab > 0.5)
        m = metrics.compute()
        return {"val_loss": float(np.mean(losses)), "val_iou": m["iou"], "val_niou": m["niou"], "val_pd": m["pd"], "val_fa": m["fa"]}

    # -- state -----------------------------------------------------------------------------
    def state(self) -> dict:
        """The run's whole state; ``model`` holds the live weights (what training resumes from),
        ``averaged_model`` and ``n_averaged`` the running average where ``weight_ema`` is on."""
        averaged = {}
        if self.averaged is not None:
            averaged = {"averaged_model": self.averaged.module.state_dict(),
                        "n_averaged": int(self.averaged.n_averaged)}
        return {**averaged,
            "format": FORMAT, "epoch": self.epoch, "config": dataclasses.asdict(self.cfg),
            "annotator_config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.annotator.config).items()},
            "model": self.model.state_dict(), "opt": self.opt.state_dict(),
            "meta": self.meta.state_dict(), "meta_opt": self.meta_opt.state_dict(),
            "theta": self.annotator.params.state_dict(), "theta_opt": self.theta_opt.state_dict(),
            "ema": self.ema.clone(), "best_val": self.best_val,
            "train_ids": list(self.train_set.ids), "val_ids": list(self.val_set.ids),
        }

    def load_state(self, state: dict) -> None:
        if "opt" not in state:  # written by imported_checkpoint: weights, no trainer state
            raise DataError(f"the checkpoint holds a detector's weights only (from {state.get('source', 'elsewhere')}), "
                            "no training state: `d2d test` scores it, a run cannot resume from it")
        # a setting added since the run started took its default, the old behaviour
        config = {**dataclasses.asdict(TrainConfig()), **state["config"]}
        if config != dataclasses.asdict(self.cfg):
            diff = {k: (config.get(k), v) for k, v in dataclasses.asdict(self.cfg).items() if config.get(k) != v}
            raise DataError(f"--resume: the run was started with other settings (saved, now): {diff}")
        for name, split in (("train", self.train_set), ("val", self.val_set)):
            saved = state.get(f"{name}_ids")
            if saved is not None and list(saved) != list(split.ids):
                gone, new = sorted(set(saved) - set(split.ids)), sorted(set(split.ids) - set(saved))
                raise DataError(f"--resume: the {name} split changed since the run started "
                                f"({len(saved)} images then, {len(split.ids)} now; gone {gone[:5]}, new {new[:5]})")
        try:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["opt"])
            self.meta.load_state_dict(state["meta"])
            self.meta_opt.load_state_dict(state["meta_opt"])
            self.annotator.params.load_state_dict(state["theta"])
            self.theta_opt.load_state_dict(state["theta_opt"])
            self.ema = state["ema"].clone()
            if self.averaged is not None:
                self.averaged.module.load_state_dict(state["averaged_model"])
                self.averaged.n_averaged.fill_(int(state["n_averaged"]))
            self.best_val = float(state["best_val"])
            self.epoch = int(state["epoch"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise DataError(f"the checkpoint's weights do not fit this run (model {self.cfg.model!r}): "
                            f"{_one_line(err)}") from err
        self.refresh_labels()

    def fit(self) -> list:
        """Train to ``cfg.epochs``, writing ``log.jsonl``, ``last.pt``, ``best.pt``, ``alpha.csv``, plots."""
        self.run.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            remove_stale_temps(self.run)  # temporary files of a run killed mid-write
        log_path = self.run / "log.jsonl"
        records = []
        if log_path.is_file():  # keep the epochs done before (a resumed run)
            records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
            records = [r for r in records if r["epoch"] < self.epoch]
        while self.epoch < self.cfg.epochs:
            record = self.train_epoch()
            records.append(record)
            score = selection_score(record, self.cfg.select)
            improved = score < self.best_val
            if improved:
                self.best_val = score
            if self.rank == 0:  # every rank holds the same state; one writes it
                # the log first: a crash after it leaves last.pt an epoch behind, and --resume
                # redoes that epoch and its record; last.pt first would lose the record
                write_bytes_atomic(log_path, "".join(json_line(r) + "\n" for r in records).encode())
                if improved:
                    save_checkpoint(self.run / "best.pt", self.state())
                save_checkpoint(self.run / "last.pt", self.state())
            if self.progress and self.rank == 0:
                self.log(f"epoch {record['epoch'] + 1}/{self.cfg.epochs}: train {record['train_loss']:.4f} "
                         f"val {record['val_loss']:.4f} val IoU {record['val_iou']:.2f} "
                         f"({record['epoch_seconds']:.1f} s)")
        if self.rank == 0:
            self.write_alpha()
        if self.world > 1:
            torch.distributed.barrier()
        return records

    @torch.no_grad()
    def write_alpha(self) -> Path:
        """``RUN/alpha.csv``: every training sample's learned weight (on its whole image) and the
        area of its pseudo-label."""
        tr = self.train_set
        stats = []
        for k, (img, lab) in enumerate(zip(tr.images, tr.labels)):
            x = pad16(img).to(self.device)
            y = torch.from_numpy(np.pad(lab, ((0, x.shape[2] - lab.shape[0]), (0, x.shape[3] - lab.shape[1]))))[None, None]
            self.model.eval()
            logits = final_logits(self.model(x))
            stats.append(sample_statistics(logits, y.to(self.device), self.ema[k:k + 1].to(self.device)).cpu())
        self.model.train()
        z = torch.sigmoid(self.meta.net(torch.cat(stats).to(self.device)).squeeze(1).cpu() / self.meta.temperature)
        alpha = (z / z.mean()).numpy() if (self.cfg.balance and self.cfg.mode == "bilevel") else np.ones(len(tr.ids))
        rows = ["id,alpha,label_area,targets"] + [
            f"{i},{a:.6f},{int((lab > 0.5).sum())},{len(p)}" for i, a, lab, p in zip(tr.ids, alpha, tr.labels, tr.points)]
        path = self.run / "alpha.csv"
        write_bytes_atomic(path, ("\n".join(rows) + "\n").encode())
        return path


def select_top(run_dir, top: float, out) -> list:
    """Write the ids of the ``top`` fraction of training samples by learned weight to ``out``."""
    path = Path(run_dir) / "alpha.csv"
    if not path.is_file():
        raise DataError(f"no alpha.csv in {run_dir} (train first)")
    rows = [line.split(",") for line in path.read_text().splitlines()[1:] if line.strip()]
    rows.sort(key=lambda r: -float(r[1]))
    keep = [r[0] for r in rows[:max(1, int(round(top * len(rows))))]]
    write_bytes_atomic(out, ("\n".join(keep) + "\n").encode())
    return keep


def evaluate_checkpoint(checkpoint, dataset, split: str = "test", pd_match: str = "nearest") -> dict:
    """IoU, nIoU, Pd, Fa of a checkpoint's detector against the ground truth of ``split``: its
    averaged weights where the run kept an average (``weight_ema``), else its weights. A
    checkpoint of :func:`imported_checkpoint` brings its model's arguments and its input
    normalisation. ``pd_match``: how a target picks among predictions (see
    :class:`~d2d_ext.metrics.ISTDMetrics`)."""
    state = load_checkpoint(checkpoint)
    try:
        model = build_model(state["config"]["model"], **state.get("model_kwargs", {}))
        model.load_state_dict(state.get("averaged_model", state["model"]))
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{checkpoint}: the weights do not fit model {state.get('config', {}).get('model')!r}: "
                        f"{_one_line(err)}") from err
    ds = IRDataset(dataset)
    metrics = ISTDMetrics(pd_match=pd_match)
    for i in ds.ids(split):
        metrics.update(predict(model, ds.load_image(i), state.get("input_norm")), ds.load_mask(i))
    return metrics.compute()
