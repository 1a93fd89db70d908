"""Radiative transport (SPEC §4): exact isotropic state, maximum principle, diffusion limit, adjoint."""

import json
import math
import pickle

import numpy as np
import pytest
import torch

from wheretolearn.problems import get_problem
from wheretolearn.problems.radiative import RadiativeTransport


def _field(n, seed=0):
    return RadiativeTransport(n).default_input_measure().sample(1, generator=seed).double()


def test_angles_match_spec():
    th = RadiativeTransport(5).angles
    np.testing.assert_allclose(th, -math.pi + (np.arange(12) + 0.5) * math.pi / 6)


@pytest.mark.parametrize("solver, rtol", [("direct", 1e-12), ("gmres", 1e-9)])
@pytest.mark.parametrize("knudsen", [1 / 8, 2.0, 8.0])
def test_uniform_inflow_reproduces_isotropic_constant(knudsen, solver, rtol):
    # f = c solves the RTE for any scattering; the discrete scheme must keep it exactly
    # (the direct solver to round-off, GMRES to its residual tolerance).
    p = RadiativeTransport(15, knudsen=knudsen, inflow=lambda x, y, th: np.full(x.shape, 2.5),
                           solver=solver)
    a = _field(15, seed=1) + 0.1
    f = p.solve_distribution(a)
    np.testing.assert_allclose(f, 2.5, rtol=rtol)
    torch.testing.assert_close(p(a), torch.full((1, 15, 15), 2.5 * 2 * math.pi, dtype=torch.float64),
                               rtol=rtol, atol=0)


@pytest.mark.parametrize("knudsen", [0.02, 1 / 8, 8.0])
def test_gmres_sweeps_agree_with_direct_solver(knudsen):
    meas = RadiativeTransport(25).default_input_measure()
    a = 3.0 * meas.sample(2, generator=7).double()   # scattering 2.6-3.2 (docs/problems.md)
    rho_d = RadiativeTransport(25, knudsen=knudsen, solver="direct")(a)
    p = RadiativeTransport(25, knudsen=knudsen, solver="gmres")
    torch.testing.assert_close(p(a), rho_d, rtol=1e-8, atol=0)
    assert max(p._system.last_iterations) < 150   # converged by GMRES, no direct fallback


def test_maximum_principle_and_positivity_paper_inflow():
    p = RadiativeTransport(21, knudsen=0.5)
    a = _field(21, seed=2)
    f = p.solve_distribution(a)
    assert f.min() >= -1e-12
    assert f.max() <= 1.5 + 1e-12           # max of the inflow data
    rho = p(a)
    assert float(rho[:, 1:-1, 1:-1].min()) > 0.0
    assert float(rho.max()) <= 2 * math.pi * 1.5
    # the source sits on x = 0: density decreases away from it on average
    assert float(rho[0, 2].mean()) > float(rho[0, -3].mean())


