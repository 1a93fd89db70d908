"""NtD map (SPEC §4): convergence to analytic traces, symmetry, null space, input measure."""

import json
import math

import numpy as np
import pytest
import torch

from wheretolearn.problems import get_problem
from wheretolearn.problems.ntd import NtD, NtDInputMeasure, boundary_indices


def _trace_and_flux(problem, u, ux, uy, a=lambda x, y: 1.0):
    """Exact Dirichlet trace and current ``a du/dn`` at the boundary nodes (corners: average)."""
    pts = problem.coordinates()["points"]
    x, y = pts[:, 0], pts[:, 1]
    g = np.zeros_like(x)
    count = np.zeros_like(x)
    for on_side, flux in [(x == 0, -ux(x, y)), (x == 1, ux(x, y)),
                          (y == 0, -uy(x, y)), (y == 1, uy(x, y))]:
        g += np.where(on_side, flux, 0.0)
        count += on_side
    g = g / count * a(x, y)
    trace = u(x, y)
    return trace - trace.mean(), g


def _order(ns, errs):
    return -np.polyfit(np.log(ns), np.log(errs), 1)[0]


def test_boundary_ordering_clockwise_from_top_left():
    n = 4
    i, j = boundary_indices(n)
    pts = list(zip(i.tolist(), j.tolist()))
    assert pts == [(0, 3), (1, 3), (2, 3), (3, 3), (3, 2), (3, 1), (3, 0), (2, 0), (1, 0), (0, 0),
                   (0, 1), (0, 2)]
    coords = NtD(n).coordinates()
    np.testing.assert_allclose(coords["points"][0], [0.0, 1.0])
    np.testing.assert_allclose(coords["points"][3], [1.0, 1.0])
    assert coords["s"].shape == (12,)


def test_constant_conductivity_matches_harmonic_trace_second_order():
    # u = e^x sin y is harmonic; its Neumann data must map to its mean-free trace.
    ns, errs = [9, 17, 33], []
    for n in ns:
        p = NtD(n)
        trace, g = _trace_and_flux(p, lambda x, y: np.exp(x) * np.sin(y),
                                   lambda x, y: np.exp(x) * np.sin(y),
                                   lambda x, y: np.exp(x) * np.cos(y))
        out = p(torch.tensor(g[None]))[0].numpy()
        errs.append(np.abs(out - trace).max())
    assert errs[-1] < 2e-4
    assert 1.8 < _order(ns, errs) < 2.3


def test_variable_conductivity_matches_exact_solution_second_order():
    # a = e^x: -div(a grad u) = 0 <=> u_xx + u_x + u_yy = 0, solved by u = e^{r x} cos y,
    # r = (sqrt(5) - 1) / 2. Independent of the discretisation.
    r = (math.sqrt(5.0) - 1.0) / 2.0
    ns, errs = [9, 17, 33], []
    for n in ns:
        x = np.linspace(0, 1, n)
        a = np.exp(x)[:, None] * np.ones((1, n))
        p = NtD(n, conductivity=a)
        trace, g = _trace_and_flux(p, lambda x, y: np.exp(r * x) * np.cos(y),
                                   lambda x, y: r * np.exp(r * x) * np.cos(y),
                                   lambda x, y: -np.exp(r * x) * np.sin(y),
                                   a=lambda x, y: np.exp(x))
        out = p(torch.tensor(g[None]))[0].numpy()
        errs.append(np.abs(out - trace).max())
    assert errs[-1] < 1e-3
    assert 1.7 < _order(ns, errs) < 2.4


@pytest.mark.parametrize("conductivity", [None, "kle"])
def test_matrix_symmetric_psd_with_constant_kernel(conductivity):
    p = NtD(17, conductivity=conductivity, seed=3)
    M = p.matrix
    m = M.shape[0]
    assert M.shape == (4 * 17 - 4,) * 2
    np.testing.assert_allclose(M, M.T, atol=1e-14)
    ev = np.linalg.eigvalsh(M)
    assert ev.min() > -1e-12                 # energy <g, M g> = int a |grad u|^2 >= 0
    assert (np.abs(ev) < 1e-10).sum() == 1   # exactly one null direction ...
    np.testing.assert_allclose(M @ np.ones(m), 0.0, atol=1e-12)  # ... the constants


def test_linear_mean_zero_and_constant_input_handled():
    p = NtD(17)
    gen = torch.Generator().manual_seed(0)
    g1, g2 = torch.randn(2, 3, 64, generator=gen, dtype=torch.float64)
    out = p(2.0 * g1 - 3.0 * g2)
    torch.testing.assert_close(out, 2.0 * p(g1) - 3.0 * p(g2))
    torch.testing.assert_close(out.mean(dim=1), torch.zeros(3, dtype=torch.float64), atol=1e-13,
                               rtol=0)
    # Incompatible data: the mean is projected out, so a constant maps to zero.
    torch.testing.assert_close(p(g1 + 5.0), p(g1))
    torch.testing.assert_close(p(torch.full((1, 64), 7.0, dtype=torch.float64)),
                               torch.zeros(1, 64, dtype=torch.float64), atol=1e-12, rtol=0)


