"""Burgers AMA (issue 22): the exact gradient of J, the fitted test Gaussian, the pool split,
the L-BFGS-B update and the per-N comparison table."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from wheretolearn.design.ama import AMAObjective, lbfgsb_update
from wheretolearn.design.ama_bound import BoundValue
from wheretolearn.design.ama_compare import (check_pool_baselines, comparison_table,
                                             difference_ci95, make_pool_baseline)
from wheretolearn.design.ama_problems import (BURGERS_POOL_GP, SpectrumField, ama_setup,
                                              burgers_steps, fit_fourier_gaussian)
from wheretolearn.design.labelling import Labeller
from wheretolearn.design.operator_metatest import PoolMetaTest, pool_operator_metatest
from wheretolearn.measures import FourierBasis1D, GaussianRandomField
from wheretolearn.models import DeepONet


@pytest.fixture(scope="module")
def tiny():
    """n = 16 Burgers setup with a labelled pool of 30 rows and 4 + 5 held-out rows."""
    setup = ama_setup("burgers", n=16, n_pool=30)
    labeller = Labeller(setup.problem)
    mt = setup.metatest(labeller, n_seen=4, n_unseen=5, seed=0,
                        output_weights=setup.output_weights)
    return setup, labeller, mt


def test_burgers_setup_family_solver_and_norm(tiny):
    setup, _, _ = tiny
    assert setup.problem.n == 16 and setup.problem.n_steps == burgers_steps(16) == 100
    assert setup.parameter == ["log_sigma", "log_tau", "log_alpha"]
    nu = setup.build(setup.theta0)
    # the initial field is the SPEC's periodic KLE (alpha 3, tau 1.4, sigma 5)
    ref = GaussianRandomField(FourierBasis1D(16, 7), alpha=3.0, tau=1.4, sigma=5.0,
                              dtype=torch.float64)
    torch.testing.assert_close(nu.sqrt_eigenvalues, ref.sqrt_eigenvalues)
    # one quadrature norm on [0, 2 pi): weights 2 pi / n sum to the period
    assert float(setup.input_weights.double().sum()) == pytest.approx(2 * math.pi)
    np.testing.assert_allclose(setup.points[:, 0], np.arange(16) / 16)
    assert burgers_steps(128) == 100 and burgers_steps(1024) == 500
    assert burgers_steps(8192) == 2000


@pytest.mark.parametrize("n", [32, 128])
def test_step_count_is_converged_for_the_pool_gp_and_the_initial_field(n):
    """burgers_steps(n) against a 4000-step reference, samples of both distributions the
    study labels (max error below float32 resolution of max |u0|)."""
    from wheretolearn.problems import get_problem

    setup = ama_setup("burgers", n=n, n_pool=2)
    ref = get_problem("burgers", n=n, n_steps=4000, dtype="float64")
    basis = FourierBasis1D(n, (n - 1) // 2)
    for measure in (setup.build(setup.theta0),
                    GaussianRandomField(basis, dtype=torch.float64, **BURGERS_POOL_GP)):
        u = measure.sample(4, generator=5)
        err = (setup.problem(u) - ref(u)).abs().max() / u.abs().max()
        assert float(err) < 6e-8


def test_pool_split_never_scores_pool_rows_and_q_is_fitted_to_the_pool(tiny):
    setup, labeller, mt = tiny
    assert isinstance(mt, PoolMetaTest) and mt.n_pool == 30 and mt.n_measures == 1
    assert mt.seen_x.shape == (1, 4, 16) and mt.unseen_x.shape == (1, 5, 16)
    held = torch.cat([mt.seen_x[0], mt.unseen_x[0]])
    # held-out rows are other draws than the pool rows
    assert torch.cdist(held.double(), mt.pool_x.double()).min() > 1e-3
    # the labels are the solver's
    torch.testing.assert_close(mt.unseen_y[0].double(),
                               setup.problem(mt.unseen_x[0].double()), atol=1e-6, rtol=1e-5)
    q = mt.measures[0]
    again = fit_fourier_gaussian(FourierBasis1D(16, 7), mt.pool_x)
    torch.testing.assert_close(q.sqrt_eigenvalues, again.sqrt_eigenvalues)
    assert mt.params[0]["pool_gp"] == BURGERS_POOL_GP and mt.params[0]["n_pool"] == 30
    # the same labeller and seed give the same pool (labelled once)
    n0 = labeller.n_labelled
    setup.metatest(labeller, n_seen=4, n_unseen=5, seed=0)
    assert labeller.n_labelled == n0


def test_fitted_gaussian_per_mode_mean_and_variance_against_numpy_fft():
    n, k, p = 24, 11, 400
    basis = FourierBasis1D(n, k, period=2 * math.pi)
    gp = GaussianRandomField(basis, alpha=2.0, tau=0.8, sigma=1.6, mean=0.0,
                             dtype=torch.float64)
    x = gp.sample(p, generator=3) + 0.3 * torch.cos(2 * torch.arange(n) * 2 * math.pi / n)
    q = fit_fourier_gaussian(basis, x)
    # independent route: rfft coefficients -> cos / sin amplitudes in the orthonormal basis
    # sqrt(1/pi) cos(k x), sqrt(1/pi) sin(k x) with weights 2 pi / n
    f = np.fft.rfft(x.numpy(), axis=1)[:, 1:k + 1]
    scale = (2 * math.pi / n) * math.sqrt(1 / math.pi)
    coef = np.stack([f.real * scale, -f.imag * scale], axis=2).reshape(p, 2 * k)
    np.testing.assert_allclose(q.sqrt_eigenvalues.numpy(), coef.std(0, ddof=1), rtol=1e-10)
    mean_field = (coef.mean(0) @ basis.functions.numpy())
    np.testing.assert_allclose(q.mean.numpy(), mean_field, atol=1e-12)
    assert q.mean.shape == (n,) and q.meta["residual"] < 1e-14
    # the deterministic 0.3 cos(2x) is the mean of the cos_2 term: 0.3 sqrt(pi), up to the
    # sampling error sqrt(lambda_2 / 400) = 0.017; the other terms' means are noise only
    m = coef.mean(0)
    assert abs(m[2] - 0.3 * math.sqrt(math.pi)) < 0.06
    assert np.abs(np.delete(m, 2)).max() < 0.1
    # statistically the fit recovers the generating spectrum (400 samples: ~5 % per mode)
    rel = (q.sqrt_eigenvalues / gp.sqrt_eigenvalues - 1).abs()
    assert float(rel.max()) < 0.2 and float(rel.mean()) < 0.06
    # W2 to the family member with the true parameters is the closed form of both
    nu = SpectrumField(basis, mean=0.0, sqrt_eigenvalues=gp.sqrt_eigenvalues)
    w2 = float(nu.w2_squared_to(q))
    expect = float((q.mean ** 2).sum() * 2 * math.pi / n
                   + ((gp.sqrt_eigenvalues - q.sqrt_eigenvalues) ** 2).sum())
    assert w2 == pytest.approx(expect, rel=1e-12)
    # energy outside the basis (a constant: no constant mode) is reported, not fitted
    off = fit_fourier_gaussian(basis, x + 1.0)
    torch.testing.assert_close(off.sqrt_eigenvalues, q.sqrt_eigenvalues)
    assert 0.2 < off.meta["residual"] < 1.0
    with pytest.raises(ValueError, match=r"shape \(P, 24\)"):
        fit_fourier_gaussian(basis, x[:, :5])


def test_j_gradient_matches_finite_differences_of_j(tiny):
    """dJ/dtheta through the model, the solver's discrete adjoint, m2 and W2 (float64)."""
    setup, _, mt = tiny
    model = DeepONet([16, 12, 6], [1, 12, 6], setup.points, output_shape=(16,),
                     dtype="float64", seed=0)
    nu = setup.build(setup.theta0)
    xi = nu.sample_coefficients(6, torch.Generator().manual_seed(1))
    obj = AMAObjective(setup, mt, model, xi, 1.0, 0.5, setup.g0_true_sq(), 0.1)
    theta = torch.tensor([0.3, -0.1, 0.8], dtype=torch.float64, requires_grad=True)
    b = obj(theta)
    grad, = torch.autograd.grad(b.value, theta)
    grad1, = torch.autograd.grad(obj(theta).part1, theta)
    assert float(b.part1.detach()) > 1e-3 and abs(float(grad1[0])) > 1e-3   # part1 matters
    eps = 1e-5
    for i in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[i] = eps
        t = theta.detach()
        fd = (obj.value(t + e) - obj.value(t - e)) / (2 * eps)
        assert float(grad[i]) == pytest.approx(fd, rel=1e-6, abs=1e-9)
        with torch.no_grad():
            fd1 = float(obj(t + e).part1 - obj(t - e).part1) / (2 * eps)
        assert float(grad1[i]) == pytest.approx(fd1, rel=1e-6, abs=1e-9)