def test_diffusion_limit_isotropy_and_ficks_law():
    # Small eps: f -> <f> + eps f1 with f1 = -(1/a) v . grad <f> (Fick's law), so the angular
    # deviation is O(eps) and matches -eps v . grad<f> / a in the interior.
    n = 41
    sl = slice(n // 4, 3 * n // 4 + 1)
    aniso = {}
    for eps in (8.0, 0.02):
        p = RadiativeTransport(n, knudsen=eps)
        f = p.solve_distribution(np.ones((1, n, n)))[0]
        m = f.mean(axis=-1)
        dev = f - m[..., None]
        aniso[eps] = np.abs(dev[sl, sl]).mean() / m[sl, sl].mean()
    gx, gy = np.gradient(m, 1.0 / (n - 1))
    th = p.angles
    fick = -0.02 * (np.cos(th) * gx[..., None] + np.sin(th) * gy[..., None])
    mismatch = np.linalg.norm(dev[sl, sl] - fick[sl, sl]) / np.linalg.norm(dev[sl, sl])
    assert aniso[0.02] < 0.06 < 0.5 < aniso[8.0]
    assert mismatch < 0.12


def _manufactured(x, y, th):
    return np.exp(x) * (1 + 0.3 * y * np.cos(th)) + 0.2 * np.sin(np.pi * y) * np.sin(th)


def test_manufactured_solution_first_order():
    # f above with source S = eps v . grad f + a (f - <f>) (derivatives by hand) and inflow
    # data = f. First-order upwind: interior error O(h); outflow boundary nodes drop the
    # tangential derivative (SPEC), an O(h) error there too, with a larger constant.
    eps = 0.5
    ns, err_in, err_all = [21, 41, 81], [], []
    for n in ns:
        p = RadiativeTransport(n, knudsen=eps, inflow=_manufactured)
        x = np.linspace(0, 1, n)
        X, Y = np.meshgrid(x, x, indexing="ij")
        X, Y, T = X[..., None], Y[..., None], p.angles[None, None, :]
        a = 1 + 0.5 * X[..., 0] * Y[..., 0]
        f = _manufactured(X, Y, T)
        fx = np.exp(X) * (1 + 0.3 * Y * np.cos(T))
        fy = 0.3 * np.exp(X) * np.cos(T) + 0.2 * np.pi * np.cos(np.pi * Y) * np.sin(T)
        S = eps * (np.cos(T) * fx + np.sin(T) * fy) + a[..., None] * (f - f.mean(-1, keepdims=True))
        err = np.abs(p.solve_distribution(a[None], source=S)[0] - f)
        err_in.append(err[1:-1, 1:-1].max())
        err_all.append(err.max())
    order = lambda e: -np.polyfit(np.log(ns), np.log(e), 1)[0]  # noqa: E731
    assert err_in[-1] < 0.015 and 0.9 < order(err_in) < 1.1
    assert err_all[-1] < 0.2 and order(err_all) > 0.7


def test_gmres_falls_back_to_direct_when_it_stalls():
    p = RadiativeTransport(11, knudsen=0.05)
    p._system.maxiter, p._system.restart = 1, 2      # cannot reach the tolerance
    a = _field(11, seed=3)
    torch.testing.assert_close(p(a), RadiativeTransport(11, knudsen=0.05, solver="direct")(a),
                               rtol=1e-12, atol=0)


def test_picklable_for_dask_workers():
    p = RadiativeTransport(9, inflow=lambda x, y, th: np.ones(x.shape))
    q = pickle.loads(pickle.dumps(p))
    a = _field(9)
    torch.testing.assert_close(q(a), p(a))


@pytest.mark.parametrize("solver", ["direct", "gmres"])
def test_adjoint_gradient_matches_finite_differences(solver):
    p = RadiativeTransport(6, n_angles=4, knudsen=0.5, solver=solver)
    gen = torch.Generator().manual_seed(0)
    a = (0.5 + torch.rand(2, 6, 6, generator=gen, dtype=torch.float64)).requires_grad_()
    w = torch.randn(2, 6, 6, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: (p(z) * w).sum(), (a,), eps=1e-6, atol=1e-8)


def test_batch_equals_single_no_mutation_and_io():
    p = RadiativeTransport(9, knudsen=2.0)
    a = p.default_input_measure().sample(3, generator=4)
    before = a.clone()
    out = p(a)
    assert out.dtype == torch.float32 and out.shape == (3, 9, 9)
    torch.testing.assert_close(out[2:], p(a[2:]))
    torch.testing.assert_close(a, before)
    out_np = p(a.numpy())
    assert isinstance(out_np, np.ndarray)
    json.dumps(p.options())
    assert p.options()["knudsen"] == 2.0


def test_paper_resolution_smoke():
    p = get_problem("radiative")
    assert p.options() == {"n": 51, "n_angles": 12, "knudsen": 0.125, "inflow": "paper",
                           "solver": "gmres"}
    a = p.default_input_measure().sample(1, generator=0)
    rho = p(a)
    assert rho.shape == (1, 51, 51) and bool(torch.isfinite(rho).all())
    assert 0.0 <= float(rho.min()) and float(rho.max()) <= 2 * math.pi * 1.5


def test_default_measure_positive_with_lognormal_moment():
    meas = RadiativeTransport(12).default_input_measure()
    a = meas.sample(4000, generator=3).double()
    assert a.shape == (4000, 12, 12) and float(a.min()) > 0.0
    q = meas.log_field.basis.quadrature_weights
    mc = float((a ** 2 * q).sum(dim=(1, 2)).mean())
    assert abs(mc / float(meas.second_moment()) - 1.0) < 0.03


def test_default_measure_with_params():
    meas = RadiativeTransport(9).default_input_measure().with_params(sigma=2.0, mean=0.5)
    assert float(meas.log_field.sigma) == 2.0 and float(meas.log_field.tau) == 1.0
    a = meas.sample(3, generator=0)
    np.testing.assert_allclose(a[:, 0, :].numpy(), np.exp(0.5), rtol=1e-6)
    with pytest.raises(ValueError, match="omega"):
        meas.with_params(omega=1.0)


@pytest.mark.parametrize("kwargs, match", [({"knudsen": 0.0}, "knudsen"), ({"knudsen": -2.0}, "knudsen"),
                                           ({"n": 2}, "n"), ({"n_angles": 7}, "n_angles"),
                                           ({"n_angles": 6}, "n_angles"),
                                           ({"inflow": "sunny"}, "inflow"),
                                           ({"solver": "cg"}, "solver")])
def test_invalid_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RadiativeTransport(**{"n": 5, **kwargs})


def test_invalid_inputs():
    p = RadiativeTransport(5)
    with pytest.raises(ValueError, match="source"):
        p.solve_distribution(np.ones((1, 5, 5)), source=np.ones((5, 5)))
    with pytest.raises(ValueError, match="positive"):
        p(torch.zeros(1, 5, 5))
    with pytest.raises(ValueError, match="positive"):
        p(-torch.ones(1, 5, 5))
    bad = torch.ones(1, 5, 5)
    bad[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        p(bad)
    with pytest.raises(ValueError, match="shape"):
        p(torch.ones(5, 5))
