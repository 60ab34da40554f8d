"""What the detector sees: a split's samples, normalised images, random training crops, and
whole-image predictions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..annotate import TargetBatch
from ..models import final_logits


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
    trained there expects (see :func:`~d2d_ext.bilevel.checkpoint.imported_checkpoint`).
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