class _Quadratic:
    """A stand-in objective: J = |theta - c|^2 (+ FloatingPointError beyond `wall`)."""

    def __init__(self, c, wall=math.inf):
        self.c, self.wall, self.evaluations = torch.tensor(c, dtype=torch.float64), wall, 0

    def __call__(self, theta):
        self.evaluations += 1
        t = torch.as_tensor(theta, dtype=torch.float64)
        if float(t.detach().max()) > self.wall:
            raise FloatingPointError("diverged")
        v = ((t - self.c) ** 2).sum()
        return BoundValue(v, v, v * 0, v * 0)

    def value(self, theta):
        with torch.no_grad():
            return float(self(theta).value)


def test_lbfgsb_update_lowers_j_within_bounds_and_reverts_otherwise():
    out = lbfgsb_update(_Quadratic([1.0, -2.0]), [0.0, 0.0], maxiter=20)
    np.testing.assert_allclose(out["theta"], [1.0, -2.0], atol=1e-6)
    out = lbfgsb_update(_Quadratic([1.0, -2.0]), [0.0, 0.0], maxiter=20,
                        bounds=[(-1.0, 0.5), (-1.0, 1.0)])
    np.testing.assert_allclose(out["theta"], [0.5, -1.0], atol=1e-8)
    # a frozen component stays where it is
    out = lbfgsb_update(_Quadratic([1.0, -2.0]), [0.0, 0.0], maxiter=20, mask=[True, False])
    np.testing.assert_allclose(out["theta"], [1.0, 0.0], atol=1e-6)
    # nothing lowers J below j_start: theta is kept
    out = lbfgsb_update(_Quadratic([1.0, -2.0]), [0.0, 0.0], maxiter=20, j_start=-1.0)
    assert out["theta"] == [0.0, 0.0]
    # a diverging solver counts as J = inf: the search backs off, stays finite and lowers J
    obj = _Quadratic([3.0, 0.0], wall=1.5)
    out = lbfgsb_update(obj, [0.0, 0.0], maxiter=20)
    assert max(out["theta"]) <= 1.5 and obj.value(out["theta"]) < 9.0


