"""The settings of a training run: :class:`TrainConfig`, the values its settings take, and how each
is read from the command line.

Every field carries its description in its metadata, which :mod:`d2d_ext.cli` turns into an
option of ``train``: ``help`` (required), and where needed ``choices`` (with ``ignore_case``),
``span`` (the :class:`~d2d_ext.spans.Span` of values a number may take, which
:meth:`TrainConfig.validate` checks, and the command line as it reads the option), ``parse``
(text to value, raising ``ValueError`` with a message), ``flag`` (the option's name where it is
not ``--name-with-dashes``) and ``metavar``.
:func:`text_parser` says how a field's value is read from text; a default lives only in the
dataclass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from ..models import MODEL_NAMES
from ..points import POINT_SOURCES, point_source, valid_point_source
from ..spans import Span, finite_number, whole_number

MODES = ("bilevel", "full", "naive", "fixed")
META_LOSSES = ("per-sample", "pooled")
HYPERGRADIENTS = ("exact", "first-order")
SELECTIONS = ("val-loss", "val-iou")
SCHEDULES = ("cosine", "constant")


def _setting(default, help: str, **spec):
    """A :class:`TrainConfig` field with its command-line description (see the module doc)."""
    return field(default=default, metadata={"help": help, **spec})


def _one_of(default: str, choices: tuple, help: str, ignore_case: bool = False):
    """A setting that takes one of ``choices``: :meth:`TrainConfig.validate` checks it, and the
    command line offers exactly these values."""
    return _setting(default, help, choices=choices, ignore_case=ignore_case)


@dataclass
class TrainConfig:
    """Settings of a training run (stored in every checkpoint)."""

    mode: str = _one_of("bilevel", MODES, "bilevel (the paper), or a baseline: full (ground-truth masks), naive "
                                          "(the point pixels), fixed (the first pseudo-labels)")
    model: str = _one_of("unet", MODEL_NAMES, "the detector (any case, as build_model reads it)", ignore_case=True)
    points: str = _setting("centroid", "point source, as annotate's --points", parse=point_source)
    bad_pixels: str = _setting("", "the sensor's stuck pixels (nonzero in this image, or a folder of maps named WxH.png), "
                                   "repaired in every image read, for the labels and the detector alike, as annotate's "
                                   "--bad-pixels", metavar="MAP.png")
    epochs: int = _setting(40, "training epochs", span=Span(0, whole=True))
    warmup_epochs: int = _setting(8, "epochs of plain training before the bi-level steps (the paper: 80 of 400)",
                                  span=Span(0, whole=True))
    theta_every: int = _setting(2, "epochs between theta updates (bi-level; the paper: 20 of 400)",
                                span=Span(1, whole=True))
    meta_every: int = _setting(4, "iterations between meta-classifier steps (bi-level; more make an epoch "
                                  "cheaper; the reference code: 4)", span=Span(1, whole=True))
    beta: float = _setting(0.1, "weight of the validation loss L_val in the detector's update (bi-level)",
                          span=Span(0))
    balance: bool = _setting(True, "ablation: alpha = 1 (the sample weights are not learned)")
    online_labels: bool = _setting(True, "ablation: never update theta (the pseudo-labels stay the first ones)")
    joint: bool = _setting(False, "ablation: direct joint learning (alpha and theta follow the training loss's "
                                  "gradient at every step, no look-ahead)")
    lr: float = _setting(1e-3, "the detector's AdamW learning rate", span=Span(0))
    schedule: str = _one_of("cosine", SCHEDULES, "learning rate: cosine (decays to 0 over the epochs, half a "
                                                 "cosine) or constant")
    weight_decay: float = _setting(1e-4, "the detector's AdamW weight decay", span=Span(0))
    meta_lr: float = _setting(1e-3, "Adam's learning rate for the meta-classifier (bi-level)", span=Span(0))
    theta_lr: float = _setting(1e-2, "Adam's learning rate for the diffusion parameters theta (bi-level); its "
                                     "first steps move each parameter by about this much whatever the gradient's "
                                     "size", span=Span(0))
    inner_lr: float = _setting(1e-3, "learning rate of the look-ahead SGD step in the meta-classifier's "
                                     "hypergradient: small, in the linear regime (a large step overshoots and "
                                     "inverts the weights)", span=Span(0))
    meta_loss: str = _one_of("per-sample", META_LOSSES, "the meta-classifier's validation loss: per-sample (mean "
                                                        "of the crops' soft-IoU) or pooled (one soft-IoU over the "
                                                        "validation batch)")
    hypergradient: str = _one_of("exact", HYPERGRADIENTS, "the meta-classifier's step: exact (double backward "
                                                          "through the look-ahead) or first-order (gradient "
                                                          "alignment at the current weights: one forward-mode "
                                                          "pass instead of a double backward)")
    weight_ema: float = _setting(0.0, "keep an exponential moving average of the detector's weights and "
                                      "BatchNorm statistics with this decay per iteration (e.g. 0.99; 0: off); it "
                                      "validates, picks best.pt, guides theta and is what `test` scores, while "
                                      "the training steps move the live weights", metavar="DECAY",
                                  span=Span(0, 1, open="high"))
    select: str = _one_of("val-loss", SELECTIONS, "what picks best.pt: val-loss (lowest mean per-image soft-IoU "
                                                  "loss on the validation images) or val-iou (highest validation "
                                                  "IoU, pixels pooled as the test scores them); against the "
                                                  "validation labels either way (pseudo-labels in point modes)")
    batch_size: int = _setting(8, "training crops per iteration (per process when distributed)",
                               span=Span(1, whole=True))
    val_batch_size: int = _setting(0, "validation crops per bi-level iteration, for the beta term and the meta "
                                      "step (0: --batch-size); fewer make a bi-level iteration cheaper, since "
                                      "the beta term runs the detector forward and backward on them too",
                                  span=Span(0, whole=True))
    crop_size: int = _setting(128, "side of the square training crops in pixels (a multiple of 16)",
                              span=Span(16, whole=True))
    val_fraction: float = _setting(0.2, "share of the training split held out for validation (a seeded draw; "
                                        "unused with --val-split)", span=Span(0, 1))
    val_split: str = _setting("", "an explicit validation split instead of a share of --split", metavar="SPLIT")
    surrogate_steps: int = _setting(16, "diffusion steps of the surrogate M(y; theta) in the theta step",
                                  span=Span(0, whole=True))
    seed: int = _setting(0, "seed of the validation share, the initial weights, the crops and generated points",
                        span=Span(0, whole=True))
    train_split: str = _setting("train", "training split (validation is taken from it)", flag="--split",
                                metavar="SPLIT")

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if f.metadata.get("ignore_case"):
                value = str(value).strip().lower()
            if choices is not None and value not in choices:
                raise ValueError(f"{f.name} must be one of {choices}, got {getattr(self, f.name)!r}")
            if "span" in f.metadata:
                f.metadata["span"].checked(f.name, value)
        if not valid_point_source(self.points):
            raise ValueError(f"points must be one of {POINT_SOURCES}, got {self.points!r}")
        if self.crop_size % 16:
            raise ValueError(f"crop_size must be a multiple of 16, got {self.crop_size}")


def text_parser(spec: dataclasses.Field) -> Callable[[str], object] | None:
    """How a :class:`TrainConfig` field's value is read from text: its ``parse`` metadata, else by
    its default's type (a float must be finite, an int whole; choices that ignore case are
    lower-cased), and within its ``span`` where it has one, so that the command line refuses a
    value out of it before anything runs. ``None`` for a bool, which the command line sets by a
    flag's presence."""
    kind = type(spec.default)
    if "parse" in spec.metadata:
        read = spec.metadata["parse"]
    elif kind is bool:
        return None
    elif kind is float:
        read = finite_number
    elif kind is int:
        read = whole_number
    elif spec.metadata.get("ignore_case"):
        read = str.lower
    else:
        read = kind
    span = spec.metadata.get("span")
    if span is None:
        return read

    def within(text: str):
        return span.checked(spec.name, read(text))

    return within