def test_kle_conductivity_seeded_and_positive():
    a1 = NtD(17, conductivity="kle", seed=1).conductivity
    a2 = NtD(17, conductivity="kle", seed=1).conductivity
    a3 = NtD(17, conductivity="kle", seed=2).conductivity
    np.testing.assert_array_equal(a1, a2)
    assert not np.allclose(a1, a3)
    assert (a1 > 0).all() and a1.std() > 0.01
    np.testing.assert_allclose(a1[0, :], 1.0)  # Dirichlet KLE: log a = 0 on the boundary


def test_numpy_float32_io_and_no_mutation():
    p = get_problem("ntd", n=9)
    g = np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32)
    before = g.copy()
    out = p(g)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (4, 32)
    np.testing.assert_array_equal(g, before)
    json.dumps(p.options())


def test_gradient_is_the_transpose_matrix():
    p = NtD(9)
    g = torch.randn(2, 32, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 32, dtype=torch.float64)
    (p(g) * w).sum().backward()
    torch.testing.assert_close(g.grad, w @ torch.tensor(p.matrix))


@pytest.mark.parametrize("kwargs, match", [({"n": 2}, "n"), ({"conductivity": "lognormal"}, "conductivity"),
                                           ({"conductivity": -np.ones((9, 9))}, "positive"),
                                           ({"conductivity": np.ones((5, 5))}, "shape")])
def test_invalid_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NtD(**{"n": 9, **kwargs})


def test_invalid_inputs():
    p = NtD(9)
    with pytest.raises(ValueError, match="shape"):
        p(torch.zeros(2, 31))
    bad = torch.zeros(1, 32)
    bad[0, 3] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        p(bad)


def test_input_measure_mean_zero_seeded_and_moment():
    meas = NtD(33).default_input_measure()
    assert meas.event_shape == (128,)
    assert math.isclose(float(meas.omega), 4 * math.pi, rel_tol=1e-6)
    g = meas.sample(4000, generator=5)
    torch.testing.assert_close(meas.sample(4000, generator=5), g)
    assert g.shape == (4000, 128) and g.dtype == torch.float32
    assert float(g.mean(dim=1).abs().max()) < 1e-5
    # second moment (closed form, trapezoid norm) vs Monte Carlo; the relative MC error is ~2 %
    q = meas.field.basis.quadrature_weights
    mc = float((g.double() ** 2 * q).sum(dim=1).mean())
    assert abs(mc - float(meas.second_moment())) < 0.05 * mc
    # the sample mean approaches sin(omega (s - 1/2)) minus its boundary average (F.12),
    # written out here rather than read back from the measure
    s = np.linspace(0.0, 1.0, 128)
    expected = np.sin(4 * np.pi * (s - 0.5))
    expected -= expected.mean()
    np.testing.assert_allclose(g.double().mean(0).numpy(), expected, atol=0.1)


@pytest.mark.parametrize("omega", [3.0, 5.5])
def test_input_measure_mean_is_shifted_sine(omega):
    """At the default omega = 4 pi, sin(omega (s - 1/2)) equals sin(omega s): the shift can
    only be checked at other frequencies (a mean of sin(omega s) differs by > 0.5 here)."""
    s = np.linspace(0.0, 1.0, 60)
    meas = NtDInputMeasure(omega, n_boundary=60, dtype="float64")
    expected = np.sin(omega * (s - 0.5))
    expected -= expected.mean()
    np.testing.assert_allclose(meas.mean_function().numpy(), expected, atol=1e-12)
    g = meas.sample(4000, generator=2)
    np.testing.assert_allclose(g.mean(0).numpy(), expected, atol=0.15)
    unshifted = np.sin(omega * s) - np.sin(omega * s).mean()
    assert np.abs(unshifted - expected).max() > 0.5


def test_input_measure_differentiable_in_omega():
    omega = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    meas = NtDInputMeasure(omega, n_boundary=50, dtype="float64")
    xi = meas.sample_coefficients(3, generator=0)
    g = meas.from_coefficients(xi)
    g.sum(dim=0).pow(2).sum().backward()
    # finite difference in omega with the same latent draws
    def f(w):
        return NtDInputMeasure(w, n_boundary=50, dtype="float64").from_coefficients(xi).sum(0).pow(2).sum()
    fd = (f(2.0 + 1e-6) - f(2.0 - 1e-6)) / 2e-6
    assert abs(float(omega.grad) - float(fd)) < 1e-5 * max(1.0, abs(float(fd)))


