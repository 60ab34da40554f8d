"""d2d_ext.nn.SoftIoULoss and the probability path of the soft-IoU kernels: the conventions of
ISTD codebases, against their formulas written out here."""

import pytest
import torch

from conftest import make_generator
from d2d_ext.nn import SoftIoULoss
from d2d_ext.reference import soft_iou_of_probabilities

OPS = torch.ops.d2d


def probabilities(shape, dtype=torch.float64, seed=0):
    g = make_generator(seed)
    p = torch.rand(shape, dtype=torch.float64, generator=g).to(dtype)
    t = (torch.rand(shape, dtype=torch.float64, generator=g) > 0.8).to(dtype)
    return p, t


def basicirstd_soft_iou(preds, gt):
    """BasicIRSTD / LESPS ``SoftIoULoss`` as they define it: probabilities, one IoU over the whole
    batch with smooth 1, deep-supervision outputs averaged."""
    outputs = preds if isinstance(preds, (list, tuple)) else [preds]
    total = 0
    for pred in outputs:
        inter = pred * gt
        total = total + 1 - (inter.sum() + 1) / (pred.sum() + gt.sum() - inter.sum() + 1)
    return total / len(outputs)


def mshnet_soft_iou(pred, target):
    """MSHNet's ``SoftLoULoss``: probabilities, per-sample IoU over (C, H, W) with smooth 0.1,
    one minus their mean."""
    inter = (pred * target).sum(dim=(1, 2, 3))
    iou = (inter + 0.1) / (pred.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) - inter + 0.1)
    return 1 - iou.mean()


def value_and_grads(fn, pred, target):
    """``fn(pred, target)`` and its gradients in both (pred may be a list)."""
    leaves = [p.clone().requires_grad_(True) for p in (pred if isinstance(pred, list) else [pred])]
    t = target.clone().requires_grad_(True)
    loss = fn(leaves if isinstance(pred, list) else leaves[0], t)
    loss.backward(torch.ones_like(loss))  # "none": the sum's gradient
    return loss.detach(), [leaf.grad for leaf in leaves] + [t.grad]


def assert_same(ours, theirs):
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-12, atol=1e-13)
    for a, b in zip(ours[1], theirs[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("deep", [False, True], ids=["one-output", "deep-supervision"])
def test_pooled_probabilities_is_basicirstd(deep):
    p, t = probabilities((4, 1, 16, 20), seed=1)
    pred = [p, probabilities((4, 1, 16, 20), seed=2)[0], p.flip(3)] if deep else p
    ours = value_and_grads(SoftIoULoss("pooled", from_logits=False), pred, t)
    assert_same(ours, value_and_grads(basicirstd_soft_iou, pred, t))


def test_mean_probabilities_is_mshnet():
    p, t = probabilities((5, 1, 12, 9), seed=3)
    ours = value_and_grads(SoftIoULoss("mean", from_logits=False, smooth=0.1), p, t)
    assert_same(ours, value_and_grads(mshnet_soft_iou, p, t))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "pooled"])
def test_from_logits_is_the_sigmoid_of_the_probability_path(reduction):
    g = make_generator(4)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=g) * 3
    t = (torch.rand(3, 1, 8, 8, dtype=torch.float64, generator=g) > 0.7).double()
    ours = value_and_grads(SoftIoULoss(reduction), x, t)
    # the same loss through an explicit sigmoid; x's gradient then comes through autograd
    via_p = value_and_grads(lambda a, b: SoftIoULoss(reduction, from_logits=False)(torch.sigmoid(a), b), x, t)
    assert_same(ours, via_p)


