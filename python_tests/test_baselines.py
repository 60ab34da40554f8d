"""Tests of d2d_ext.baselines: the Monte Carlo walk and the simple annotation baselines."""

import numpy as np
import pytest
import torch

import d2d_ext
from d2d_ext.annotate import AnnotatorConfig, DiffusionParams, prepare_targets, target_rates
from d2d_ext.baselines import (
    local_threshold_masks,
    monte_carlo_labels,
    monte_carlo_masks,
    monte_carlo_walk,
    point_masks,
    superpixel_masks,
)
from d2d_ext.synthetic import make_scene

P_MANY = 20000


@pytest.fixture(scope="module")
def scene():
    return make_scene(3, height=64, width=64, n_targets=2)


@pytest.fixture(scope="module")
def batch(scene):
    return prepare_targets([scene.image], [scene.points], AnnotatorConfig())


@pytest.fixture(scope="module")
def theta():
    with torch.no_grad():
        return DiffusionParams()()


def one_hot(peak, T, S, dtype):
    u0 = torch.zeros(T, S, S, dtype=dtype)
    u0[torch.arange(T), torch.as_tensor(peak[:, 0]), torch.as_tensor(peak[:, 1])] = 1.0
    return u0


def assert_binomial_match(counts, expected, particles):
    """Every pixel's frequency within 5 binomial standard errors (+1e-3) of its probability."""
    est = counts / particles
    p = np.clip(expected, 0.0, 1.0)
    tol = 5.0 * np.sqrt(p * (1.0 - p) / particles) + 1e-3
    err = np.abs(est - expected)
    worst = np.unravel_index(np.argmax(err - tol), err.shape)
    assert (err <= tol).all(), f"MC frequency {est[worst]:.5f} vs diffuse {expected[worst]:.5f} at {worst}"


def test_walk_matches_diffuse_on_annotator_rates(batch, theta):
    cfg = AnnotatorConfig()
    assert len(batch) == 2
    rates = target_rates(batch, theta).detach()
    T, S = len(batch), rates.shape[-1]
    u = d2d_ext.diffuse(one_hot(batch.peak, T, S, rates.dtype), rates, 1.0, cfg.steps).double().numpy()
    counts = monte_carlo_walk(rates, batch.peak, cfg.steps, P_MANY, seed=1)
    assert counts.shape == (T, S, S) and counts.dtype == np.int64
    np.testing.assert_array_equal(counts.sum(axis=(1, 2)), P_MANY)
    assert u.max() < 0.999  # the heat really moved: the comparison is not trivial
    assert_binomial_match(counts, u, P_MANY)


def test_walk_matches_diffuse_on_random_asymmetric_rates():
    # Strongly asymmetric rates (drift) and junk in the channels that point out of the crop:
    # a swapped direction or an unignored boundary channel would be far outside the tolerance.
    g = torch.Generator().manual_seed(0)
    T, S, steps = 2, 9, 12
    rates = torch.rand((T, 4, S, S), dtype=torch.float64, generator=g) * torch.tensor([0.4, 0.05, 0.3, 0.1]).view(1, 4, 1, 1).double()
    peak = np.array([[4, 4], [0, 8]])
    u = d2d_ext.diffuse(one_hot(peak, T, S, rates.dtype), rates, 1.0, steps).numpy()
    counts = monte_carlo_walk(rates, peak, steps, P_MANY, seed=2)
    np.testing.assert_array_equal(counts.sum(axis=(1, 2)), P_MANY)
    assert_binomial_match(counts, u, P_MANY)
    # Per-target step counts: each target's walkers stop after their own count.
    u3 = d2d_ext.diffuse(one_hot(peak, T, S, rates.dtype), rates, 1.0, 3).numpy()
    counts = monte_carlo_walk(rates, peak, np.array([3, steps]), P_MANY, seed=3)
    assert_binomial_match(counts, np.stack([u3[0], u[1]]), P_MANY)


def test_walk_zero_steps_and_validation():
    rates = np.full((1, 4, 5, 5), 0.2)
    counts = monte_carlo_walk(rates, np.array([[1, 3]]), 0, 10)
    assert counts[0, 1, 3] == 10 and counts.sum() == 10
    counts = monte_carlo_walk(np.concatenate([rates, rates]), np.array([[1, 3], [2, 2]]), np.array([0, 4]), 50)
    assert counts[0, 1, 3] == 50 and counts[1, 2, 2] < 50 and counts.sum() == 100
    with pytest.raises(ValueError):
        monte_carlo_walk(np.full((1, 4, 5, 5), 0.3), np.array([[2, 2]]), 3, 10)  # sum 1.2 > 1 inside
    with pytest.raises(ValueError):
        monte_carlo_walk(rates, np.array([[2, 2], [1, 1]]), 3, 10)  # 1 target, 2 peaks


