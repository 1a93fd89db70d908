"""KLE Gaussian random fields: bases, spectrum, Monte Carlo covariance, W2 vs POT, gradients."""

import math

import numpy as np
import ot
import pytest
import torch

from wheretolearn.measures import (
    FourierBasis1D, Gaussian, GaussianRandomField, Measure, SineBasis1D, SineBasis2D,
    wasserstein2, wasserstein2_squared,
)

f64 = torch.float64
BASES = [lambda: SineBasis1D(17, 15), lambda: SineBasis2D(9, 7), lambda: FourierBasis1D(16, 7),
         lambda: FourierBasis1D(15, 7, period=3.0)]


@pytest.mark.parametrize("make", BASES)
def test_basis_is_orthonormal_under_its_quadrature(make):
    b = make()
    phi = b.functions.reshape(b.n_terms, -1)
    gram = phi @ (b.quadrature_weights.reshape(-1, 1) * phi.T)
    assert torch.allclose(gram, torch.eye(b.n_terms, dtype=f64), atol=1e-12)
    assert b.functions.shape == (b.n_terms, *b.grid_shape)
    assert b.coordinates().shape[: b.dim] == b.grid_shape


def test_basis_definitions():
    s1 = SineBasis1D(11, 3)
    x = s1.coordinates()
    assert x[0] == 0.0 and x[-1] == 1.0
    np.testing.assert_allclose(s1.functions[2].numpy(), np.sqrt(2) * np.sin(3 * np.pi * x),
                               atol=1e-15)
    np.testing.assert_allclose(s1.laplacian_eigenvalues.numpy(), np.pi ** 2 * np.array([1, 4, 9]))
    s2 = SineBasis2D(6, 2)
    xy = s2.coordinates()
    # term index 1 is (k, l) = (1, 2)
    np.testing.assert_allclose(s2.functions[1].numpy(),
                               2 * np.sin(np.pi * xy[..., 0]) * np.sin(2 * np.pi * xy[..., 1]),
                               atol=1e-14)
    assert float(s2.functions[:, 0, :].abs().max()) == 0.0
    assert float(s2.functions[:, :, -1].abs().max()) == 0.0
    np.testing.assert_allclose(s2.laplacian_eigenvalues.numpy(), np.pi ** 2 * np.array([2, 5, 5, 8]))
    f = FourierBasis1D(8, 3)
    assert f.coordinates()[-1] == pytest.approx(2 * np.pi * 7 / 8)
    np.testing.assert_allclose(f.laplacian_eigenvalues.numpy(), [1, 1, 4, 4, 9, 9])
    np.testing.assert_allclose(f.functions[3].numpy(),
                               np.sqrt(1 / np.pi) * np.sin(2 * f.coordinates()), atol=1e-14)
    assert s1.same_as(SineBasis1D(11, 3)) and not s1.same_as(SineBasis1D(11, 4))
    assert not f.same_as(FourierBasis1D(8, 3, period=1.0))


@pytest.mark.parametrize("call, match", [
    (lambda: SineBasis1D(10, 9), "n_modes must be <= n_points - 2 = 8"),
    (lambda: SineBasis2D(5, 4), "n_modes_per_side must be <= n_side - 2 = 3"),
    (lambda: FourierBasis1D(10, 5), r"n_modes must be <= \(n_points - 1\) // 2 = 4"),
    (lambda: FourierBasis1D(10, 2, period=-1.0), "period"),
    (lambda: GaussianRandomField(SineBasis1D(10, 3), alpha=0.0, tau=1.0), "alpha must be > 0"),
    (lambda: GaussianRandomField(SineBasis1D(10, 3), alpha=2.0, tau=-1.0), "tau must be >= 0"),
    (lambda: GaussianRandomField(SineBasis1D(10, 3), alpha=2.0, tau=1.0, mean=np.zeros(9)),
     r"mean must be a scalar or have the grid shape \(10,\)"),
    (lambda: GaussianRandomField(SineBasis1D(10, 3), alpha=2.0, tau=1.0, sigma=float("nan")),
     "sigma must be finite"),
    (lambda: GaussianRandomField(SineBasis2D(5, 3), alpha=1.0, tau=0.0), "default sigma"),
])
def test_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_spectrum_and_default_sigma():
    b = SineBasis2D(8, 3)
    f = GaussianRandomField(b, alpha=2.0, tau=3.0, dtype="float64")
    assert isinstance(f, Measure) and f.event_shape == (8, 8)
    assert float(f.sigma) == pytest.approx(3.0 ** (2.0 - 1.0))
    mu = b.laplacian_eigenvalues.numpy()
    np.testing.assert_allclose(f.eigenvalues.numpy(), 9.0 * (mu + 9.0) ** -2.0, rtol=1e-13)
    f1 = GaussianRandomField(FourierBasis1D(32, 5), alpha=3.0, tau=1.4, sigma=5.0)
    np.testing.assert_allclose(f1.eigenvalues.numpy(),
                               25.0 * (np.repeat(np.arange(1, 6), 2) ** 2 + 1.96) ** -3.0,
                               rtol=1e-5)