def test_welch_difference_interval_against_scipy():
    a, b = [0.30, 0.28, 0.35, 0.31], [0.40, 0.36, 0.45]
    d = difference_ci95(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d["diff"] == pytest.approx(np.mean(a) - np.mean(b))
    assert (d["lo"], d["hi"]) == pytest.approx((ref.low, ref.high), rel=1e-10)
    one = difference_ci95([0.2], [0.1, 0.3])        # one value: no interval
    assert one["lo"] == one["hi"] == one["diff"] == pytest.approx(0.0)


def test_comparison_table_per_n_with_verdicts():
    from wheretolearn.design.active_learning import ActiveLearningResult, ActiveLearningRound

    def result(errors):
        return ActiveLearningResult("qbc", {}, 0, [10, 50], [], [
            ActiveLearningRound(n, e, [e], [], 0.0, 1.0, 0.0, 0.5) for n, e in zip([10, 50],
                                                                                    errors)])

    dist = {"learned": {10: [0.50, 0.52, 0.51], 50: [0.20, 0.21, 0.19]},
            "initial": {10: [0.6, 0.61, 0.62], 50: [0.3, 0.31, 0.29]}}
    pool = {"qbc": [result([0.5, 0.30]), result([0.53, 0.31]), result([0.49, 0.29])]}
    t = comparison_table([10, 50], dist, pool)
    assert set(t["methods"]) == {"learned", "initial", "qbc"}
    assert t["kind"] == {"learned": "distribution", "initial": "distribution", "qbc": "pool"}
    assert t["methods"]["qbc"]["50"]["values"] == [0.30, 0.31, 0.29]
    assert t["versus"]["qbc"]["10"]["verdict"] == "tie"
    assert t["versus"]["qbc"]["50"]["verdict"] == "lower"
    assert t["versus"]["initial"]["50"]["verdict"] == "lower"
    assert t["seconds"]["qbc"] == pytest.approx(3 * 2 * 1.5)


def test_pool_baselines_registry_uses_the_query_strategies(tiny):
    setup, _, _ = tiny
    qbc = make_pool_baseline("qbc", setup)
    assert qbc.n_models == 4 and qbc.weights.shape == (16,)
    cs = make_pool_baseline("coreset", setup)
    assert cs.options() == {"features": "auto", "sketch_dim": 32, "normalize": True,
                            "init": "labelled"}
    assert make_pool_baseline("random", setup).n_models == 0
    with pytest.raises(ValueError, match="unknown active-learning strategy 'bald'; choose from "
                                         "coreset, qbc, random"):
        check_pool_baselines(["qbc", "bald"])
    with pytest.raises(ValueError, match="once"):
        check_pool_baselines(["qbc", "qbc"])


def test_pool_metatest_validates_row_counts():
    x = torch.zeros(10, 4)
    with pytest.raises(ValueError, match="n_pool \\+ n_seen \\+ n_unseen = 9 rows"):
        pool_operator_metatest(x, x, n_pool=5, n_seen=2, n_unseen=2, measure=None)
