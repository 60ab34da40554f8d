"""``torch.compile`` of the plain-torch formulas: the one line a user would write instead of our ops.

The diffusion compiles one step and loops it in Python, as a user would: compiling the whole
64-step loop unrolls it into one graph that takes minutes to build. Each factory returns a fresh
compiled function, so one benchmark's shapes never crowd another's out of the compile cache.
"""

import torch

from d2d_ext.reference import diffuse_step_padded, diffuse_step_rates, soft_iou_reference


def compiled_diffuse():
    """A ``diffuse(u0, rates, tau, steps)`` that loops a compiled step, in the form that compiles
    best (:func:`~d2d_ext.reference.diffuse_step_padded`)."""
    step = torch.compile(diffuse_step_padded, dynamic=False)

    def diffuse(u0, rates, tau, steps):
        r, out_rate = diffuse_step_rates(u0, rates)
        u = u0.clone()
        for _ in range(steps):
            u = step(u, r, out_rate, tau)
        return u

    return diffuse


def compiled_soft_iou():
    """``soft_iou(logits, target, smooth)``: :func:`soft_iou_reference` compiled whole."""
    return torch.compile(soft_iou_reference, dynamic=False)
