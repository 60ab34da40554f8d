"""The checkpoint file: its format, writing and safe loading, the checks before a run resumes
from one, and checkpoints made from a detector's weights converted from elsewhere.

A training checkpoint (``RUN/last.pt``, ``RUN/best.pt``) is a dict with ``format`` =
:data:`FORMAT`, ``epoch``, ``config`` (:class:`~d2d_ext.bilevel.config.TrainConfig` as a dict),
``annotator_config``, ``model``, ``opt``, ``meta``, ``meta_opt``, ``theta``, ``theta_opt``,
:data:`LOSS_AVG_KEY`, ``best_val``, ``train_ids``, ``val_ids``, and where the run keeps a weight
average ``averaged_model`` and ``n_averaged``. An imported one (:func:`imported_checkpoint`) holds
``format``, ``config`` (the model's name only), ``model_kwargs``, ``model``, ``source`` and
maybe ``input_norm``.
"""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import torch

from ..annotate import AnnotatorConfig
from ..files import DataError, write_bytes_atomic
from ..models import ConvertedWeights
from .config import TrainConfig

FORMAT = "d2d_ext.train/1"
# Each training sample's running average of its loss (a meta-classifier input); the key predates
# the name and stays, so that checkpoints load in either direction.
LOSS_AVG_KEY = "ema"


def checkpoint_bytes(state: dict) -> bytes:
    """``state`` serialised as ``torch.save`` writes it."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic: written to a temporary file in the same folder, then renamed over ``path``."""
    write_bytes_atomic(path, checkpoint_bytes(state))


def one_line(text, limit: int = 400) -> str:
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
                        f"or a damaged one ({one_line(cause.split('. ')[0])})") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DataError(f"{path} is not a d2d_ext training checkpoint (format {FORMAT})")
    return state


def settings_record(config) -> dict:
    """A settings dataclass as the checkpoint keeps it: name -> value, tuples as lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def check_resumable(state: dict, config: TrainConfig, splits: dict, annotator: AnnotatorConfig | None = None) -> None:
    """Raise :class:`DataError` unless a run with ``config`` (and, where given, the pseudo-labels'
    ``annotator`` settings) on ``splits`` (``{"train": ids, "val": ids}``) can continue from
    ``state``: it must hold a trainer's state, have been started with the same settings (a setting
    added since took its default, the old behaviour) and on the same images."""
    if "opt" not in state:  # written by imported_checkpoint: weights, no trainer state
        raise DataError(f"the checkpoint holds a detector's weights only (from {state.get('source', 'elsewhere')}), "
                        "no training state: `d2d test` scores it, a run cannot resume from it")
    kinds = [("", TrainConfig(), config, state["config"])]
    if annotator is not None:
        kinds.append(("annotator ", AnnotatorConfig(), annotator, state.get("annotator_config", {})))
    for kind, default, now, saved in kinds:
        saved, now = {**settings_record(default), **saved}, settings_record(now)
        if saved != now:
            diff = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
            raise DataError(f"--resume: the run was started with other {kind}settings (saved, now): {diff}")
    for name, ids in splits.items():
        saved = state.get(f"{name}_ids")
        if saved is not None and list(saved) != list(ids):
            gone, new = sorted(set(saved) - set(ids)), sorted(set(ids) - set(saved))
            raise DataError(f"--resume: the {name} split changed since the run started "
                            f"({len(saved)} images then, {len(ids)} now; gone {gone[:5]}, new {new[:5]})")


def imported_checkpoint(converted: ConvertedWeights, source: str, input_norm: dict | None = None) -> dict:
    """A checkpoint of d2d's format holding a detector's weights from elsewhere (see
    :func:`d2d_ext.models.convert_checkpoint`), for ``d2d test`` /
    :func:`~d2d_ext.bilevel.evaluate.evaluate_checkpoint`.

    It holds no trainer state (optimisers, theta, sample weights): a run cannot resume from it.
    ``model_kwargs`` rebuilds the network; ``input_norm`` (``{"mean", "std"}`` in 8-bit grey
    levels, as BasicIRSTD's ``img_norm_cfg``), where given, replaces the per-image
    standardisation of the images fed to it; ``source`` records where the weights came from.
    Images are zero-padded to multiples of 16 after normalisation
    (:func:`~d2d_ext.bilevel.batches.pad16`), theirs to multiples of 32: images whose sides are
    multiples of 32 get their test code's maps, others may differ near the bottom and right borders.
    """
    state = {"format": FORMAT, "config": {"model": converted.model}, "model_kwargs": dict(converted.kwargs),
             "model": converted.state_dict, "source": str(source)}
    if input_norm is not None:
        mean, std = float(input_norm["mean"]), float(input_norm["std"])
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise DataError(f"input normalisation needs a finite mean and a std > 0, got mean {mean}, std {std}")
        state["input_norm"] = {"mean": mean, "std": std}
    return state
