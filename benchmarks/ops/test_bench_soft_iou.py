"""d2d.soft_iou against autograd through the plain-torch formula, eager and torch.compile'd, side
by side."""

import pytest
import torch

import d2d_ext
from d2d_ext.reference import soft_iou_reference

from gpu_limits import soft_iou_traffic
from cases import measure, soft_iou_cases, soft_iou_inputs, sync
from compiled import compiled_soft_iou

# impl -> a factory of the function (torch.compile's is built afresh for each benchmark)
IMPLS = {"d2d": lambda: d2d_ext.soft_iou, "torch-reference": lambda: soft_iou_reference, "torch-compile": compiled_soft_iou}


@pytest.mark.parametrize("device,shape", soft_iou_cases(), ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v)
@pytest.mark.parametrize("grads", ["logits", "logits+target"])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_soft_iou_forward_backward(benchmark, impl, grads, device, shape):
    logits, target = soft_iou_inputs(device, shape)
    logits.requires_grad_(True)
    inputs = [logits]
    if grads == "logits+target":
        target.requires_grad_(True)
        inputs.append(target)
    fn = IMPLS[impl]()
    benchmark.group = f"soft-IoU forward+backward ({grads}), {'x'.join(map(str, shape))}, {device}"
    benchmark.extra_info["elements"] = logits.numel()
    if device == "cuda" and impl == "d2d":  # the GPU limit it is held against (report.py)
        benchmark.extra_info["traffic"] = soft_iou_traffic(logits.numel(), logits.element_size(), len(inputs) == 2)

    def run():
        out = torch.autograd.grad(fn(logits, target, 1.0).sum(), inputs)
        sync(device)
        return out

    out = measure(benchmark, run)
    assert out[0].shape == logits.shape
