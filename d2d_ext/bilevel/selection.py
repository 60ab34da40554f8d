"""Choosing from a run's results: which epoch's weights are ``best.pt``, and which training
samples the learned weights rank highest."""

from __future__ import annotations

import math
from pathlib import Path

from ..files import DataError, write_bytes_atomic


def selection_score(record: dict, select: str) -> float:
    """What best.pt minimises: the epoch's validation loss, or minus its validation IoU
    (``select`` is ``"val-loss"`` or ``"val-iou"``); an undefined value (NaN) never wins."""
    value = record["val_loss"] if select == "val-loss" else record["val_iou"]
    if value is None or math.isnan(value):  # None: a NaN as log.jsonl writes it (a resumed run)
        return math.inf
    return float(value) if select == "val-loss" else -float(value)


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
