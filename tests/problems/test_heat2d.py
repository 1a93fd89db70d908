"""Tests for the 2-D heat problem against independent sparse solves and the continuum."""

import math

import numpy as np
import pytest
import scipy.fft
import scipy.sparse as sp
import scipy.sparse.linalg as spl
import torch

from wheretolearn.problems import get_problem
from wheretolearn.problems import heat2d as heat2d_module

PARAMS = np.array([300.0, 100.0, 200.0, 400.0, 500.0])


def _sparse_system(n: int, side: float, params: np.ndarray):
    """Independent assembly: 5-point Laplacian (n^2, n^2), row-major (row = y, column = x),
    and the wall term b / h^2 (n, n) with walls left, right, bottom, top."""
    h = side / (n + 1)
    e = np.ones(n)
    d2 = sp.diags([e[:-1], -2 * e, e[:-1]], [-1, 0, 1]) / h**2
    lap = sp.kron(sp.identity(n), d2) + sp.kron(d2, sp.identity(n))
    b = np.zeros((n, n))
    b[:, 0] += params[1]
    b[:, -1] += params[2]
    b[0, :] += params[3]
    b[-1, :] += params[4]
    return lap.tocsc(), b / h**2


def test_contract_shapes_bounds_and_names():
    p = get_problem("heat2d", n=8, n_steps=3, dt=0.01, side=1.0, diffusivity=1.0)
    assert p.input_shape == (5,)
    assert p.output_shape == (3, 8, 8)
    np.testing.assert_array_equal(p.parameter_bounds, [[100, 500]] * 5)
    assert p.parameter_names == ["T_init", "T_left", "T_right", "T_bottom", "T_top"]
    steps = list(p.simulate(PARAMS))
    assert [t for t, _ in steps] == [0, 1, 2]
    assert all(f.shape == (8, 8) and f.dtype == np.float32 for _, f in steps)
    np.testing.assert_allclose(p.coordinates()["x"], np.arange(1, 9) / 9)


def test_uniform_state_stays_exactly_uniform():
    p = get_problem("heat2d", n=12, n_steps=20)
    for _, field in p.simulate(np.full(5, 321.5)):
        assert np.all(field == np.float32(321.5))


def test_implicit_euler_steps_match_sparse_direct_solve():
    n, dt, diff, side = 15, 0.003, 1.7, 2.0
    p = get_problem("heat2d", n=n, n_steps=6, dt=dt, side=side, diffusivity=diff,
                    dtype="float64")
    lap, b = _sparse_system(n, side, PARAMS)
    a = (sp.identity(n * n) - dt * diff * lap).tocsc()
    u = np.full(n * n, PARAMS[0])
    for t, field in p.simulate(PARAMS):
        u = spl.spsolve(a, u + dt * diff * b.ravel())
        np.testing.assert_allclose(field, u.reshape(n, n), rtol=0, atol=1e-9, err_msg=f"step {t}")


def test_long_time_limit_is_discrete_laplace_solution():
    n = 20
    lap, b = _sparse_system(n, 1.0, PARAMS)
    steady = spl.spsolve(lap, -b.ravel()).reshape(n, n)
    p = get_problem("heat2d", n=n, n_steps=400, dt=0.01, dtype="float64")
    last = p(PARAMS[None])[0, -1]
    np.testing.assert_allclose(last, steady, atol=1e-8)
    np.testing.assert_allclose(p.steady_state(PARAMS[None])[0], steady, atol=1e-9)


def _first_mode(fields: np.ndarray, wall: float) -> np.ndarray:
    """Coefficient of sin(pi x) sin(pi y) of ``fields - wall`` (T, n, n)."""
    return scipy.fft.dstn(fields - wall, type=1, axes=(-2, -1), norm="ortho")[:, 0, 0]


def test_first_sine_mode_decays_with_the_implicit_euler_factor():
    n, dt = 31, 0.002
    p = get_problem("heat2d", n=n, n_steps=10, dt=dt, dtype="float64")
    params = np.array([500.0, 100.0, 100.0, 100.0, 100.0])
    c = _first_mode(p(params[None])[0], 100.0)
    h = 1.0 / (n + 1)
    lam11 = 2 * (4 / h**2) * math.sin(math.pi * h / 2) ** 2
    np.testing.assert_allclose(c[1:] / c[:-1], 1 / (1 + dt * lam11), rtol=1e-10)


