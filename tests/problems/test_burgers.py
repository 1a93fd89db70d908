"""Tests for the Burgers solver against the Cole-Hopf exact solution and conservation laws."""

import math

import numpy as np
import pytest
import torch

from wheretolearn.problems import get_problem

NU = 0.1


def cole_hopf(x: np.ndarray, t: float, nu: float = NU) -> np.ndarray:
    """Exact solution u = -2 nu phi_x / phi with phi a heat-equation solution (phi_t = nu phi_xx)
    phi = 1 + 0.8 e^{-nu t} cos x + 0.15 e^{-4 nu t} sin 2x  (positive, so u is smooth)."""
    phi = 1 + 0.8 * np.exp(-nu * t) * np.cos(x) + 0.15 * np.exp(-4 * nu * t) * np.sin(2 * x)
    phi_x = -0.8 * np.exp(-nu * t) * np.sin(x) + 0.3 * np.exp(-4 * nu * t) * np.cos(2 * x)
    return -2 * nu * phi_x / phi


def smooth_field(n: int, rng: np.random.Generator, n_modes: int = 20, batch: int = 4):
    """Random band-limited periodic fields (batch, n) with a nonzero mean."""
    x = 2 * np.pi * np.arange(n) / n
    k = np.arange(1, n_modes + 1)
    amp = 2.0 * k**-2.0
    a, b = rng.standard_normal((2, batch, n_modes)) * amp
    return 0.3 + a @ np.sin(np.outer(k, x)) + b @ np.cos(np.outer(k, x))


def test_matches_cole_hopf_exact_solution():
    p = get_problem("burgers", n=256, n_steps=200, dtype="float64")
    x = p.coordinates()["x"]
    u0 = cole_hopf(x, 0.0)
    assert np.ptp(np.gradient(u0, x)) > 1.0     # a steep front, not a trivial test
    err = np.abs(p(u0[None])[0] - cole_hopf(x, 1.0)).max()
    assert err < 1e-9


def test_time_integration_is_fourth_order():
    x = 2 * np.pi * np.arange(128) / 128
    errs = []
    for steps in (10, 20, 40):
        p = get_problem("burgers", n=128, n_steps=steps, dtype="float64")
        errs.append(np.abs(p(cole_hopf(x, 0.0)[None])[0] - cole_hopf(x, 1.0)).max())
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(orders > 3.5), (errs, orders)


def test_mean_is_conserved_and_energy_decays():
    u0 = smooth_field(256, np.random.default_rng(1))
    energies = [np.mean(u0**2, axis=1)]
    for t in (0.25, 0.5, 1.0):
        p = get_problem("burgers", n=256, n_steps=int(400 * t), t_final=t, dtype="float64")
        out = p(u0)
        np.testing.assert_allclose(out.mean(1), u0.mean(1), atol=1e-13)
        energies.append(np.mean(out**2, axis=1))
    e = np.stack(energies)
    assert np.all(np.diff(e, axis=0) < 0)


def test_energy_dissipation_rate_matches_viscous_term():
    """d/dt (1/2)||u||^2 = -nu ||u_x||^2 (the advection term conserves energy)."""
    n, t, dt = 256, 0.5, 1e-3
    u0 = smooth_field(n, np.random.default_rng(2), batch=2)
    pa = get_problem("burgers", n=n, n_steps=500, t_final=t - dt, dtype="float64")
    pb = get_problem("burgers", n=n, n_steps=500, t_final=t + dt, dtype="float64")
    pm = get_problem("burgers", n=n, n_steps=500, t_final=t, dtype="float64")
    energy = lambda u: 0.5 * np.sum(u**2, axis=1) * 2 * np.pi / n  # noqa: E731
    rate = (energy(pb(u0)) - energy(pa(u0))) / (2 * dt)
    um = pm(u0)
    k = np.fft.rfftfreq(n, 1.0 / n)
    ux = np.fft.irfft(1j * k * np.fft.rfft(um), n=n)
    np.testing.assert_allclose(rate, -NU * np.sum(ux**2, axis=1) * 2 * np.pi / n, rtol=1e-4)


