"""Uniform box measure: moments, log-density, validation."""

import numpy as np
import pytest
import scipy.stats
import torch

from wheretolearn.measures import Uniform


def test_moments_and_samples():
    u = Uniform(torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64),
                torch.tensor([1.0, 3.0, 2.5], dtype=torch.float64))
    x = u.sample(200_000, generator=0)
    assert x.shape == (200_000, 3)
    assert bool(((x >= u.low) & (x <= u.high)).all())
    assert torch.allclose(x.mean(0), u.mean, atol=0.01)
    assert torch.allclose(torch.cov(x.T), u.cov, atol=0.01)
    assert float((x ** 2).sum(1).mean()) == pytest.approx(float(u.second_moment()), rel=0.01)
    np.testing.assert_allclose(u.cov.diagonal().numpy(),
                               scipy.stats.uniform(u.low.numpy(), (u.high - u.low).numpy()).var())


def test_scalars_with_dim_and_log_prob():
    u = Uniform(0.0, 2.0, dim=2, dtype="float64")
    assert u.event_shape == (2,)
    lp = u.log_prob(torch.tensor([[1.0, 1.0], [1.0, 2.5], [-0.1, 0.5]]))
    assert float(lp[0]) == pytest.approx(-np.log(4.0))
    assert lp[1] == -np.inf and lp[2] == -np.inf
    assert float(u.second_moment()) == pytest.approx(2 * 4 / 3)


def test_validation():
    with pytest.raises(ValueError, match="dim must be given"):
        Uniform(0.0, 1.0)
    with pytest.raises(ValueError, match=r"low=1.0 >= high=1.0 in dimension 1"):
        Uniform([0.0, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="finite"):
        Uniform([0.0, float("nan")], [1.0, 1.0])
    with pytest.raises(ValueError, match="shape"):
        Uniform(0.0, 1.0, dim=2).log_prob(torch.zeros(3))


def test_same_seed_same_samples_and_inputs_untouched():
    low = torch.tensor([0.0, -1.0])
    u = Uniform(low, torch.tensor([1.0, 1.0]))
    assert torch.equal(u.sample(7, generator=4), u.sample(7, generator=4))
    assert torch.equal(low, torch.tensor([0.0, -1.0]))