def test_labels_seeded(batch, theta):
    a = monte_carlo_labels(batch, theta, particles=200, seed=5)
    b = monte_carlo_labels(batch, theta, particles=200, seed=5)
    c = monte_carlo_labels(batch, theta, particles=200, seed=6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_labels_walk_matches_per_target_steps(batch, theta):
    # The annotator may give targets different step counts (large targets diffuse longer); the
    # walk of each target must then match diffuse run for that target's own count.
    rates = target_rates(batch, theta).detach()
    T, S = len(batch), rates.shape[-1]
    steps = getattr(batch, "steps", np.full(T, AnnotatorConfig().steps))
    u0 = one_hot(batch.peak, T, S, rates.dtype)
    u = np.stack([d2d_ext.diffuse(u0[t:t + 1], rates[t:t + 1], 1.0, int(steps[t]))[0].double().numpy() for t in range(T)])
    counts = monte_carlo_walk(rates, batch.peak, steps, P_MANY, seed=0)
    assert_binomial_match(counts, u, P_MANY)


def test_labels_fuse_exactly_as_soft_labels(batch, theta, monkeypatch):
    # Hand soft_labels the walk's histogram in place of diffuse's field: it must then return
    # exactly monte_carlo_labels (same normalisation, rho, superpixel prior, per-target steps).
    import d2d_ext.annotate as annotate

    cfg = AnnotatorConfig()
    seed, P = 4, 500
    rates = target_rates(batch, theta).detach()
    steps = getattr(batch, "steps", cfg.steps)
    field = torch.from_numpy(monte_carlo_walk(rates, batch.peak, steps, P, seed)).float() / P
    calls = []

    def fake_diffuse(u0, r, tau, k):
        # soft_labels diffuses each step count on a central crop of the batch's crops
        c, h = rates.shape[-1] // 2, r.shape[-1] // 2
        centre = (slice(None), slice(c - h, c + h + 1), slice(c - h, c + h + 1))
        rows = [next(t for t in range(len(batch)) if torch.equal(r[i], rates[t][centre])) for i in range(r.shape[0])]
        calls.append(k)
        return field[rows][centre].to(u0.dtype)

    monkeypatch.setattr(annotate, "diffuse", fake_diffuse)
    expected = annotate.soft_labels(batch, theta).detach()
    assert calls, "soft_labels no longer calls annotate.diffuse: update this test"
    mc = monte_carlo_labels(batch, theta, cfg, particles=P, seed=seed)
    assert mc.shape == expected.shape and mc.dtype == expected.dtype == torch.float32
    assert float(mc.min()) >= 0.0
    torch.testing.assert_close(mc.amax(dim=(1, 2)), torch.ones(len(batch)))
    torch.testing.assert_close(mc, expected, rtol=1e-6, atol=1e-6)
    # Fewer particles: a different (noisier) label.
    assert not torch.equal(monte_carlo_labels(batch, theta, cfg, particles=20, seed=seed), mc)


def test_labels_empty_batch(theta):
    img = np.zeros((32, 32), np.float32)
    empty = prepare_targets([img], [np.zeros((0, 2))])
    out = monte_carlo_labels(empty, theta)
    assert out.shape[0] == 0
    masks = monte_carlo_masks([img], [np.zeros((0, 2))], particles=10)
    assert len(masks) == 1 and masks[0].shape == (32, 32) and not masks[0].any()


def _near_points(mask, points, radius):
    """Whether every True pixel lies within Chebyshev distance ``radius`` of one of the points."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return True
    px = np.floor(points[:, 0] + 0.5)
    py = np.floor(points[:, 1] + 0.5)
    d = np.maximum(np.abs(ys[:, None] - py[None]), np.abs(xs[:, None] - px[None])).min(1)
    return bool((d <= radius).all())


@pytest.mark.parametrize("method", ["superpixel", "local", "mc", "point"])
def test_masks_hold_points_and_stay_local(method):
    scenes = [make_scene(s, height=96, width=112, n_targets=2) for s in (11, 12)]
    images = [sc.image for sc in scenes] + [np.zeros((40, 48), np.float32)]
    points = [sc.points for sc in scenes] + [np.zeros((0, 2))]
    if method == "superpixel":
        masks, radius = superpixel_masks(images, points), max(AnnotatorConfig().half_sizes) + 1
    elif method == "local":
        masks, radius = local_threshold_masks(images, points), 7
    elif method == "mc":
        masks, radius = monte_carlo_masks(images, points, particles=100), AnnotatorConfig().field_half_max + 1
    else:
        masks, radius = point_masks(images, points), 0
    assert isinstance(masks, list) and len(masks) == 3
    if method == "superpixel":
        # The prior is the segment of the snapped peak (brightest pixel of the point's 3x3), which
        # need not hold the clicked pixel itself: check the peak, and the point within 1 pixel.
        batch = prepare_targets(images, points)
        for b, (oy, ox), (py, px) in zip(batch.image_index, batch.origin, batch.peak):
            assert masks[b][oy + py, ox + px], "superpixel: the snapped peak is not in its mask"
    for mask, image, pts in zip(masks, images, points):
        assert isinstance(mask, np.ndarray) and mask.dtype == bool and mask.shape == image.shape
        for x, y in pts:
            row, col = int(np.floor(y + 0.5)), int(np.floor(x + 0.5))
            held = mask[row - 1:row + 2, col - 1:col + 2].any() if method == "superpixel" else mask[row, col]
            assert held, f"{method}: point ({x}, {y}) not in its mask"
        assert _near_points(mask, pts, radius), f"{method}: mask pixels far from every point"
        assert mask.sum() < 0.2 * mask.size
    assert not masks[2].any()


def test_local_threshold_component_of_the_point():
    img = np.zeros((40, 40), np.float32)
    img[10:13, 10:13] = 1.0  # the target
    img[10:12, 15:17] = 1.0  # a second blob inside the 15x15 box, not connected
    img[30, 30] = 1.0  # far away
    (mask,) = local_threshold_masks([img], [np.array([[11.2, 10.8]])])
    expected = np.zeros_like(mask)
    expected[10:13, 10:13] = True
    np.testing.assert_array_equal(mask, expected)
    # A point below the threshold: the point pixel alone.
    (mask,) = local_threshold_masks([img], [np.array([[25.0, 5.0]])])
    assert mask.sum() == 1 and mask[5, 25]
    # A large k leaves nothing above the threshold.
    (mask,) = local_threshold_masks([img], [np.array([[11.0, 11.0]])], k=10.0)
    assert mask.sum() == 1 and mask[11, 11]
