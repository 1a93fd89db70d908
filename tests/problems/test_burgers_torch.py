"""The differentiable torch Burgers solver (issue 22): agreement with the numpy labeller,
its exact discrete adjoint against autograd and finite differences, analytic checks."""

import math

import numpy as np
import pytest
import torch
from test_burgers import NU, cole_hopf, smooth_field

from wheretolearn.measures import FourierBasis1D, GaussianRandomField
from wheretolearn.problems import get_problem

f64 = torch.float64


def _inputs(n: int, batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(smooth_field(n, np.random.default_rng(seed), n_modes=min(10, n // 3),
                                         batch=batch))


@pytest.mark.parametrize("n,dealias", [(64, False), (63, False), (64, True)])
def test_torch_path_agrees_with_numpy_solver(n, dealias):
    p = get_problem("burgers", n=n, n_steps=60, dealias=dealias, dtype="float64")
    u0 = _inputs(n, batch=5)
    ref = p.solve(u0.numpy())
    for rows in (None, 2, 5):
        out = p.solve_torch(u0, block_rows=rows)
        assert out.dtype == f64 and out.shape == (5, n)
        np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(p.solve_torch(u0[1]).numpy(), ref[1], rtol=0, atol=1e-12)


def test_torch_path_matches_cole_hopf_and_is_fourth_order_in_time():
    x = 2 * np.pi * np.arange(128) / 128
    u0, exact = torch.from_numpy(cole_hopf(x, 0.0)[None]), cole_hopf(x, 1.0)
    errs = []
    for steps in (10, 20, 40):
        p = get_problem("burgers", n=128, n_steps=steps, dtype="float64")
        errs.append(np.abs(p.solve_torch(u0)[0].numpy() - exact).max())
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(orders > 3.5), (errs, orders)
    p = get_problem("burgers", n=256, n_steps=200, dtype="float64")
    x = p.coordinates()["x"]
    err = np.abs(p.solve_torch(torch.from_numpy(cole_hopf(x, 0.0)[None]))[0].numpy()
                 - cole_hopf(x, 1.0)).max()
    assert err < 1e-9


def test_mean_is_conserved_and_its_gradient_is_one():
    """d/du0 sum_j u_j(T) = 1 exactly: the mean is conserved on the periodic domain."""
    p = get_problem("burgers", n=64, n_steps=40, dtype="float64")
    u0 = _inputs(64).requires_grad_()
    out = p.solve_torch(u0)
    np.testing.assert_allclose(out.detach().mean(1).numpy(), u0.detach().mean(1).numpy(),
                               atol=1e-13)
    (g,) = torch.autograd.grad(out.sum(), u0)
    np.testing.assert_allclose(g.numpy(), 1.0, atol=1e-12)


def test_gradient_at_zero_is_the_heat_semigroup():
    """At u0 = 0 the nonlinear term has zero derivative, so the Jacobian is exactly the
    integrating factor: grad_u0 <w, u(T)> = irfft(exp(-nu k^2 T) rfft(w)), Nyquist dropped."""
    n, t = 32, 0.7
    p = get_problem("burgers", n=n, n_steps=7, t_final=t, dtype="float64")
    w = torch.randn(2, n, dtype=f64, generator=torch.Generator().manual_seed(0))
    u0 = torch.zeros(2, n, dtype=f64, requires_grad=True)
    (g,) = torch.autograd.grad((w * p.solve_torch(u0)).sum(), u0)
    k = np.arange(n // 2 + 1)
    factor = np.exp(-NU * k**2 * t)
    factor[-1] = 0.0
    expected = np.fft.irfft(factor * np.fft.rfft(w.numpy()), n=n)
    np.testing.assert_allclose(g.numpy(), expected, atol=1e-14)


@pytest.mark.parametrize("n,dealias", [(32, False), (33, False), (32, True)])
def test_adjoint_equals_autograd_through_the_plain_scheme(n, dealias):
    p = get_problem("burgers", n=n, n_steps=9, t_final=0.3, dealias=dealias, dtype="float64")
    u0 = _inputs(n, seed=1)
    w = torch.randn(3, n, dtype=f64, generator=torch.Generator().manual_seed(1))
    x = u0.clone().requires_grad_()
    (ref,) = torch.autograd.grad((w * p._integrate_torch(x)).sum(), x)
    for every in (None, 1, 4, 9, 50):
        x = u0.clone().requires_grad_()
        (g,) = torch.autograd.grad((w * p.solve_torch(x, checkpoint_every=every,
                                                      block_rows=2)).sum(), x)
        np.testing.assert_allclose(g.numpy(), ref.numpy(), rtol=0, atol=1e-13)


def test_directional_derivative_wrt_u0_matches_finite_differences():
    p = get_problem("burgers", n=32, n_steps=10, t_final=0.5, dtype="float64")
    gen = torch.Generator().manual_seed(2)
    u0 = 2.0 * _inputs(32, seed=2)
    w = torch.randn(3, 32, dtype=f64, generator=gen)
    d = torch.randn(3, 32, dtype=f64, generator=gen)
    x = u0.clone().requires_grad_()
    (g,) = torch.autograd.grad((w * p.solve_torch(x)).sum(), x)

    def loss(v):
        return float((w * p.solve_torch(v)).sum())

    eps = 1e-5
    fd = (loss(u0 + eps * d) - loss(u0 - eps * d)) / (2 * eps)
    assert abs(float((g * d).sum()) - fd) < 1e-8 * max(1.0, abs(fd))


def test_gradient_wrt_periodic_kle_parameters_matches_finite_differences():
    """u0 = Phi (sigma (mu_k + tau^2)^(-alpha/2) xi) with fixed xi (common random numbers):
    dJ/d(alpha, tau, sigma) of J = sum w * u(T) against central differences."""
    n = 32
    p = get_problem("burgers", n=n, n_steps=10, t_final=0.5, dtype="float64")
    basis = FourierBasis1D(n, 10)
    xi = torch.randn(4, basis.n_terms, dtype=f64, generator=torch.Generator().manual_seed(3))
    w = torch.randn(4, n, dtype=f64, generator=torch.Generator().manual_seed(4))
    theta0 = {"alpha": 2.0, "tau": 1.4, "sigma": 3.0}

    def loss(**theta):
        mu = GaussianRandomField(basis, **theta, dtype="float64")
        return (w * p.solve_torch(mu.from_coefficients(xi))).sum()

    params = {k: torch.tensor(v, dtype=f64, requires_grad=True) for k, v in theta0.items()}
    grads = torch.autograd.grad(loss(**params), list(params.values()))
    eps = 1e-6
    for (name, value), g in zip(theta0.items(), grads):
        up = float(loss(**{**theta0, name: value + eps}))
        down = float(loss(**{**theta0, name: value - eps}))
        fd = (up - down) / (2 * eps)
        assert abs(float(g) - fd) < 1e-6 * max(1.0, abs(fd)), (name, float(g), fd)


def test_call_routes_gradients_and_keeps_the_numpy_labeller():
    p = get_problem("burgers", n=32, n_steps=10, dtype="float64")
    assert p.differentiable
    u0 = _inputs(32)
    before = u0.clone()
    x = u0.clone().requires_grad_()
    out = p(x)
    assert out.requires_grad and out.dtype == f64
    out.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 1.0, atol=1e-12)
    plain = p(u0)
    assert not plain.requires_grad
    np.testing.assert_allclose(plain.numpy(), out.detach().numpy(), atol=1e-12)
    torch.testing.assert_close(u0, before, rtol=0, atol=0)
    with torch.no_grad():
        assert not p(x).requires_grad


def test_float32_option_and_validation():
    p = get_problem("burgers", n=32, n_steps=10, dtype="float64")
    u0 = _inputs(32)
    out32 = p.solve_torch(u0, dtype="float32")
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out32.double().numpy(), p.solve(u0.numpy()), atol=1e-5)
    with pytest.raises(ValueError, match=r"u0 must have shape \(B, 32\)"):
        p.solve_torch(torch.zeros(2, 16))
    with pytest.raises(ValueError, match="finite"):
        p.solve_torch(torch.full((1, 32), math.nan))
    with pytest.raises(ValueError, match="block_rows"):
        p.solve_torch(u0, block_rows=0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        p.solve_torch(u0, checkpoint_every=0)
    with pytest.raises(FloatingPointError, match="n_steps"):
        get_problem("burgers", n=256, n_steps=2).solve_torch(
            1e4 * torch.from_numpy(smooth_field(256, np.random.default_rng(5), batch=1)))


def test_nyquist_mode_is_dropped_in_the_torch_path():
    n = 64
    p = get_problem("burgers", n=n, n_steps=20, t_final=1e-3, dtype="float64")
    smooth = _inputs(n, seed=7)
    nyquist = 0.7 * (-1.0) ** torch.arange(n, dtype=f64)
    np.testing.assert_allclose(p.solve_torch(smooth + nyquist).numpy(),
                               p.solve(smooth.numpy()), atol=1e-12)
