"""Scoring a checkpoint's detector against the ground truth of a dataset split (``d2d test``)."""

from __future__ import annotations

from ..data import IRDataset
from ..files import DataError
from ..metrics import ISTDMetrics
from ..models import build_model
from .batches import predict
from .checkpoint import load_checkpoint, one_line


def evaluate_checkpoint(checkpoint, dataset, split: str = "test", pd_match: str = "nearest",
                        bad_pixels=None) -> dict:
    """IoU, nIoU, Pd, Fa of a checkpoint's detector against the ground truth of ``split``: its
    averaged weights where the run kept an average (``weight_ema``), else its weights. A
    checkpoint of :func:`~d2d_ext.bilevel.checkpoint.imported_checkpoint` brings its model's
    arguments and its input normalisation. ``pd_match``: how a target picks among predictions (see
    :class:`~d2d_ext.metrics.ISTDMetrics`). ``bad_pixels``: the sensor's bad-pixel map (an image
    file, or a folder of maps by size), repaired in every image before the detector sees it, as
    the run's ``bad_pixels``."""
    state = load_checkpoint(checkpoint)
    try:
        model = build_model(state["config"]["model"], **state.get("model_kwargs", {}))
        model.load_state_dict(state.get("averaged_model", state["model"]))
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{checkpoint}: the weights do not fit model {state.get('config', {}).get('model')!r}: "
                        f"{one_line(err)}") from err
    ds = IRDataset(dataset, bad_pixels=bad_pixels)
    metrics = ISTDMetrics(pd_match=pd_match)
    for i in ds.ids(split):
        metrics.update(predict(model, ds.load_image(i), state.get("input_norm")), ds.load_mask(i))
    return metrics.compute()