def test_first_mode_converges_to_continuum_decay():
    """Per-unit-time decay of mode (1,1) -> exp(-2 pi^2 t) as dt, h -> 0, first order in dt."""
    t_end, errors = 0.04, []
    params = np.array([500.0, 100.0, 100.0, 100.0, 100.0])
    for n, steps in [(15, 4), (31, 8), (63, 16)]:
        p = get_problem("heat2d", n=n, n_steps=steps, dt=t_end / steps, dtype="float64")
        c = _first_mode(p(params[None])[0], 100.0)
        c0 = _first_mode(np.full((1, n, n), 500.0), 100.0)[0]
        errors.append(abs(c[-1] / c0 - math.exp(-2 * math.pi**2 * t_end)))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all(ratios > 1.8), errors    # first order in dt (h^2 terms are smaller)
    assert errors[-1] < 0.02


def test_simulate_agrees_with_batched_call_and_torch_input():
    p = get_problem("heat2d", n=10, n_steps=7)
    batch = np.stack([PARAMS, PARAMS[::-1], np.full(5, 250.0)])
    out = p(batch)
    assert out.shape == (3, 7, 10, 10) and out.dtype == np.float32
    for i in range(3):
        traj = np.stack([f for _, f in p.simulate(batch[i])])
        np.testing.assert_allclose(traj, out[i], rtol=1e-6)
    out_t = p(torch.as_tensor(batch))
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_array_equal(out_t.numpy(), out)


def test_output_every_keeps_strided_steps():
    full = get_problem("heat2d", n=6, n_steps=6)
    strided = get_problem("heat2d", n=6, n_steps=6, output_every=3)
    assert strided.output_shape == (2, 6, 6)
    np.testing.assert_allclose(strided.coordinates()["t"], [0.03, 0.06])
    np.testing.assert_array_equal(strided(PARAMS[None])[0], full(PARAMS[None])[0, [2, 5]])
    with pytest.raises(ValueError, match="output_every must divide"):
        get_problem("heat2d", n_steps=10, output_every=3)


def test_caller_array_not_modified():
    p = get_problem("heat2d", n=6, n_steps=2)
    batch = np.stack([PARAMS, PARAMS])
    before = batch.copy()
    p(batch)
    list(p.simulate(batch[0]))
    np.testing.assert_array_equal(batch, before)


def test_params_validation():
    p = get_problem("heat2d", n=6, n_steps=2)
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        list(p.simulate(np.ones(4)))
    with pytest.raises(ValueError, match="must be finite"):
        list(p.simulate(np.array([1.0, np.nan, 1, 1, 1])))
    with pytest.raises(ValueError, match="shape"):
        p(np.ones((2, 4)))
    with pytest.raises(ValueError, match="finite"):
        p(np.array([[np.inf, 1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        get_problem("heat2d", n=0)
    with pytest.raises(ValueError, match="dt"):
        get_problem("heat2d", dt=-1.0)
    # outside the nominal [100, 500] is allowed: the bounds are for samplers
    fields = [f for _, f in p.simulate(np.array([0.0, 1000.0, 0.0, 0.0, 0.0]))]
    assert len(fields) == 2


def test_simulate_is_lazy(monkeypatch):
    calls = []
    real = heat2d_module._idst
    monkeypatch.setattr(heat2d_module, "_idst", lambda x: calls.append(1) or real(x))
    p = get_problem("heat2d", n=8, n_steps=50)
    gen = p.simulate(PARAMS)
    assert calls == []            # nothing computed before the first request
    next(gen)
    first = len(calls)
    assert first <= 2             # steady state (once) + one step, not 50 steps
    next(gen)
    assert len(calls) == first + 1


def test_default_input_measure_samples_in_bounds():
    p = get_problem("heat2d", n=6, n_steps=2)
    x = np.asarray(p.default_input_measure().sample(200, generator=0))
    assert x.shape == (200, 5)
    assert x.min() >= 100 and x.max() <= 500 and x.std(0).min() > 80