def test_self_convergence_in_space_and_dealiasing_option():
    rng = np.random.default_rng(3)
    coarse_in = smooth_field(512, rng, n_modes=30)
    fine = get_problem("burgers", n=1024, n_steps=400, dtype="float64")
    x_f = fine.coordinates()["x"]
    # the same band-limited field sampled on the fine grid (exact Fourier interpolation)
    fine_in = np.fft.irfft(np.fft.rfft(coarse_in), n=1024) * 2
    np.testing.assert_allclose(fine_in[:, ::2], coarse_in, atol=1e-12)
    assert x_f.shape == (1024,)
    coarse = get_problem("burgers", n=512, n_steps=400, dtype="float64")
    np.testing.assert_allclose(fine(fine_in)[:, ::2], coarse(coarse_in), atol=1e-10)
    dealiased = get_problem("burgers", n=512, n_steps=400, dealias=True, dtype="float64")
    np.testing.assert_allclose(dealiased(coarse_in), coarse(coarse_in), atol=1e-8)


def test_torch_in_torch_out_and_input_untouched():
    p = get_problem("burgers", n=64, n_steps=50)
    u0 = smooth_field(64, np.random.default_rng(4)).astype(np.float32)
    before = u0.copy()
    out = p(u0)
    np.testing.assert_array_equal(u0, before)
    assert out.dtype == np.float32 and out.shape == (4, 64)
    out_t = p(torch.from_numpy(u0))
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_allclose(out_t.numpy(), out)


def test_input_and_option_validation():
    p = get_problem("burgers", n=64, n_steps=10)
    with pytest.raises(ValueError, match=r"shape \(B, 64\)"):
        p(np.zeros((2, 32)))
    with pytest.raises(ValueError, match="finite"):
        p(np.full((1, 64), np.nan))
    with pytest.raises(ValueError, match="n must be at least 4"):
        get_problem("burgers", n=2)
    with pytest.raises(ValueError, match="n_modes"):
        get_problem("burgers", n=64, n_modes=40)
    with pytest.raises(ValueError, match="nu"):
        get_problem("burgers", nu=0.0)
    with pytest.raises(TypeError, match="dealias"):
        get_problem("burgers", dealias="yes")


def test_too_few_steps_for_a_large_input_reports_divergence():
    p = get_problem("burgers", n=256, n_steps=2)
    with pytest.raises(FloatingPointError, match="n_steps"):
        p(1e4 * smooth_field(256, np.random.default_rng(5), batch=1))


def test_default_input_measure_is_periodic_kle():
    p = get_problem("burgers", n=128, n_steps=100)
    mu = p.default_input_measure()
    u = np.asarray(mu.sample(64, generator=0), dtype=np.float64)
    assert u.shape == (64, 128)
    assert np.abs(u.mean(1)).max() < 1e-5           # no constant mode
    # KLE variance: sum_k 2 lambda_k / (2 pi) per point, lambda_k = 25 (k^2 + 1.96)^-3
    k = np.arange(1, p.n_modes + 1)
    var = np.sum(2 * 25 * (k**2 + 1.96) ** -3.0) / (2 * math.pi)
    assert abs(u.var() / var - 1) < 0.25
    out = p(u)
    assert np.all(np.isfinite(out))


def test_default_step_count_is_converged_for_default_measure():
    p = get_problem("burgers", dtype="float64")
    assert (p.n, p.n_steps) == (1024, 500)
    u = np.asarray(p.default_input_measure().sample(4, generator=1), dtype=np.float64)
    fine = get_problem("burgers", n_steps=2000, dtype="float64")
    assert np.abs(p(u) - fine(u)).max() < 1e-7 * np.abs(u).max()


@pytest.mark.parametrize("dealias", [False, True])
def test_nyquist_mode_is_dropped_from_the_state_and_the_nonlinear_term(dealias):
    """As in the authors' solver the Nyquist mode (-1)^j is held at zero. Over a short time
    (t = 1e-3: diffusion damps it only by exp(-nu (n/2)^2 t) = 0.90 at n = 64) a solver that
    kept it in the initial condition or let the nonlinear term feed it would show it."""
    n = 64
    p = get_problem("burgers", n=n, n_steps=20, t_final=1e-3, dealias=dealias, dtype="float64")
    smooth = smooth_field(n, np.random.default_rng(7), n_modes=20, batch=3)  # u^2 reaches k = 32
    nyquist = 0.7 * (-1.0) ** np.arange(n)
    out = p(smooth + nyquist)
    assert np.abs(np.fft.rfft(out)[:, -1]).max() < 1e-10 * n
    # the Nyquist part of the input is simply ignored
    np.testing.assert_allclose(out, p(smooth), atol=1e-12)
