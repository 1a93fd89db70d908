"""Gaussian measure: sampling moments, log-density vs scipy, validation, no mutation."""

import numpy as np
import pytest
import scipy.stats
import torch

from wheretolearn.measures import DIAG_CLAMP, Gaussian, Measure, clamp_scale_tril


def _spd(d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=dtype)
    return a @ a.T + 0.5 * torch.eye(d, dtype=dtype)


def test_is_measure_with_event_shape():
    g = Gaussian(torch.zeros(3), torch.eye(3))
    assert isinstance(g, Measure)
    assert g.event_shape == (3,)


def test_sample_moments_match_parameters():
    m = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    c = _spd(3, 0)
    x = Gaussian(m, c).sample(200_000, generator=1)
    assert x.shape == (200_000, 3) and x.dtype == torch.float64
    assert torch.allclose(x.mean(0), m, atol=0.02)
    emp = torch.cov(x.T)
    assert torch.allclose(emp, c, atol=0.05 * float(c.abs().max()))


def test_same_seed_same_samples():
    g = Gaussian(torch.zeros(2), torch.eye(2))
    assert torch.equal(g.sample(5, generator=7), g.sample(5, generator=7))
    assert not torch.equal(g.sample(5, generator=7), g.sample(5, generator=8))


def test_log_prob_matches_scipy():
    m = np.array([0.3, -1.0, 2.0])
    c = _spd(3, 2).numpy()
    g = Gaussian(torch.tensor(m), torch.tensor(c))
    x = np.random.default_rng(0).normal(size=(10, 3))
    ref = scipy.stats.multivariate_normal(m, c).logpdf(x)
    np.testing.assert_allclose(g.log_prob(torch.tensor(x)).numpy(), ref, rtol=1e-12, atol=1e-12)


def test_second_moment_closed_form():
    m = torch.tensor([1.0, 2.0], dtype=torch.float64)
    c = _spd(2, 3)
    assert float(Gaussian(m, c).second_moment()) == pytest.approx(float(m @ m + torch.trace(c)))


def test_score_by_autograd_matches_analytic():
    m = torch.tensor([0.5, -0.5], dtype=torch.float64, requires_grad=True)
    c = _spd(2, 4)
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    Gaussian(m, c).log_prob(x).sum().backward()
    expected = torch.linalg.solve(c, (x[0] - m.detach()))
    assert torch.allclose(m.grad, expected)


def test_non_spd_cov_names_smallest_eigenvalue():
    with pytest.raises(ValueError, match=r"cov must be symmetric positive definite.*-1"):
        Gaussian(torch.zeros(2), torch.tensor([[1.0, 0.0], [0.0, -1.0]]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(mean=torch.zeros(2), cov=torch.eye(3)), "cov must have shape"),
    (dict(mean=torch.zeros(2, 1), cov=torch.eye(2)), "mean must be a"),
    (dict(mean=torch.tensor([0.0, float("nan")]), cov=torch.eye(2)), "mean must be finite"),
    (dict(mean=torch.zeros(2), cov=torch.tensor([[1.0, float("nan")], [0.0, 1.0]])), "finite"),
    (dict(mean=torch.zeros(2)), "exactly one"),
    (dict(mean=torch.zeros(2), scale_tril=torch.tensor([[1.0, 1.0], [0.0, 1.0]])), "lower"),
    (dict(mean=torch.zeros(2), scale_tril=torch.tensor([[1.0, 0.0], [0.0, 0.0]])), "positive"),
])
def test_validation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Gaussian(**kwargs)


def test_bad_sample_count():
    with pytest.raises(ValueError, match="n must be a positive integer"):
        Gaussian(torch.zeros(2), torch.eye(2)).sample(0)


def test_inputs_not_mutated():
    m, c = torch.tensor([1.0, 2.0]), _spd(2, 5, torch.float32)
    m0, c0 = m.clone(), c.clone()
    g = Gaussian(m, c)
    g.sample(10, generator=0)
    g.log_prob(torch.zeros(3, 2))
    assert torch.equal(m, m0) and torch.equal(c, c0)


def test_clamp_scale_tril_returns_new_valid_factor():
    L = torch.tensor([[-1.0, 5.0], [3.0, 0.0]])
    L0 = L.clone()
    out = clamp_scale_tril(L)
    assert torch.equal(L, L0)
    assert torch.equal(out, torch.tensor([[DIAG_CLAMP, 0.0], [3.0, DIAG_CLAMP]]))
    Gaussian(torch.zeros(2), scale_tril=out)  # now a valid parametrisation
    batched = clamp_scale_tril(torch.stack([L, -L]))
    assert torch.equal(batched[0], out)
    with pytest.raises(ValueError, match="min_diag"):
        clamp_scale_tril(L, min_diag=0.0)


def test_dict_round_trip():
    g = Gaussian(torch.tensor([1.0, 2.0], dtype=torch.float64), _spd(2, 6))
    back = Gaussian.from_dict(g.to_dict(), dtype="float64")
    assert torch.allclose(back.mean, g.mean) and torch.allclose(back.cov, g.cov, atol=1e-12)
    with pytest.raises(ValueError, match="keys 'mean' and 'cov'"):
        Gaussian.from_dict({"mean": [0.0]})