def test_reductions_and_weights():
    p, t = probabilities((4, 2, 6, 7), seed=5)
    per_sample = soft_iou_of_probabilities(p, t, 1.0)
    w = torch.tensor([0.5, 2.0, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(SoftIoULoss("none", from_logits=False)(p, t), per_sample, rtol=1e-12, atol=0)
    torch.testing.assert_close(SoftIoULoss("sum", from_logits=False)(p, t, w), (per_sample * w).sum(), rtol=1e-12, atol=0)
    torch.testing.assert_close(SoftIoULoss("mean", from_logits=False)(p, t, w), (per_sample * w).mean(), rtol=1e-12, atol=0)
    loss = SoftIoULoss("mean")(torch.logit(p.clamp(1e-6, 1 - 1e-6)), t)
    assert loss.dim() == 0  # a scalar: .backward() needs no gradient argument


def test_weight_is_differentiable():
    p, t = probabilities((3, 10), seed=6)
    w = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    SoftIoULoss("sum", from_logits=False)(p, t, w).backward()
    torch.testing.assert_close(w.grad, soft_iou_of_probabilities(p, t, 1.0), rtol=1e-12, atol=0)


def test_bad_settings_and_inputs_are_refused():
    with pytest.raises(ValueError, match="reduction must be one of mean, sum, none, pooled, got 'avg'"):
        SoftIoULoss("avg")
    with pytest.raises(ValueError, match="smooth must be >= 0"):
        SoftIoULoss(smooth=-1)
    p, t = probabilities((3, 10), seed=7)
    with pytest.raises(ValueError, match="weight needs per-sample losses"):
        SoftIoULoss("pooled")(p, t, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"pred and target must have the same shape, got \(3, 10\) and \(3, 9\)"):
        SoftIoULoss("pooled")(p, t[:, :9])
    with pytest.raises(RuntimeError, match="d2d.soft_iou"):
        SoftIoULoss("mean")(p, t[:, :9])


def test_module_repr_names_its_settings():
    assert repr(SoftIoULoss("pooled", from_logits=False)) == "SoftIoULoss(reduction='pooled', from_logits=False, smooth=1.0)"


# --------------------------------------------------------------------------------------------
# The probability path of the ops (from_logits=False)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 5), (2, 1, 40, 130), (1, 9000), (4, 0)], ids=lambda s: "x".join(map(str, s)))
def test_probability_forward_matches_reference(dtype, shape):
    p, t = probabilities(shape, dtype, seed=8)
    loss, sums = OPS.soft_iou_forward(p, t, 1.0, False)
    ref = soft_iou_of_probabilities(p.double(), t.double(), 1.0)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-7)
    torch.testing.assert_close(sums[:, 1], p.double().reshape(shape[0], -1).sum(1), rtol=1e-6, atol=1e-6)


def test_probability_path_gradcheck_and_opcheck():
    p, t = probabilities((3, 2, 4), seed=9)
    p = p.clamp(0.05, 0.95)
    pg, tg = p.clone().requires_grad_(True), t.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: OPS.soft_iou_forward(a, b, 1.0, False)[0], (pg, tg))
    torch.library.opcheck(OPS.soft_iou_forward.default, (pg, tg, 1.0, False))
    _, sums = OPS.soft_iou_forward(p, t, 1.0, False)
    go = torch.randn(3, dtype=torch.float64, generator=make_generator(10))
    for mask in ([True, True], [True, False], [False, True]):
        torch.library.opcheck(OPS.soft_iou_backward.default, (go, p, t, sums, 1.0, mask, False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("from_logits", [True, False])
def test_smooth_zero_with_nothing_predicted_or_labelled(dtype, from_logits):
    """smooth=0, every p and t exactly 0: loss 0 (two empty sets match; the limit smooth -> 0),
    gradient 0, in both dtypes; with something predicted the formula's value, 1."""
    # p is exactly 0 from a probability of 0, or from a logit whose sigmoid underflows (float64
    # below about -745; float32 keeps p >= exp(-87), so its logits never give an exact 0)
    x = torch.zeros(2, 5, dtype=dtype) if not from_logits else torch.full((2, 5), -1000.0, dtype=dtype)
    t = torch.zeros(2, 5, dtype=dtype)
    xg = x.clone().requires_grad_(True)
    loss = OPS.soft_iou_forward(xg, t, 0.0, from_logits)[0]
    empty = not from_logits or dtype == torch.float64
    expected = 0.0 if empty else 1.0
    torch.testing.assert_close(loss, torch.full((2,), expected, dtype=dtype))
    loss.sum().backward()
    assert torch.isfinite(xg.grad).all()
    if empty:
        assert torch.equal(xg.grad, torch.zeros_like(x))


# --------------------------------------------------------------------------------------------
# The fake kernels refuse what the compiled kernels refuse
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, message", [
    (lambda: OPS.diffuse(torch.zeros(1, 3, 3), torch.zeros(1, 4, 3, 3, dtype=torch.float64), 0.5, 1),
     "d2d.diffuse: u0 and rates must have the same dtype"),
    (lambda: OPS.diffuse(torch.zeros(1, 3, 3, dtype=torch.int64), torch.zeros(1, 4, 3, 3, dtype=torch.int64), 0.5, 1),
     "d2d.diffuse: u0 must be float32 or float64"),
    (lambda: OPS.soft_iou_forward(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64), 1.0),
     "d2d.soft_iou: logits and target must have the same dtype"),
    (lambda: OPS.diffuse_backward(torch.zeros(1, 3, 3, dtype=torch.float64), torch.zeros(1, 3, 3),
                                  torch.zeros(1, 4, 3, 3), 0.5, 1),
     "d2d.diffuse_backward: grad_out and u0 must have the same dtype"),
])
def test_fake_kernels_check_dtypes_like_the_kernels(call, message):
    """Eager and under FakeTensorMode (what torch.compile traces with): the same error."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with pytest.raises(RuntimeError, match=message):
        call()
    with FakeTensorMode(), pytest.raises(RuntimeError, match=message):
        call()
