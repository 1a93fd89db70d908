"""Benchmark functions against hand-computed values (paper eq. F.1, SPEC §3)."""

import math

import numpy as np
import pytest
import torch

from wheretolearn.problems import Friedman1, Friedman2, RKHSFunction, SobolG, get_problem


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("x, expected", [
    ([0.5, 0.5], 0.0),     # factor 1: (0 - 1/2) / (1/2) = -1, factor 2: 0
    ([0.0, 1.0], 6.0),     # (2 - 1/2) / (1/2) = 3, (2 + 0) / 1 = 2
    ([0.25, 0.5], 0.0),
    ([1.0, 0.25], 3.0),    # 3 * 1
])
def test_sobol_g_d2_hand_values(x, expected):
    out = get_problem("sobol-g", dim=2)(torch.tensor([x], dtype=torch.float64))
    assert out.shape == (1,)
    assert float(out[0]) == pytest.approx(expected, abs=1e-14)


def test_sobol_g_d3_hand_values():
    x = torch.tensor([[1.0, 0.25, 0.75], [0.25, 0.0, 0.0]], dtype=torch.float64)
    # a = (-1/2, 0, 1/2): [3 * 1 * (1 + 1/2) / (3/2), 1 * 2 * (2 + 1/2) / (3/2)]
    np.testing.assert_allclose(SobolG(3)(x).numpy(), [3.0, 10.0 / 3.0], rtol=1e-14)


def test_friedman1_hand_values():
    x = torch.tensor([[0.5, 1.0, 0.5, 0.1, 0.2],
                      [1.0, 1.0 / 6.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    np.testing.assert_allclose(Friedman1(5)(x).numpy(), [12.0, 10.0], rtol=1e-13)
    # extra coordinates are ignored
    x7 = torch.cat([x, torch.randn(2, 2, dtype=torch.float64)], 1)
    np.testing.assert_allclose(Friedman1(7)(x7).numpy(), [12.0, 10.0], rtol=1e-13)


def test_friedman2_matches_classical_definition():
    # classical Friedman 2 in original units: sqrt(X1^2 + (X2 X3 - 1 / (X2 X4))^2) with
    # X1 = 100 x1, X2 = 40 pi + 520 pi x2, X4 = 1 + 10 x4
    x = np.array([[0.01, 0.0, 1.0, 0.0, 9.0], [0.3, 0.7, 0.2, 0.6, -1.0]])
    big = [100 * x[:, 0], 40 * math.pi + 520 * math.pi * x[:, 1], x[:, 2], 1 + 10 * x[:, 3]]
    expected = np.sqrt(big[0] ** 2 + (big[1] * big[2] - 1 / (big[1] * big[3])) ** 2)
    assert expected[0] == pytest.approx(math.sqrt(1 + (40 * math.pi - 1 / (40 * math.pi)) ** 2))
    out = Friedman2(5)(x)  # numpy in -> numpy out
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, expected, rtol=1e-13)


def test_rkhs_function_matches_explicit_sum():
    f = RKHSFunction(3, n_centers=50, bandwidth=1.5, seed=7)
    rng = np.random.default_rng(7)
    c = rng.uniform(-1, 1, 50)
    z = rng.uniform(-4, 4, (50, 3))
    x = np.array([[0.1, -0.2, 0.3], [2.0, 1.0, -3.0]])
    expected = [sum(c[j] * math.exp(-np.sum((xi - z[j]) ** 2) / (2 * 1.5 ** 2)) for j in range(50))
                for xi in x]
    np.testing.assert_allclose(f(x), expected, rtol=1e-12, atol=1e-14)
    assert f.options() == {"dim": 3, "n_centers": 50, "bandwidth": 1.5, "seed": 7}
    assert not np.allclose(RKHSFunction(3, n_centers=50, bandwidth=1.5, seed=8)(x), expected)


def test_rkhs_defaults_follow_paper_config():
    f = get_problem("rkhs")
    assert f.options() == {"dim": 10, "n_centers": 1000, "bandwidth": 5.0, "seed": 0}
    assert f.centers.abs().max() <= 4 and f.coefficients.abs().max() <= 1


@pytest.mark.parametrize("name, bad_dim", [("friedman1", 4), ("friedman2", 3), ("sobol-g", 0)])
def test_dimension_errors_name_dim(name, bad_dim):
    with pytest.raises(ValueError, match="dim"):
        get_problem(name, dim=bad_dim)


def test_wrong_input_shape_is_rejected():
    with pytest.raises(ValueError, match=r"\(B, 5\)"):
        get_problem("friedman1", dim=5)(torch.zeros(3, 4))


@pytest.mark.parametrize("name, dim", [("sobol-g", 3), ("friedman1", 5), ("friedman2", 5),
                                       ("rkhs", 4)])
def test_autograd_matches_finite_differences(name, dim):
    problem = get_problem(name, dim=dim)
    assert problem.differentiable and problem.output_shape == () and problem.input_shape == (dim,)
    # points away from the kinks of |4 x - 2| and from t = 0 in Friedman 2
    gen = torch.Generator().manual_seed(0)
    x = (0.1 + 0.05 * torch.rand(4, dim, dtype=torch.float64, generator=gen)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda u: problem(u), (x,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_inputs_not_modified_and_dtype_kept():
    x = torch.rand(5, 5, dtype=torch.float32)
    before = x.clone()
    for name in ("sobol-g", "friedman1", "friedman2"):
        out = get_problem(name, dim=5)(x)
        assert out.dtype == torch.float32 and out.shape == (5,)
    assert torch.equal(x, before)


def test_default_input_measure_is_paper_initialisation():
    nu = get_problem("friedman1").default_input_measure()
    np.testing.assert_allclose(nu.mean.numpy(), 0.5)
    np.testing.assert_allclose(nu.cov.numpy(), np.eye(5))
    np.testing.assert_allclose(get_problem("rkhs", dim=3).default_input_measure().mean.numpy(), 0.0)
