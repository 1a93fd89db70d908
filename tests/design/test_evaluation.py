"""evaluate_sources: numbers against a hand-written numpy KRR, Student-t intervals, fallback."""

import numpy as np
import pytest
import torch
from scipy import stats

from wheretolearn.design.baselines import DistributionSource, make_sources
from wheretolearn.design.evaluation import (EvaluationFit, evaluate_sources, fit_and_score,
                                            name_key, source_seed)
from wheretolearn.design.metatest import make_metatest
from wheretolearn.measures import Gaussian
from wheretolearn.problems import get_problem


@pytest.fixture(scope="module")
def setup():
    problem = get_problem("sobol-g", dim=2)
    mt = make_metatest(problem, n_measures=3, n_seen=40, n_unseen=200, seed=0,
                       dtype=torch.float64)
    return problem, mt


def _numpy_krr_error(problem, mt, x, s, eps):
    """Independent reference: dense solve of (K + N eps I) a = y, then F.5 by hand."""
    x = x.numpy()
    y = problem(x)
    k = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / (2 * s * s))
    a = np.linalg.solve(k + len(x) * eps * np.eye(len(x)), y)
    v = mt.unseen_x.numpy().reshape(-1, x.shape[1])
    kv = np.exp(-((v[:, None] - x[None]) ** 2).sum(-1) / (2 * s * s))
    truth = mt.unseen_y.numpy().reshape(-1)
    return np.sqrt(((kv @ a - truth) ** 2).sum() / (truth ** 2).sum())


def test_values_match_numpy_reference_and_t_interval(setup):
    problem, mt = setup
    src = DistributionSource("normal", Gaussian(torch.full((2,), 0.5, dtype=torch.float64),
                                                torch.eye(2, dtype=torch.float64)))
    res = evaluate_sources(problem, mt, [src], (30, 60),
                           fit=EvaluationFit(bandwidth=1.0, ridge=1e-6), repeats=3, seed=4)
    for n in (30, 60):
        cell = res["normal"][str(n)]
        ref = []
        for r in range(3):
            g = torch.Generator().manual_seed(source_seed(4, name_key("normal"), n, r))
            ref.append(_numpy_krr_error(problem, mt, src.draw(n, generator=g), 1.0, 1e-6))
        np.testing.assert_allclose(cell["values"], ref, rtol=1e-8)
        half = stats.t.ppf(0.975, 2) * np.std(ref, ddof=1) / np.sqrt(3)
        assert cell["mean"] == pytest.approx(np.mean(ref), rel=1e-10)
        assert (cell["lo"], cell["hi"]) == pytest.approx((np.mean(ref) - half, np.mean(ref) + half))
        assert cell["n"] == 3 and cell["dtype"] == "float64"


def test_all_sources_and_pool_limit(setup):
    problem, mt = setup
    init = Gaussian(torch.full((2,), 0.5, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    names = ["optimized", "normal", "barycenter", "mixture", "uniform", "ncoreset", "acoreset"]
    sources = make_sources(names, init=init, final=init, metatest=mt, bandwidth=1.0)
    seen = []
    res = evaluate_sources(problem, mt, sources, (20, 200), fit=EvaluationFit(bandwidth=1.0),
                           repeats=1, seed=0, callback=seen.append)
    assert set(res) == set(names)
    for src in sources:  # every source's number against the numpy KRR on the same draw
        g = torch.Generator().manual_seed(source_seed(0, name_key(src.name), 20, 0))
        ref = _numpy_krr_error(problem, mt, src.draw(20, generator=g, metatest=mt), 1.0, 1e-7)
        assert res[src.name]["20"]["mean"] == pytest.approx(ref, rel=1e-6), src.name
    # the coreset pool holds 3 * 40 = 120 points: N = 200 is skipped, not faked
    assert res["ncoreset"]["200"]["mean"] is None and "pool" in res["ncoreset"]["200"]["skipped"]
    assert res["normal"]["200"]["mean"] is not None
    assert len(seen) == 7 + 5  # one callback per fit
    # "optimized" and "normal" are the same Gaussian but get different seeds (the name is
    # part of the seed)
    assert res["optimized"]["20"]["values"] != res["normal"]["20"]["values"]


def test_seeds_follow_the_name_not_the_position(setup):
    """Dropping or reordering baselines must not change the others' numbers (it did: the
    seed used the source's index, so a mixture read 0.320 or 0.332 by list position)."""
    problem, mt = setup
    init = Gaussian(torch.full((2,), 0.5, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    names = ["normal", "barycenter", "mixture"]
    full = evaluate_sources(problem, mt, make_sources(names, init=init, metatest=mt,
                                                      bandwidth=1.0), (25,), repeats=2,
                            fit=EvaluationFit(bandwidth=1.0), seed=3)
    alone = evaluate_sources(problem, mt, make_sources(["mixture"], init=init, metatest=mt,
                                                       bandwidth=1.0), (25,), repeats=2,
                             fit=EvaluationFit(bandwidth=1.0), seed=3)
    assert alone["mixture"]["25"]["values"] == full["mixture"]["25"]["values"]


def test_float32_failure_falls_back_to_float64(setup):
    problem, mt = setup
    # 300 nearly identical points: K + N eps I is singular in float32 with eps = 1e-12
    x = 0.5 + 1e-4 * torch.randn(300, 2, generator=torch.Generator().manual_seed(0),
                                 dtype=torch.float64)
    err, used = fit_and_score(problem, mt, x, bandwidth=2.0, ridge=1e-12, dtype="float32")
    assert used == "float64" and np.isfinite(err)


def test_float32_overflowing_predictions_fall_back_to_float64():
    from wheretolearn.design.metatest import MetaTest

    def huge(x):  # labels near the float32 maximum: k(v, X) a overflows in float32
        return torch.full((x.shape[0],), 3e38, dtype=x.dtype)

    g = torch.Generator().manual_seed(0)
    seen, unseen = torch.rand(1, 20, 2, generator=g), torch.rand(1, 30, 2, generator=g)
    mt = MetaTest([Gaussian(torch.zeros(2), scale_tril=torch.eye(2))], seen,
                  huge(seen[0])[None], unseen, huge(unseen[0])[None])
    x = torch.rand(40, 2, generator=g)
    # used to raise "pred and truth must be finite" from the float32 attempt
    err, used = fit_and_score(huge, mt, x, bandwidth=1.0, ridge=1e-3, dtype="float32")
    ref, _ = fit_and_score(huge, mt, x, bandwidth=1.0, ridge=1e-3, dtype="float64")
    assert used == "float64" and err == ref and np.isfinite(err)


def test_bad_arguments(setup):
    problem, mt = setup
    fit = EvaluationFit(bandwidth=1.0)
    with pytest.raises(ValueError, match="n_values"):
        evaluate_sources(problem, mt, [], (0,), fit=fit)
    with pytest.raises(ValueError, match="repeats"):
        evaluate_sources(problem, mt, [], (5,), fit=fit, repeats=0)
    with pytest.raises(TypeError, match="fit must be an EvaluationFit, got dict"):
        evaluate_sources(problem, mt, [], (5,), fit={"bandwidth": 1.0})
    with pytest.raises(ValueError, match="EvaluationFit.ridge must be a finite number > 0"):
        EvaluationFit(bandwidth=1.0, ridge=0.0)
    with pytest.raises(ValueError, match="EvaluationFit.dtype must be"):
        EvaluationFit(bandwidth=1.0, dtype="float16")