@pytest.mark.parametrize("make", [lambda: SineBasis1D(12, 8), lambda: FourierBasis1D(12, 4)])
def test_monte_carlo_covariance_matches_eigendecomposition(make):
    b = make()
    mean = torch.linspace(-1.0, 1.0, 12, dtype=f64) * (b.quadrature_weights > 0)
    f = GaussianRandomField(b, alpha=1.5, tau=2.0, sigma=3.0, mean=mean)
    C = f.covariance_matrix()
    # the covariance operator on (R^G, <.,.>_h) has eigenpairs (lambda_k, phi_k)
    q = b.quadrature_weights.reshape(-1)
    assert torch.allclose(C @ (q[:, None] * b.functions.reshape(b.n_terms, -1).T),
                          b.functions.reshape(b.n_terms, -1).T * f.eigenvalues, atol=1e-12)
    ev = torch.linalg.eigvalsh(q.sqrt()[:, None] * C * q.sqrt()[None, :]).flip(0)[: b.n_terms]
    assert torch.allclose(ev, f.eigenvalues.sort(descending=True).values, rtol=1e-9, atol=1e-14)
    x = f.sample(100_000, generator=0)
    assert x.shape == (100_000, 12) and x.dtype == f64
    assert torch.allclose(x.mean(0), mean, atol=0.03)
    emp = torch.cov(x.T)
    assert float((emp - C).abs().max()) < 0.03 * float(C.abs().max())
    m2 = float((q * x ** 2).sum(1).mean())
    assert m2 == pytest.approx(float(f.second_moment()), rel=0.02)


def test_sine_fields_vanish_on_boundary_and_seed_reproducible():
    f = GaussianRandomField(SineBasis2D(10, 5), alpha=2.0, tau=3.0)
    x = f.sample(4, generator=11)
    assert x.shape == (4, 10, 10) and x.dtype == torch.float32
    assert float(x[:, 0].abs().max()) == 0.0 and float(x[:, :, -1].abs().max()) == 0.0
    assert torch.equal(x, f.sample(4, generator=11))
    xi = f.sample_coefficients(4, 11)
    assert xi.shape == (4, 25)
    assert torch.allclose(f.from_coefficients(xi), x)


def test_second_moment_scalar_mean_uses_quadrature():
    b = SineBasis1D(11, 5)
    f = GaussianRandomField(b, alpha=2.0, tau=3.0, mean=2.0, dtype="float64")
    assert float(f.second_moment()) == pytest.approx(4.0 + float(f.eigenvalues.sum()), rel=1e-12)


def _grid_gaussian(f, interior):
    """The discretised field as a Gaussian on R^G' in coordinates y = sqrt(q) u (Euclidean)."""
    q = f.basis.quadrature_weights.reshape(-1)[interior].sqrt()
    m = f.mean_field().reshape(-1)[interior] * q
    C = f.covariance_matrix()[interior][:, interior] * q[:, None] * q[None, :]
    return m.detach().numpy(), C.detach().numpy()


@pytest.mark.parametrize("make", [lambda: SineBasis1D(12, 10), lambda: SineBasis2D(6, 4)])
def test_field_w2_matches_pot_on_grid_gaussians(make):
    b = make()
    coords = torch.tensor(b.coordinates(), dtype=f64).reshape(*b.grid_shape, -1)
    bubble = (coords * (1 - coords)).prod(-1)  # zero on the boundary
    interior = (bubble > 0).reshape(-1)
    mean_a = torch.sin(3 * coords[..., 0]) * bubble
    mean_b = torch.cos(coords[..., -1]) * bubble
    fa = GaussianRandomField(b, alpha=2.0, tau=3.0, mean=mean_a, dtype="float64")
    fb = GaussianRandomField(b, alpha=1.5, tau=1.0, sigma=2.0, mean=mean_b, dtype="float64")
    ma, Ca = _grid_gaussian(fa, interior)
    mb, Cb = _grid_gaussian(fb, interior)
    # both fields vanish on the boundary; interior covariances have full rank
    ref = float(np.squeeze(ot.gaussian.bures_wasserstein_distance(ma, mb, Ca, Cb)))
    assert float(wasserstein2(fa, fb)) == pytest.approx(ref, rel=1e-7)
    # and our own Gaussian W2 on the same grid Gaussians agrees
    ga, gb = Gaussian(torch.tensor(ma), torch.tensor(Ca)), Gaussian(torch.tensor(mb), torch.tensor(Cb))
    assert float(wasserstein2(ga, gb)) == pytest.approx(ref, rel=1e-7)


