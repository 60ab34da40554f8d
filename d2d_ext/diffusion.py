"""``d2d_ext.diffuse``: the conservative heat/drift transport op, its autograd and fake kernel."""

import operator

import torch

from ._fake_checks import check_float, check_same

__all__ = ["diffuse"]


def diffuse(u0: torch.Tensor, rates: torch.Tensor, tau: float, steps: int) -> torch.Tensor:
    """Run ``steps`` explicit steps of a random walk's master equation on the pixel grid.

    Args:
        u0: ``(N, H, W)`` float32 or float64, any strides: the initial heat (mass) per pixel.
        rates: ``(N, 4, H, W)``, same dtype and device, non-negative: channel ``d`` is the rate
            of flow from pixel ``p = (y, x)`` to its neighbour ``q_d(p)``: ``d=0`` to
            ``(y, x+1)``, ``d=1`` to ``(y, x-1)``, ``d=2`` to ``(y+1, x)``, ``d=3`` to
            ``(y-1, x)``. Rates that point outside the image are ignored (zero-flux boundary).
        tau: step size (>= 0), in the rates' time unit.
        steps: number of steps (>= 0); ``steps=0`` returns a copy of ``u0``.

    Returns:
        ``(N, H, W)`` contiguous tensor ``u`` after ``steps`` steps of
        ``u'_p = u_p - tau * sum_d r_{p,d} u_p + tau * sum_d r_{q_d(p), opp(d)} u_{q_d(p)}``.
        Mass ``u.sum((1, 2))`` is conserved; ``u`` stays non-negative when ``u0`` is and
        ``tau * sum_d r_{p,d} <= 1`` at every pixel. Symmetric rates give the paper's
        ``u <- (I - tau L_D) u`` (Eq. 3); rates ``w_pq * exp(gamma (I_q - I_p) / 2)`` add a drift
        toward bright pixels. Negative rates are not checked: the same linear map is applied.

    Differentiable in ``u0`` and ``rates`` (hand-written backward; the intermediate states are
    checkpointed and recomputed, so memory grows as ``sqrt(steps)``, not ``steps``). When only
    ``u0`` needs a gradient, the backward is the adjoint chain alone, about the cost of the
    forward, with no forward state kept or recomputed.
    """
    try:
        steps = operator.index(steps)  # an int (or numpy integer); 2.5 or "3" is refused, not rounded
    except TypeError:
        raise TypeError(f"d2d.diffuse: steps must be an integer, got {steps!r}") from None
    return torch.ops.d2d.diffuse.default(u0, rates, float(tau), steps)


def _diffuse_fake(u0, rates, tau, steps):
    torch._check(u0.dim() == 3, lambda: f"d2d.diffuse: u0 must have shape (N, H, W), got {tuple(u0.shape)}")
    torch._check(rates.dim() == 4, lambda: f"d2d.diffuse: rates must have shape (N, 4, H, W), got {tuple(rates.shape)}")
    check_float("d2d.diffuse", "u0", u0)
    check_same("d2d.diffuse", "u0", u0, "rates", rates)
    return u0.new_empty(u0.shape)


def _diffuse_backward_fake(grad_out, u0, rates, tau, steps, output_mask=(True, True)):
    check_same("d2d.diffuse_backward", "grad_out", grad_out, "u0", u0)
    check_same("d2d.diffuse", "u0", u0, "rates", rates)
    return (u0.new_empty(u0.shape if output_mask[0] else (0,)),
            rates.new_empty(rates.shape if output_mask[1] else (0,)))


def _diffuse_setup_context(ctx, inputs, output):
    u0, rates, tau, steps = inputs
    ctx.save_for_backward(u0, rates)
    ctx.tau = tau
    ctx.steps = steps


def register_python_parts(namespace: str) -> None:
    """Fake kernels and autograd of ``<namespace>::diffuse`` and its backward: the library's own
    ops (``d2d``, at import) and the tests' build of the CUDA kernels under the emulator."""
    backward_op = getattr(torch.ops, namespace).diffuse_backward.default

    def backward(ctx, grad):
        u0, rates = ctx.saved_tensors
        need = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])]
        # u0 alone (a loss through a fixed field): the adjoint chain without any forward state
        grad_u0, grad_rates = backward_op(grad, u0, rates, ctx.tau, ctx.steps, need)
        return grad_u0 if need[0] else None, grad_rates if need[1] else None, None, None

    torch.library.register_fake(f"{namespace}::diffuse")(_diffuse_fake)
    torch.library.register_fake(f"{namespace}::diffuse_backward")(_diffuse_backward_fake)
    torch.library.register_autograd(f"{namespace}::diffuse", backward, setup_context=_diffuse_setup_context)


register_python_parts("d2d")
