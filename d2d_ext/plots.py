"""Training plots as PNG (matplotlib, Agg backend): curves and alpha against target size."""

from __future__ import annotations

import io
from pathlib import Path

from .files import write_bytes_atomic


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_bytes_atomic(path, buf.getvalue())


def training_curves(records: list, path) -> Path:
    """Losses, validation IoU, alpha mean/std and theta against the epoch (one PNG)."""
    plt = _figure()
    ep = [r["epoch"] + 1 for r in records]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    axes[0].plot(ep, [r["train_loss"] for r in records], label="train (weighted)")
    axes[0].plot(ep, [r["val_loss"] for r in records], label="validation")
    axes[0].set_title("soft-IoU loss")
    axes[0].legend()
    axes[1].plot(ep, [r["val_iou"] for r in records])
    axes[1].set_title("validation IoU vs pseudo-labels (%)")
    axes[2].plot(ep, [r["alpha_mean"] for r in records], label="mean")
    axes[2].plot(ep, [r["alpha_std"] for r in records], label="std")
    axes[2].set_title("sample weights alpha")
    axes[2].legend()
    for name in records[0]["theta"] if records else []:
        if name == "D0_max":
            continue
        v0 = records[0]["theta"][name]
        axes[3].plot(ep, [r["theta"][name] / v0 for r in records], label=name)
    axes[3].set_title("theta / initial value")
    axes[3].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("epoch")
    path = Path(path)
    _save(fig, path)
    plt.close(fig)
    return path


def alpha_scatter(alpha_csv, path) -> Path:
    """Learned weight of every training sample against its pseudo-label area (paper Fig. 5)."""
    plt = _figure()
    rows = [line.split(",") for line in Path(alpha_csv).read_text().splitlines()[1:] if line.strip()]
    area = [max(int(r[2]), 1) for r in rows]
    alpha = [float(r[1]) for r in rows]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(area, alpha, s=10, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("pseudo-label area (pixels)")
    ax.set_ylabel("learned weight alpha")
    ax.set_title("sample weights vs target size")
    path = Path(path)
    _save(fig, path)
    plt.close(fig)
    return path
