"""Empirical measures: moments, weighted resampling, quadrature weights, validation."""

import numpy as np
import pytest
import torch

from wheretolearn.measures import Empirical


def test_second_moment_and_mean_weighted():
    pts = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], dtype=torch.float64)
    e = Empirical(pts, [1.0, 1.0, 2.0])
    assert torch.allclose(e.weights, torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64))
    assert float(e.second_moment()) == pytest.approx(0.25 * 1 + 0.25 * 4 + 0.5 * 18)
    assert torch.allclose(e.mean, torch.tensor([1.75, 2.0], dtype=torch.float64))


def test_resampling_follows_weights_and_seed():
    e = Empirical(torch.arange(3.0)[:, None], [0.2, 0.3, 0.5])
    s = e.sample(100_000, generator=0)
    assert s.shape == (100_000, 1)
    np.testing.assert_allclose(np.bincount(s[:, 0].long().numpy()) / 1e5, [0.2, 0.3, 0.5],
                               atol=0.006)
    assert torch.equal(e.sample(20, generator=5), e.sample(20, generator=5))


def test_field_points_with_quadrature_weights():
    pts = torch.ones(4, 3, 3)
    q = torch.full((3, 3), 0.25)
    e = Empirical(pts, quadrature_weights=q)
    assert e.event_shape == (3, 3)
    assert float(e.second_moment()) == pytest.approx(9 * 0.25)


def test_validation_and_no_mutation():
    pts = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"weights must have shape \(3,\)"):
        Empirical(pts, [1.0, 2.0])
    with pytest.raises(ValueError, match="non-negative"):
        Empirical(pts, [1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="points must be finite"):
        Empirical(torch.tensor([[0.0], [float("inf")]]))
    with pytest.raises(ValueError, match="1-D"):
        Empirical(torch.zeros(5))
    w = torch.tensor([1.0, 1.0, 2.0])
    Empirical(pts, w)
    assert torch.equal(w, torch.tensor([1.0, 1.0, 2.0]))
