"""Darcy problem (SPEC §4): manufactured solution order, analytic centre value, adjoint gradient."""

import json
import math

import numpy as np
import pytest
import sympy
import torch

from wheretolearn.problems import get_problem
from wheretolearn.problems.darcy import Darcy


def _order(ns, errs):
    return -np.polyfit(np.log(ns), np.log(errs), 1)[0]


def _manufactured():
    """u = sin(pi x) sin(2 pi y) x, a = 1 + x y + 0.5 sin(2 pi x) cos(pi y); f = -div(a grad u)."""
    x, y = sympy.symbols("x y")
    u = sympy.sin(sympy.pi * x) * sympy.sin(2 * sympy.pi * y) * x
    a = 1 + x * y + sympy.Rational(1, 2) * sympy.sin(2 * sympy.pi * x) * sympy.cos(sympy.pi * y)
    f = -(sympy.diff(a * sympy.diff(u, x), x) + sympy.diff(a * sympy.diff(u, y), y))
    return [sympy.lambdify((x, y), e, "numpy") for e in (u, a, f)]


def test_manufactured_solution_second_order():
    u_fn, a_fn, f_fn = _manufactured()
    ns, errs = [17, 33, 65], []
    for n in ns:
        X, Y = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n), indexing="ij")
        u = Darcy(n).solve(a_fn(X, Y), f_fn(X, Y))[0]
        errs.append(np.abs(u - u_fn(X, Y)).max())
    assert errs[-1] < 2e-3
    assert 1.85 < _order(ns, errs) < 2.2


def _centre_series(terms=400):
    """u(1/2, 1/2) for -Lap u = 1 on the unit square, u = 0 on the boundary (double sine series)."""
    k = np.arange(1, 2 * terms, 2, dtype=float)
    K, L = np.meshgrid(k, k, indexing="ij")
    sign = (-1.0) ** ((K - 1) / 2 + (L - 1) / 2)
    return float((16.0 / (math.pi ** 4 * K * L * (K ** 2 + L ** 2)) * sign).sum())


def test_unit_conductivity_centre_value_converges():
    exact = _centre_series()
    assert abs(exact - 0.0736713532) < 1e-9
    ns, errs = [17, 33, 65], []
    for n in ns:
        u = get_problem("darcy", n=n)(torch.zeros(1, n, n, dtype=torch.float64))[0]
        errs.append(abs(float(u[n // 2, n // 2]) - exact))
    assert errs[-1] < 2e-5
    assert 1.9 < _order(ns, errs) < 2.1


def test_adjoint_gradient_matches_finite_differences():
    p = Darcy(8)
    gen = torch.Generator().manual_seed(0)
    x = (0.5 * torch.randn(2, 8, 8, generator=gen, dtype=torch.float64)).requires_grad_()
    w = torch.randn(2, 8, 8, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: (p(z) * w).sum(), (x,), eps=1e-6, atol=1e-8)


def test_batch_equals_single_and_no_mutation():
    p = Darcy(12)
    x = p.default_input_measure().sample(3, generator=1).double()
    before = x.clone()
    out = p(x)
    torch.testing.assert_close(out[1:2], p(x[1:2]))
    torch.testing.assert_close(x, before)
    assert out.shape == (3, 12, 12)
    assert float(out[:, 0, :].abs().max()) == 0.0 and float(out[:, :, -1].abs().max()) == 0.0
    assert float(out.min()) >= 0.0  # maximum principle: f = 1 > 0, u = 0 on the boundary


def test_conductivity_scaling():
    # -div(c a grad u) = 1 has solution u / c: log a + log c -> output / c.
    p = Darcy(10)
    x = p.default_input_measure().sample(2, generator=2).double()
    torch.testing.assert_close(p(x + math.log(3.0)), p(x) / 3.0)


def test_numpy_and_float32_io():
    p = Darcy(10)
    out = p(np.zeros((2, 10, 10), dtype=np.float32))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    json.dumps(p.options())


def test_default_measure():
    meas = Darcy(16).default_input_measure()
    params = {k: float(v) for k, v in meas.parameters().items()}
    assert params == {"alpha": 2.0, "tau": 3.0, "sigma": 3.0, "mean": 0.0}
    s = meas.sample(2000, generator=0)
    torch.testing.assert_close(meas.sample(2000, generator=0), s)
    assert s.shape == (2000, 16, 16)
    assert float(s[:, 0, :].abs().max()) < 1e-6
    q = meas.basis.quadrature_weights
    mc = float((s.double() ** 2 * q).sum(dim=(1, 2)).mean())
    assert abs(mc / float(meas.second_moment()) - 1.0) < 0.06


def test_invalid_inputs_and_options():
    with pytest.raises(ValueError, match="n"):
        Darcy(2)
    with pytest.raises(ValueError, match="source"):
        Darcy(6, source=float("nan"))
    p = Darcy(6)
    with pytest.raises(ValueError, match="shape"):
        p(torch.zeros(1, 5, 6))
    bad = torch.zeros(1, 6, 6)
    bad[0, 2, 2] = float("inf")
    with pytest.raises(ValueError, match="finite"):
        p(bad)
    with pytest.raises(ValueError, match="finite"):
        p(torch.full((1, 6, 6), 800.0, dtype=torch.float64))  # exp overflows
    with pytest.raises(ValueError, match="positive"):
        p.solve(-np.ones((6, 6)))


def test_paper_resolution_smoke():
    p = get_problem("darcy")
    assert p.options() == {"n": 64, "source": 1.0}
    u = p(p.default_input_measure().sample(4, generator=0))
    assert u.shape == (4, 64, 64) and bool(torch.isfinite(u).all())
    assert 0.0 < float(u.max()) < 1.0
