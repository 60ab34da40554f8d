"""Plain-torch references of the compiled ops, used by the tests and the benchmarks.

They implement the same formulas with vectorised tensor operations (no Python loop over pixels)
and differentiate through torch autograd, which keeps every intermediate state.
"""

import torch

__all__ = ["diffuse_reference", "diffuse_step", "diffuse_step_padded", "diffuse_step_rates", "soft_iou_reference", "soft_iou_of_probabilities", "boundary_mask"]


def boundary_mask(shape, dtype=torch.float64, device=None) -> torch.Tensor:
    """``(1, 4, H, W)`` mask that is 1 where direction ``d`` points to a pixel inside the image."""
    H, W = shape[-2], shape[-1]
    m = torch.ones((1, 4, H, W), dtype=dtype, device=device)
    m[:, 0, :, W - 1] = 0
    m[:, 1, :, 0] = 0
    m[:, 2, H - 1, :] = 0
    m[:, 3, 0, :] = 0
    return m


def diffuse_reference(u0: torch.Tensor, rates: torch.Tensor, tau: float, steps: int) -> torch.Tensor:
    """``(N, H, W)`` result of ``steps`` steps of the d2d.diffuse master equation.

    Same arguments and formula as :func:`d2d_ext.diffuse`.
    """
    r, out_rate = diffuse_step_rates(u0, rates)
    u = u0.clone()
    for _ in range(steps):
        u = diffuse_step(u, r, out_rate, tau)
    return u


def diffuse_step_rates(u0: torch.Tensor, rates: torch.Tensor):
    """``(r, out_rate)``: the rates with the flows off the image zeroed, ``(N, 4, H, W)``, and each
    pixel's total outflow rate, ``(N, H, W)``; what every :func:`diffuse_step` reads."""
    r = rates * boundary_mask(u0.shape, rates.dtype, rates.device)
    return r, r.sum(1)


def diffuse_step(u: torch.Tensor, r: torch.Tensor, out_rate: torch.Tensor, tau: float) -> torch.Tensor:
    """One explicit step ``u - tau * out_rate * u + tau * inflow``; ``r`` and ``out_rate`` from
    :func:`diffuse_step_rates`. The neighbours' flows are added into slices in place, the
    quickest form in eager mode."""
    flow = r * u.unsqueeze(1)  # (N, 4, H, W): mass leaving p toward q_d(p) per unit time
    inflow = torch.zeros_like(u)
    inflow[:, :, 1:] += flow[:, 0, :, :-1]  # from the west neighbour, moving east
    inflow[:, :, :-1] += flow[:, 1, :, 1:]  # from the east neighbour, moving west
    inflow[:, 1:, :] += flow[:, 2, :-1, :]  # from the north neighbour, moving south
    inflow[:, :-1, :] += flow[:, 3, 1:, :]  # from the south neighbour, moving north
    return u - tau * out_rate * u + tau * inflow


def diffuse_step_padded(u: torch.Tensor, r: torch.Tensor, out_rate: torch.Tensor, tau: float) -> torch.Tensor:
    """:func:`diffuse_step` with the flows shifted by padding: one pure expression, the form
    ``torch.compile`` fuses into a single kernel (the in-place form compiles to several and runs
    a few times slower; eager, this form is the slower one)."""
    flow = r * u.unsqueeze(1)
    pad = torch.nn.functional.pad
    inflow = (pad(flow[:, 0, :, :-1], (1, 0))          # from the west neighbour
              + pad(flow[:, 1, :, 1:], (0, 1))         # from the east neighbour
              + pad(flow[:, 2, :-1, :], (0, 0, 1, 0))  # from the north neighbour
              + pad(flow[:, 3, 1:, :], (0, 0, 0, 1)))  # from the south neighbour
    return u - tau * out_rate * u + tau * inflow


def soft_iou_of_probabilities(p: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``(N,)`` per-sample soft-IoU loss of probability maps ``p`` (no sigmoid) against ``target``,
    both ``(N, ...)``; twice differentiable."""
    n = p.shape[0]
    m = p[0].numel() if n else 0  # reshape(0, -1) is ambiguous
    p, t = p.reshape(n, m), target.reshape(n, m)
    inter = (p * t).sum(1)
    union = p.sum(1) + t.sum(1) - inter
    return 1 - (inter + smooth) / (union + smooth)


def soft_iou_reference(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``(N,)`` per-sample soft-IoU loss, as :func:`d2d_ext.soft_iou`."""
    return soft_iou_of_probabilities(torch.sigmoid(logits), target, smooth)