def test_fourier_field_w2_matches_coefficient_gaussians():
    b = FourierBasis1D(20, 6)
    x = torch.tensor(b.coordinates())
    mean_a, mean_b = torch.sin(x) + 0.3, 0.5 * torch.cos(3 * x) + torch.sin(9 * x)
    fa = GaussianRandomField(b, alpha=3.0, tau=1.4, sigma=5.0, mean=mean_a, dtype="float64")
    fb = GaussianRandomField(b, alpha=2.0, tau=2.0, mean=mean_b, dtype="float64")
    phi, q = b.functions, b.quadrature_weights
    ca, cb = phi @ (q * mean_a), phi @ (q * mean_b)
    dm = mean_a - mean_b
    residual = float((q * dm ** 2).sum() - ((ca - cb) ** 2).sum())  # mean outside the span
    assert residual > 0.1
    ref = ot.gaussian.bures_wasserstein_distance(ca.numpy(), cb.numpy(),
                                                 np.diag(fa.eigenvalues.numpy()),
                                                 np.diag(fb.eigenvalues.numpy()))
    expected = float(np.squeeze(ref)) ** 2 + residual
    assert float(wasserstein2_squared(fa, fb)) == pytest.approx(expected, rel=1e-10)


def test_field_w2_gradient_matches_finite_differences():
    b = SineBasis1D(10, 6)
    target = GaussianRandomField(b, alpha=2.5, tau=2.0, sigma=1.5,
                                 mean=torch.linspace(0, 1, 10, dtype=f64), dtype="float64")

    def w2(mean, alpha, tau, sigma):
        return wasserstein2(GaussianRandomField(b, alpha=alpha, tau=tau, sigma=sigma, mean=mean),
                            target)

    def w2_default_sigma(mean, alpha, tau):
        return wasserstein2(GaussianRandomField(b, alpha=alpha, tau=tau, mean=mean), target)

    args = [torch.tensor(v, dtype=f64, requires_grad=True) for v in (0.3, 2.0, 3.0, 2.0)]
    assert torch.autograd.gradcheck(w2, args, eps=1e-6, atol=1e-7)
    field_mean = torch.cos(torch.linspace(0, 3, 10, dtype=f64)).requires_grad_()
    assert torch.autograd.gradcheck(w2, [field_mean] + args[1:], eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(w2_default_sigma, args[:3], eps=1e-6, atol=1e-7)


def test_field_w2_errors_on_different_bases():
    fa = GaussianRandomField(SineBasis1D(10, 6), alpha=2.0, tau=3.0)
    fb = GaussianRandomField(SineBasis1D(10, 5), alpha=2.0, tau=3.0)
    with pytest.raises(ValueError, match="same basis"):
        wasserstein2(fa, fb)
    assert float(wasserstein2(fa, fa)) == 0.0


def test_samples_differentiable_and_inputs_not_mutated():
    mean = torch.zeros(10, dtype=f64, requires_grad=True)
    tau = torch.tensor(3.0, dtype=f64, requires_grad=True)
    f = GaussianRandomField(SineBasis1D(10, 4), alpha=2.0, tau=tau, mean=mean)
    f.sample(3, generator=0).pow(2).sum().backward()
    assert tau.grad is not None and torch.isfinite(tau.grad)
    assert torch.equal(mean.detach(), torch.zeros(10, dtype=f64))
    assert math.isfinite(f.to_dict()["sigma"])


@pytest.mark.parametrize("make", BASES)
def test_synthesize_matches_dense_table_and_project_inverts_it(make):
    b = make()
    c = torch.randn(3, b.n_terms, generator=torch.Generator().manual_seed(0), dtype=f64)
    u = b.synthesize(c)
    dense = torch.einsum("nk,k...->n...", c, b.functions)
    assert u.shape == (3, *b.grid_shape)
    assert torch.allclose(u, dense, atol=1e-12)
    assert torch.allclose(b.project(u), c, atol=1e-12)
    with pytest.raises(ValueError, match="u must have shape"):
        b.project(torch.zeros(3, 2))


def test_detach_keeps_values_and_drops_graph():
    tau = torch.tensor(2.0, dtype=f64, requires_grad=True)
    f = GaussianRandomField(FourierBasis1D(16, 4), alpha=2.0, tau=tau)
    g = f.detach()
    assert not g.sigma.requires_grad and f.sigma.requires_grad
    assert torch.equal(g.eigenvalues, f.eigenvalues.detach())
    assert torch.equal(g.sample(2, generator=1), f.sample(2, generator=1).detach())