def test_input_measure_rejects_bad_parameters():
    with pytest.raises(ValueError, match="tau"):
        NtDInputMeasure(1.0, tau=-1.0, n_boundary=10)
    with pytest.raises(ValueError, match="n_boundary"):
        NtDInputMeasure(1.0, n_boundary=2)
    with pytest.raises(ValueError, match="omega"):
        NtDInputMeasure(float("nan"), n_boundary=10)


def test_input_measure_with_params():
    meas = NtD(9).default_input_measure()
    other = meas.with_params(omega=1.0, tau=10.0)
    assert float(other.omega) == 1.0 and float(other.field.tau) == 10.0
    assert float(other.field.alpha) == 2.0 and other.n_boundary == 32
    with pytest.raises(ValueError, match="beta"):
        meas.with_params(beta=1.0)


def test_paper_resolution_smoke():
    p = get_problem("ntd")
    assert p.options() == {"n": 128, "conductivity": "constant"} and p.input_shape == (508,)
    g = p.default_input_measure().sample(1000, generator=0)
    out = p(g)
    assert out.shape == (1000, 508) and bool(torch.isfinite(out).all())
    assert float(out.mean(dim=1).abs().max()) < 1e-5


def test_options_rebuild_the_same_problem():
    from wheretolearn.problems import get_problem

    for kw in ({}, {"conductivity": "kle", "seed": 3}):
        p = get_problem("ntd", n=12, **kw)
        q = get_problem("ntd", **p.options())
        np.testing.assert_allclose(p.matrix, q.matrix)


def test_layered_conductivity_uses_harmonic_face_means():
    """a(x) in two layers (1 | 50) and a pure x-current g = +1 right, -1 left (1/2 at the
    corners): the discrete potential depends on x only and the flux a_f (u_{i+1} - u_i) / h is
    the same through every column of faces, so u_right - u_left = h sum_i 1 / a_f(i) exactly,
    with a_f the *harmonic* mean of the nodal values (arithmetic means give 0.390, not 0.449)."""
    n = 9
    h = 1.0 / (n - 1)
    col = np.where(np.arange(n) < n // 2, 1.0, 50.0)
    a = np.repeat(col[:, None], n, axis=1)            # a[i, j] = a(x_i)
    p = NtD(n, conductivity=a)
    pts = p.coordinates()["points"]
    x, y = pts[:, 0], pts[:, 1]
    g = np.where(np.isclose(x, 1), 1.0, np.where(np.isclose(x, 0), -1.0, 0.0))
    g *= np.where(np.isclose(y, 0) | np.isclose(y, 1), 0.5, 1.0)
    u = np.asarray(p(g[None].astype(np.float64)))[0]
    right, left = u[np.isclose(x, 1)], u[np.isclose(x, 0)]
    assert right.std() < 1e-12 and left.std() < 1e-12
    harmonic = 2 * col[:-1] * col[1:] / (col[:-1] + col[1:])
    assert right.mean() - left.mean() == pytest.approx(h * (1 / harmonic).sum(), rel=1e-10)


def test_input_measure_w2_is_that_of_the_mean_removed_law_against_pot():
    """W2 of two NtD input measures is computed on the law of their (mean-removed) samples,
    as their second moment is: POT's Bures distance on the explicit (n, n) covariances in the
    quadrature norm agrees; the field formula (before the removal) does not."""
    import ot

    from wheretolearn.measures import wasserstein2, wasserstein2_squared

    a = NtDInputMeasure(3.0, n_boundary=40, n_modes=25, dtype="float64")
    b = NtDInputMeasure(5.0, tau=2.0, alpha=2.5, sigma=4.0, n_boundary=40, n_modes=25,
                        dtype="float64")
    q = a.field.basis.quadrature_weights
    sq = q.sqrt()
    phi = a.field.basis.functions.reshape(25, -1)
    pc = phi - phi.mean(dim=1, keepdim=True)

    def moments(m):
        cov = pc.T @ torch.diag(m.eigenvalues) @ pc
        return sq * m.mean_function(), sq[:, None] * cov * sq[None, :]

    (ma, ca), (mb, cb) = moments(a), moments(b)
    ref = float(ot.gaussian.bures_wasserstein_distance(ma, mb, ca, cb)) ** 2
    got = float(wasserstein2_squared(a, b))
    assert got == pytest.approx(ref, rel=1e-6)
    assert abs(float(wasserstein2(a.field, b.field)) ** 2 - ref) > 1e-3 * ref
    # a measure is at distance 0 from itself (nuclear norm = trace for a PSD matrix)
    assert float(wasserstein2_squared(a, a)) == pytest.approx(0.0, abs=1e-9)
