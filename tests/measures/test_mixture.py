"""Mixture of measures: moments by the law of total covariance, sampling proportions, seeds."""

import numpy as np
import pytest
import torch

from wheretolearn.measures import Gaussian, Mixture, Uniform

f64 = torch.float64


def _mix():
    g1 = Gaussian(torch.tensor([0.0, 0.0], dtype=f64), torch.tensor([[1.0, 0.3], [0.3, 0.5]],
                                                                    dtype=f64))
    g2 = Gaussian(torch.tensor([3.0, -1.0], dtype=f64), torch.diag(torch.tensor([0.2, 2.0],
                                                                                dtype=f64)))
    u = Uniform(torch.tensor([0.0, 1.0], dtype=f64), torch.tensor([2.0, 4.0], dtype=f64))
    return Mixture([g1, g2, u], [0.5, 0.3, 0.2])


def test_moments_match_hand_computation():
    mix = _mix()
    means = np.array([[0, 0], [3, -1], [1, 2.5]])
    covs = [np.array([[1, 0.3], [0.3, 0.5]]), np.diag([0.2, 2.0]), np.diag([4 / 12, 9 / 12])]
    w = np.array([0.5, 0.3, 0.2])
    m = w @ means
    c = sum(wj * (cj + np.outer(mj, mj)) for wj, cj, mj in zip(w, covs, means)) - np.outer(m, m)
    np.testing.assert_allclose(mix.mean.numpy(), m, atol=1e-14)
    np.testing.assert_allclose(mix.cov.numpy(), c, atol=1e-14)
    assert float(mix.second_moment()) == pytest.approx(np.trace(c) + m @ m, rel=1e-12)


def test_sample_moments_and_component_proportions():
    mix = _mix()
    x, lab = mix.sample_with_labels(200_000, generator=0)
    assert x.shape == (200_000, 2)
    np.testing.assert_allclose(np.bincount(lab.numpy()) / 200_000, [0.5, 0.3, 0.2], atol=0.005)
    assert torch.allclose(x.mean(0), mix.mean, atol=0.02)
    assert torch.allclose(torch.cov(x.T), mix.cov, atol=0.05)
    # samples labelled 2 come from the uniform box
    box = x[lab == 2]
    assert bool(((box >= torch.tensor([0.0, 1.0])) & (box <= torch.tensor([2.0, 4.0]))).all())
    # shuffled: labels are not sorted
    assert not bool((lab[1:] >= lab[:-1]).all())


def test_same_seed_same_samples_and_default_weights():
    mix = Mixture([Gaussian(torch.zeros(1), torch.eye(1)), Gaussian(torch.ones(1), torch.eye(1))])
    assert torch.allclose(mix.weights, torch.tensor([0.5, 0.5]))
    assert torch.equal(mix.sample(50, generator=3), mix.sample(50, generator=3))


def test_validation():
    g = Gaussian(torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="event_shape"):
        Mixture([g, Gaussian(torch.zeros(3), torch.eye(3))])
    with pytest.raises(ValueError, match=r"weights must have shape \(2,\)"):
        Mixture([g, g], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="non-negative"):
        Mixture([g, g], [1.0, -1.0])
    with pytest.raises(TypeError, match=r"components\[0\]"):
        Mixture([object()])
    with pytest.raises(ValueError, match="at least one"):
        Mixture([])
