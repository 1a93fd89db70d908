"""Meta-test family: shapes, seeding, SPD covariances, labels (paper SM F.1 eq. F.4)."""

import numpy as np
import pytest
import torch

from wheretolearn.design import MetaTest, make_metatest
from wheretolearn.problems import get_problem
from wheretolearn.report import relative_ood_error


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_shapes_dtype_and_labels():
    problem = get_problem("friedman1", dim=5)
    mt = make_metatest(problem, n_measures=3, n_seen=20, n_unseen=30, seed=1)
    assert isinstance(mt, MetaTest) and mt.dim == 5 and mt.n_measures == 3
    assert mt.seen_x.shape == (3, 20, 5) and mt.seen_y.shape == (3, 20)
    assert mt.unseen_x.shape == (3, 30, 5) and mt.unseen_y.shape == (3, 30)
    assert mt.seen_x.dtype == torch.float32
    np.testing.assert_allclose(mt.unseen_y.numpy(),
                               problem(mt.unseen_x.double().reshape(-1, 5)).reshape(3, 30).numpy(),
                               rtol=1e-5, atol=1e-4)
    assert make_metatest(problem, n_measures=2, n_seen=5, n_unseen=5,
                         dtype=torch.float64).unseen_y.dtype == torch.float64


def test_same_seed_same_family_other_seed_differs():
    problem = get_problem("sobol-g", dim=2)
    a = make_metatest(problem, n_measures=4, n_seen=10, n_unseen=10, seed=3)
    b = make_metatest(problem, n_measures=4, n_seen=10, n_unseen=10, seed=3)
    c = make_metatest(problem, n_measures=4, n_seen=10, n_unseen=10, seed=4)
    assert torch.equal(a.seen_x, b.seen_x) and torch.equal(a.unseen_y, b.unseen_y)
    assert not torch.equal(a.seen_x, c.seen_x)


def test_covariances_spd_and_samples_follow_measures():
    problem = get_problem("sobol-g", dim=3)
    mt = make_metatest(problem, n_measures=5, n_seen=4000, n_unseen=4000, seed=0,
                       dtype=torch.float64)
    for j, q in enumerate(mt.measures):
        cov = q.cov
        assert torch.allclose(cov, cov.T)
        assert float(torch.linalg.eigvalsh(cov).min()) > 0
        x = torch.cat([mt.seen_x[j], mt.unseen_x[j]])
        # sample mean / covariance within Monte Carlo error (8000 samples)
        scale = float(torch.linalg.eigvalsh(cov).max()) ** 0.5
        assert torch.allclose(x.mean(0), q.mean, atol=0.1 * scale)
        assert torch.allclose(torch.cov(x.T), cov, atol=0.15 * scale ** 2)


def test_wishart_moments():
    # E[C] = (d + 1) I for C ~ Wishart(d + 1, I_d); averaged over 400 measures
    mt = make_metatest(get_problem("sobol-g", dim=2), n_measures=400, n_seen=1, n_unseen=0,
                       seed=5, dtype=torch.float64)
    mean_cov = torch.stack([q.cov for q in mt.measures]).mean(0)
    np.testing.assert_allclose(mean_cov.numpy(), 3.0 * np.eye(2), atol=0.35)
    means = torch.stack([q.mean for q in mt.measures])
    np.testing.assert_allclose(means.mean(0).numpy(), 0.0, atol=0.2)
    np.testing.assert_allclose(means.var(0).numpy(), 1.0, atol=0.2)


def test_error_of_predictors():
    problem = get_problem("sobol-g", dim=2)
    mt = make_metatest(problem, n_measures=2, n_seen=10, n_unseen=20, seed=0)
    assert mt.error(lambda v: problem(v)) == pytest.approx(0.0, abs=1e-6)
    assert mt.error(lambda v: torch.zeros(v.shape[0])) == pytest.approx(1.0)
    half = mt.error(lambda v: 0.5 * problem(v), split="seen")
    assert half == pytest.approx(0.5, rel=1e-5)
    assert mt.error(lambda v: v[:, 0], split="all") == pytest.approx(
        relative_ood_error(torch.cat([mt.seen_x, mt.unseen_x], 1)[..., 0],
                           torch.cat([mt.seen_y, mt.unseen_y], 1)), rel=1e-6)
    with pytest.raises(ValueError, match="split"):
        mt.error(problem, split="test")
    with pytest.raises(ValueError, match="40 values"):
        mt.error(lambda v: torch.zeros(3))


def test_rejects_non_scalar_problem_and_bad_sizes():
    with pytest.raises(ValueError, match="n_measures"):
        make_metatest(get_problem("sobol-g"), n_measures=0)
    with pytest.raises(ValueError, match="dim"):
        make_metatest(get_problem("sobol-g", dim=2), dim=3)
