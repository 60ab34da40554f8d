"""``d2d_ext.soft_iou`` and ``weighted_soft_iou``: the per-sample soft-IoU loss op."""

from typing import Optional, Sequence, Union

import torch

from ._fake_checks import check_float, check_same

__all__ = ["soft_iou", "soft_iou_loss", "weighted_soft_iou", "REDUCTIONS"]


def soft_iou(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Per-sample soft-IoU loss with the sigmoid fused in.

    Args:
        logits: ``(N, ...)`` float32 or float64 raw scores (before the sigmoid), any strides.
        target: same shape, dtype and device: the (soft) label in [0, 1].
        smooth: additive smoothing (>= 0) of numerator and denominator.

    Returns:
        ``(N,)``: ``loss_i = 1 - (sum p t + smooth) / (sum p + sum t - sum p t + smooth)`` with
        ``p = sigmoid(logits)`` and sums over every non-batch element of sample ``i``.

    Differentiable in ``logits`` and in ``target`` (the target may be a differentiable
    pseudo-label); first-order only. For the backward, autograd keeps the ``(N, 3)`` sums and
    references to ``logits`` and ``target`` (no tensor of probabilities: the backward recomputes
    the sigmoid in its one pass).
    """
    return torch.ops.d2d.soft_iou.default(logits, target, float(smooth))


REDUCTIONS = ("mean", "sum", "none", "pooled")


def check_reduction(reduction: str, who: str) -> str:
    """``reduction`` if it is one of :data:`REDUCTIONS`, else a ValueError naming ``who``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{who}: reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    return reduction


def soft_iou_loss(
    pred: Union[torch.Tensor, Sequence[torch.Tensor]],
    target: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
    reduction: str = "mean",
    from_logits: bool = True,
    smooth: float = 1.0,
) -> torch.Tensor:
    """Soft-IoU loss in the conventions of ISTD training code (the functional form of
    :class:`d2d_ext.nn.SoftIoULoss`).

    Args:
        pred: ``(N, ...)`` logits (``from_logits=True``: the sigmoid is fused) or probabilities in
            [0, 1] (``from_logits=False``: models that end in a sigmoid), or a list/tuple of them
            (deep supervision: each has the target's shape; the result is the mean over outputs).
        target: ``(N, ...)`` label in [0, 1] (differentiable).
        weight: ``(N,)`` per-sample weights (differentiable) multiplying each sample's loss, or
            ``None``; not with ``"pooled"``, which has no per-sample losses.
        reduction: ``"mean"`` of the per-sample losses, their ``"sum"``, ``"none"`` (the
            ``(N,)`` losses), or ``"pooled"``: one IoU of the whole batch, its sums taken over
            every sample together.
        smooth: additive smoothing (>= 0) of numerator and denominator.

    Returns:
        A 0-d tensor, or ``(N,)`` for ``"none"``.
    """
    check_reduction(reduction, "d2d.soft_iou_loss")
    outputs = list(pred) if isinstance(pred, (list, tuple)) else [pred]
    if not outputs:
        raise ValueError("d2d.soft_iou_loss: pred is an empty list")
    if weight is not None:
        if reduction == "pooled":
            raise ValueError("d2d.soft_iou_loss: weight needs per-sample losses; reduction='pooled' has one loss per batch")
        if weight.dim() != 1 or weight.shape[0] != target.shape[0]:
            raise ValueError(
                f"d2d.soft_iou_loss: weight must have shape ({target.shape[0]},), got {tuple(weight.shape)}"
            )
    forward = torch.ops.d2d.soft_iou_forward.default
    total = None
    for out in outputs:
        if reduction == "pooled":  # the batch as one sample
            if out.shape != target.shape:
                raise ValueError(
                    f"d2d.soft_iou_loss: pred and target must have the same shape, got {tuple(out.shape)} and {tuple(target.shape)}"
                )
            term = forward(out.reshape(1, -1), target.reshape(1, -1), float(smooth), bool(from_logits))[0][0]
        else:
            term = forward(out, target, float(smooth), bool(from_logits))[0]
            if weight is not None:
                term = term * weight
            if reduction == "mean":
                term = term.mean()
            elif reduction == "sum":
                term = term.sum()
        total = term if total is None else total + term
    return total / len(outputs)


def weighted_soft_iou(
    logits: Union[torch.Tensor, Sequence[torch.Tensor]],
    target: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
    smooth: float = 1.0,
) -> torch.Tensor:
    """Weighted mean of the per-sample soft-IoU loss: ``mean_i(weight_i * loss_i)``.

    Args:
        logits: ``(N, ...)`` scores, or a list/tuple of them (deep supervision: each output has
            the target's shape, and the result is the mean over outputs).
        target: ``(N, ...)`` label in [0, 1].
        weight: ``(N,)`` per-sample weights (differentiable), or ``None`` for all ones.
        smooth: as in :func:`soft_iou`.

    Returns:
        A 0-d tensor (:func:`soft_iou_loss` with ``reduction="mean"``, from logits).
    """
    return soft_iou_loss(logits, target, weight, "mean", True, smooth)


# d2d::soft_iou itself is CompositeImplicitAutograd (csrc/d2d.cpp): the loss output of
# d2d::soft_iou_forward, which also returns the per-sample sums (N, 3) float64 (sum p t, sum p,
# sum t) for the one-pass backward.


def _soft_iou_forward_fake(logits, target, smooth, from_logits=True):
    torch._check(logits.dim() >= 1, lambda: "d2d.soft_iou: logits must have shape (N, ...)")
    check_float("d2d.soft_iou", "logits", logits)
    check_same("d2d.soft_iou", "logits", logits, "target", target)
    n = logits.shape[0]
    return logits.new_empty((n,)), logits.new_empty((n, 3), dtype=torch.float64)


def _soft_iou_backward_fake(grad_loss, logits, target, sums, smooth, output_mask, from_logits=True):
    check_same("d2d.soft_iou_backward", "logits", logits, "target", target)
    check_same("d2d.soft_iou_backward", "grad_loss", grad_loss, "logits", logits)
    # Gradients not asked for come back as empty (0,) tensors.
    return (
        logits.new_empty(logits.shape if output_mask[0] else (0,)),
        target.new_empty(target.shape if output_mask[1] else (0,)),
    )


def _soft_iou_setup_context(ctx, inputs, output):
    logits, target, smooth, *rest = inputs  # from_logits is there when the caller passed it
    ctx.from_logits = bool(rest[0]) if rest else True
    _, sums = output
    ctx.mark_non_differentiable(sums)
    ctx.set_materialize_grads(False)  # a grad for sums is never used: do not zero-fill one
    ctx.save_for_backward(logits, target, sums)
    ctx.smooth = smooth


def register_python_parts(namespace: str) -> None:
    """Fake kernels and autograd of ``<namespace>::soft_iou_forward`` and its backward: the
    library's own ops (``d2d``, at import) and the tests' build of the CUDA kernels under the
    emulator."""
    backward_op = getattr(torch.ops, namespace).soft_iou_backward.default

    def backward(ctx, grad, _grad_sums):
        if grad is None:  # only the sums were used
            return None, None, None, None
        logits, target, sums = ctx.saved_tensors
        mask = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])]
        grad_logits, grad_target = backward_op(grad, logits, target, sums, ctx.smooth, mask, ctx.from_logits)
        return (
            grad_logits if ctx.needs_input_grad[0] else None,
            grad_target if ctx.needs_input_grad[1] else None,
            None,
            None,
        )

    torch.library.register_fake(f"{namespace}::soft_iou_forward")(_soft_iou_forward_fake)
    torch.library.register_fake(f"{namespace}::soft_iou_backward")(_soft_iou_backward_fake)
    torch.library.register_autograd(f"{namespace}::soft_iou_forward", backward, setup_context=_soft_iou_setup_context)


register_python_parts("d2d")

