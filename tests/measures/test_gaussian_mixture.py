"""Gaussian mixtures: density against scipy, the closed-form score against autograd, sampling,
k-means (issue 25)."""

import numpy as np
import pytest
import torch
from scipy import stats

from wheretolearn.measures import (Gaussian, GaussianMixture, Mixture, gaussian_mixture_sample,
                                   gaussian_mixture_score, kmeans, kmeans_mixture)

F64 = torch.float64


def _mixture(k=3, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(k, generator=g, dtype=F64)
    means = 1.5 * torch.randn(k, d, generator=g, dtype=F64)
    trils = torch.tril(0.3 * torch.randn(k, d, d, generator=g, dtype=F64), -1)
    trils = trils + torch.diag_embed(0.5 + torch.rand(k, d, generator=g, dtype=F64))
    return logits, means, trils


def test_log_prob_and_responsibilities_match_scipy():
    logits, means, trils = _mixture()
    mix = GaussianMixture(torch.softmax(logits, 0), means, scale_tril=trils)
    x = torch.randn(7, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    w = torch.softmax(logits, 0).numpy()
    dens = np.stack([w[k] * stats.multivariate_normal(means[k].numpy(),
                                                      (trils[k] @ trils[k].T).numpy()).pdf(x)
                     for k in range(3)], 1)
    np.testing.assert_allclose(mix.log_prob(x).numpy(), np.log(dens.sum(1)), rtol=1e-12)
    np.testing.assert_allclose(mix.responsibilities(x).numpy(), dens / dens.sum(1, keepdims=True),
                               rtol=1e-10)
    assert isinstance(mix, Mixture) and mix.n_components == 3 and mix.dim == 3
    # total moments by the law of total covariance (Mixture.cov) equal the sample moments
    s = mix.sample(200_000, generator=2)
    np.testing.assert_allclose(s.mean(0).numpy(), mix.mean.numpy(), atol=0.03)
    np.testing.assert_allclose(np.cov(s.numpy().T), mix.cov.numpy(), atol=0.08)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_score_matches_autograd(k):
    logits, means, trils = _mixture(k=k, seed=k)
    x = torch.randn(25, 3, dtype=F64, generator=torch.Generator().manual_seed(3)) * 2.0
    c = torch.randn(25, dtype=F64, generator=torch.Generator().manual_seed(4))
    got = gaussian_mixture_score(x, c, logits, means, trils)
    params = [t.clone().requires_grad_(True) for t in (logits, means, trils)]
    logp = GaussianMixture(torch.softmax(params[0], 0), params[1],
                           scale_tril=params[2]).log_prob(x)
    ref = torch.autograd.grad(c @ logp, params)
    for a, b in zip(got, (ref[0], ref[1], torch.tril(ref[2]))):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-12)
    assert float(got[0].sum()) == pytest.approx(0.0, abs=1e-12)  # shift-invariant softmax


def test_score_with_the_draws_latents_is_the_same_score():
    logits, means, trils = _mixture(k=3, seed=5)
    x, labels, z = gaussian_mixture_sample(torch.softmax(logits, 0), means, trils, 40,
                                           generator=6)
    c = torch.randn(40, dtype=F64, generator=torch.Generator().manual_seed(7))
    plain = gaussian_mixture_score(x, c, logits, means, trils)
    exact = gaussian_mixture_score(x, c, logits, means, trils, labels=labels, latent=z)
    for a, b in zip(plain, exact):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="both labels and latent"):
        gaussian_mixture_score(x, c, logits, means, trils, labels=labels)


def test_sampling_follows_the_weights_and_one_component_is_the_gaussian():
    g = Gaussian(torch.tensor([0.5, -1.0]), torch.tensor([[2.0, 0.3], [0.3, 1.0]]))
    one = GaussianMixture(torch.ones(1), g.mean[None], scale_tril=g.scale_tril[None])
    assert torch.equal(one.sample(50, generator=11), g.sample(50, generator=11))
    _, means, trils = _mixture(k=3, seed=8)
    mix = GaussianMixture(torch.tensor([0.2, 0.5, 0.3], dtype=F64), means, scale_tril=trils)
    x, labels = mix.sample_with_labels(40_000, generator=9)
    freq = torch.bincount(labels, minlength=3).double() / 40_000
    np.testing.assert_allclose(freq.numpy(), [0.2, 0.5, 0.3], atol=0.01)   # ~4 sd
    # each draw is m_k + L_k z with its own component: whitened draws are N(0, I)
    z = torch.stack([torch.linalg.solve_triangular(trils[k], (x[i] - means[k])[:, None],
                                                   upper=False)[:, 0]
                     for i, k in enumerate(labels[:2000].tolist())])
    np.testing.assert_allclose(z.mean(0).numpy(), 0.0, atol=0.1)
    np.testing.assert_allclose(np.cov(z.numpy().T), np.eye(3), atol=0.12)
    assert torch.equal(mix.sample(30, generator=1), mix.sample(30, generator=1))


def test_dict_round_trip_and_validation():
    logits, means, trils = _mixture(k=2, seed=10)
    mix = GaussianMixture(torch.softmax(logits, 0), means, scale_tril=trils)
    back = GaussianMixture.from_dict(mix.to_dict(), dtype=F64)
    np.testing.assert_allclose(back.covs.numpy(), mix.covs.numpy(), rtol=1e-12)
    np.testing.assert_allclose(back.weights.numpy(), mix.weights.numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="exactly one of cov or scale_tril"):
        GaussianMixture(torch.ones(2), means)
    with pytest.raises(ValueError, match=r"scale_tril must have shape \(2, 3, 3\)"):
        GaussianMixture(torch.ones(2), means, scale_tril=trils[:1])
    with pytest.raises(ValueError, match="weights must have shape"):
        GaussianMixture(torch.ones(3), means, scale_tril=trils)
    with pytest.raises(ValueError, match="positive diagonal"):
        GaussianMixture(torch.ones(2), means, scale_tril=-trils)


def test_kmeans_finds_separated_clusters_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-5.0, 0.0], [5.0, 0.0], [0.0, 6.0]], dtype=F64)
    x = torch.cat([c + 0.5 * torch.randn(100, 2, generator=g, dtype=F64) for c in centres])
    found, labels = kmeans(x, 3, generator=1)
    order = found[:, 0].argsort()
    np.testing.assert_allclose(found[order].numpy(),
                               centres[torch.tensor([0, 2, 1])].numpy(), atol=0.15)
    assert sorted(torch.bincount(labels).tolist()) == [100, 100, 100]
    again, _ = kmeans(x, 3, generator=1)
    assert torch.equal(found, again)
    mix = kmeans_mixture(x, 3, generator=1)
    np.testing.assert_allclose(mix.weights.numpy(), [1 / 3] * 3, rtol=1e-12)
    np.testing.assert_allclose(mix.covs[0].numpy(), 0.25 * np.eye(2), atol=0.1)
    with pytest.raises(ValueError, match="k must be at most the number of points 300"):
        kmeans(x, 301)
