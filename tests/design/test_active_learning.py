"""Pool-based active learning (issue 22): QbC and CoreSet on cases with a known answer,
the common query contract and the retrain-from-scratch driver."""

import math

import numpy as np
import pytest
import torch

from wheretolearn.design.active_learning import (
    QUERY_STRATEGIES,
    CoreSet,
    QueryByCommittee,
    RoundHooks,
    available_query_strategies,
    default_train_fn,
    make_query_strategy,
    run_active_learning,
)
from wheretolearn.models import DeepONet
from wheretolearn.models.operator_training import TrainConfig

# --------------------------------------------------------------------------- CoreSet
#: A at the origin is labelled; B..E are candidates.
PLANE = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0], [4.0, 1.0], [1.0, 1.0]],
                     dtype=torch.float64)


def test_coreset_greedy_k_center_order_by_hand():
    """Distances to A: B 4, C 3, D sqrt(17) = 4.12, E sqrt(2) = 1.41 -> D first.
    After D: B 1, C 3, E 1.41 -> C.  After C: B 1, E 1.41 -> E.  Then B.
    (Ranking by distance to the labelled set alone would give D, B, C.)"""
    cs = CoreSet(features="input", sketch_dim=None, normalize=False)
    assert cs.query(PLANE, [0], batch_size=3).tolist() == [3, 2, 4]
    assert cs.query(PLANE, [0], batch_size=4).tolist() == [3, 2, 4, 1]
    # with D already labelled too, the farthest from {A, D} is C
    assert cs.query(PLANE, [0, 3], batch_size=1).tolist() == [2]


def test_coreset_on_branch_features_uses_model_features_then_normalises():
    """Features (p = 2 <= k: no sketch) normalised onto the unit circle: a point far out but in
    the labelled direction is close after normalisation."""
    class Feats:
        def features(self, u):
            return u

    pool = torch.tensor([[1.0, 0.0], [100.0, 1.0], [0.0, 1.0], [-1.0, 0.1]], dtype=torch.float64)
    cs = CoreSet()   # features = model.features, normalised
    # angles from (1, 0): row 1 ~0.01 rad, row 2 pi/2, row 3 ~pi -> row 3 first, then row 2
    assert cs.query(pool, [0], [Feats()], batch_size=2).tolist() == [3, 2]
    raw = CoreSet(normalize=False)
    assert raw.query(pool, [0], [Feats()], batch_size=1).tolist() == [1]


def test_coreset_auto_features_use_outputs_of_a_model_without_features():
    """features='auto': a model without ``features`` (an FNO) is embedded by its outputs; here
    the output maps row 3 farthest from the labelled row 0, the input distances would not."""
    class OutputsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 50.0]],
                                                     dtype=torch.float64))

        def forward(self, u):
            return u @ self.w

    pool = torch.tensor([[0.0, 0.0], [3.0, 0.0], [2.0, 0.0], [0.0, 0.1]], dtype=torch.float64)
    auto = CoreSet(features="auto", normalize=False)
    assert auto.query(pool, [0], [OutputsOnly()], batch_size=1).tolist() == [3]
    by_input = CoreSet(features="input", normalize=False)
    assert by_input.query(pool, [0], [], batch_size=1).tolist() == [1]
    with pytest.raises(TypeError, match="features"):
        CoreSet().query(pool, [0], [OutputsOnly()], batch_size=1)


def test_coreset_sketch_is_seeded_and_keeps_distances_roughly():
    gen = torch.Generator().manual_seed(0)
    pool = torch.randn(40, 200, dtype=torch.float64, generator=gen)
    cs = CoreSet(features="input", normalize=False)
    z1, z2 = cs.embed(pool, generator=3), cs.embed(pool, generator=3)
    assert z1.shape == (40, 32)
    torch.testing.assert_close(z1, z2, rtol=0, atol=0)
    assert not torch.equal(z1, cs.embed(pool, generator=4))
    # Johnson-Lindenstrauss: squared distances kept on average (ratio near 1)
    ratio = torch.pdist(z1) ** 2 / torch.pdist(pool) ** 2
    assert abs(float(ratio.mean()) - 1.0) < 0.15
    normed = CoreSet(features="input").embed(pool, generator=3)
    np.testing.assert_allclose(normed.norm(dim=1).numpy(), 1.0, atol=1e-12)


def test_coreset_random_start_and_empty_labelled_set():
    cs = CoreSet(features="input", sketch_dim=None, normalize=False)
    a = cs.query(PLANE, [], batch_size=5, generator=1).tolist()
    assert sorted(a) == [0, 1, 2, 3, 4]
    assert a == cs.query(PLANE, [], batch_size=5, generator=1).tolist()
    paper = CoreSet(features="input", sketch_dim=None, normalize=False, init="random")
    b = paper.query(PLANE, [0], batch_size=2, generator=2).tolist()
    assert 0 not in b and len(set(b)) == 2


def test_coreset_never_repeats_duplicates_or_labelled_rows():
    pool = torch.zeros(6, 3, dtype=torch.float64)          # all rows identical: ties everywhere
    cs = CoreSet(features="input", sketch_dim=None)
    assert cs.query(pool, [1, 4], batch_size=4).tolist() == [0, 2, 3, 5]


# --------------------------------------------------------------------------- QbC
class Member:
    """Stub committee member: prediction of pool row i is sign * spread[i] (3 outputs)."""

    def __init__(self, spread, sign):
        self.spread, self.sign = spread, sign

    def __call__(self, x):
        return self.sign * self.spread[x[:, 0].long()] + 7.0   # common offset: no variance


def test_qbc_picks_the_largest_committee_variance():
    spread = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 3.0], [2.0, 2.0, 2.0], [0.5, 0.5, 0.5],
                           [0.0, 0.0, 0.0], [1.0, 2.0, 2.0]], dtype=torch.float64)
    pool = torch.arange(6, dtype=torch.float64)[:, None]
    committee = [Member(spread, s) for s in (1.0, -1.0, 1.0, -1.0)]
    qbc = QueryByCommittee()
    # members are +-spread: mean 0, population variance spread^2, averaged over outputs
    expected = (spread ** 2).mean(1)                          # 1, 3, 4, 0.25, 0, 3
    torch.testing.assert_close(qbc.scores(pool, committee), expected)
    assert qbc.query(pool, [], committee, batch_size=3).tolist() == [2, 1, 5]   # tie: lower first
    assert qbc.query(pool, [2], committee, batch_size=3).tolist() == [1, 5, 0]
    weighted = QueryByCommittee(weights=[0.0, 0.0, 1.0])     # only the last output counts
    assert weighted.query(pool, [], committee, batch_size=2).tolist() == [1, 2]


def test_qbc_on_deeponets_scores_are_nonnegative_and_seeded_committees_differ():
    pts = np.linspace(0, 1, 5)[:, None]
    committee = [DeepONet([8, 16, 4], [1, 16, 4], pts, seed=s) for s in range(4)]
    pool = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
    s = QueryByCommittee().scores(pool, committee)
    assert s.shape == (30,) and bool((s >= 0).all()) and float(s.max()) > 0
    same = QueryByCommittee().scores(pool, [committee[0]] * 4)
    assert float(same.abs().max()) == 0.0


# --------------------------------------------------------------------------- contract
def test_registry_and_options():
    assert available_query_strategies() == sorted(QUERY_STRATEGIES)
    assert {"qbc", "coreset", "random"} <= set(QUERY_STRATEGIES)
    assert make_query_strategy("qbc").n_models == 4
    assert make_query_strategy("coreset", sketch_dim=16).options()["sketch_dim"] == 16
    with pytest.raises(ValueError, match=r"query strategy must be one of .*'qbc'.*got 'bald'"):
        make_query_strategy("bald")
    with pytest.raises(TypeError, match="takes the options .*unknown \\['sketch'\\]"):
        make_query_strategy("coreset", sketch=3)
    with pytest.raises(ValueError, match="n_models .* at least 2, got 1"):
        make_query_strategy("qbc", n_models=1)


def test_query_validation_names_argument_and_value():
    cs = CoreSet(features="input")
    with pytest.raises(ValueError, match=r"batch_size must be at most .*\(P - L = 5 - 2 = 3\), got 4"):
        cs.query(PLANE, [0, 1], batch_size=4)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        cs.query(PLANE, [0], batch_size=0)
    with pytest.raises(ValueError, match=r"labelled_idx must lie in \[0, 5\)"):
        cs.query(PLANE, [7], batch_size=1)
    with pytest.raises(ValueError, match="labelled_idx must not repeat"):
        cs.query(PLANE, [1, 1], batch_size=1)
    with pytest.raises(ValueError, match="labelled_idx must be a 1-D sequence of integer"):
        cs.query(PLANE, [0.5], batch_size=1)
    with pytest.raises(ValueError, match="needs 4 fitted model"):
        QueryByCommittee().query(PLANE, [0], [lambda x: x], batch_size=1)
    with pytest.raises(TypeError, match=r"needs a model with a \.features"):
        CoreSet().query(PLANE, [0], [lambda x: x], batch_size=1)


@pytest.mark.parametrize("name", ["random", "coreset", "qbc"])
def test_every_strategy_returns_distinct_unlabelled_rows_and_leaves_inputs_alone(name):
    gen = torch.Generator().manual_seed(5)
    pool = torch.randn(50, 8, generator=gen)
    pool_np = pool.numpy().copy()
    labelled = np.array([3, 7, 11, 40])
    pts = np.linspace(0, 1, 5)[:, None]
    models = [DeepONet([8, 16, 4], [1, 16, 4], pts, seed=s) for s in range(4)]
    strat = make_query_strategy(name)
    picked = strat.query(pool_np, labelled, models, batch_size=46, generator=9)
    assert picked.dtype == torch.long and picked.shape == (46,)
    assert sorted(picked.tolist() + labelled.tolist()) == list(range(50))
    again = strat.query(pool_np, labelled, models, batch_size=10, generator=9)
    assert again.tolist() == strat.query(pool_np, labelled, models, batch_size=10,
                                         generator=9).tolist()
    np.testing.assert_array_equal(pool_np, pool.numpy())
    np.testing.assert_array_equal(labelled, [3, 7, 11, 40])


# --------------------------------------------------------------------------- driver
class LinearModel(torch.nn.Module):
    """Least-squares linear map, 'trained' exactly by train_ls (fast, deterministic)."""

    def __init__(self, seed, d_in=6, d_out=4):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(d_in, d_out, generator=g, dtype=torch.float64))

    def forward(self, x):
        return x @ self.w

    def features(self, x):
        return x @ self.w


def train_ls(model, x, y, seed):
    with torch.no_grad():
        model.w.copy_(torch.linalg.lstsq(x, y).solution + 1e-3 * torch.randn(
            model.w.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))


#: The driver's rounds trained by least squares.
LS = RoundHooks(train_fn=train_ls)


def _pool(n=80):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    a = torch.randn(6, 4, generator=g, dtype=torch.float64)
    return x, lambda u: u @ a


@pytest.mark.parametrize("name", ["qbc", "coreset", "random"])
def test_driver_grows_to_each_size_retrains_and_is_seeded(name):
    x, truth = _pool()
    x_before = x.clone()
    calls, labelled_rows, made = [], [], []

    def label(u):
        labelled_rows.append(u.shape[0])
        return truth(u)

    def factory(seed):
        made.append(seed)
        return LinearModel(seed)

    def evaluate(model):
        calls.append(1)
        with torch.no_grad():
            return float((model(x) - truth(x)).norm() / truth(x).norm())

    hooks = RoundHooks(train_fn=train_ls, evaluate=evaluate)
    res = run_active_learning(x, label, factory, strategy=name, schedule=[10, 25, 40],
                              hooks=hooks, seed=3, keep_models=True)
    members = make_query_strategy(name).n_models or 1
    assert [r.n for r in res.rounds] == [10, 25, 40]
    assert labelled_rows == [10, 15, 15]                  # each row labelled once
    assert len(made) == 3 * members and len(set(made)) == 3 * members   # fresh models
    assert len(calls) == 3 * members
    assert len(res.selected) == 40 and len(set(res.selected)) == 40
    assert [len(r.queried) for r in res.rounds] == [15, 15, 0]
    assert res.selected[10:25] == res.rounds[0].queried
    assert all(len(res.models[n]) == members for n in (10, 25, 40))
    assert res.errors()[40] is not None and res.rounds[0].errors
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)
    again = run_active_learning(x, label, factory, strategy=name, schedule=[10, 25, 40],
                                hooks=hooks, seed=3)
    assert again.selected == res.selected and again.models == {}
    other = run_active_learning(x, label, factory, strategy=name, schedule=[10, 25, 40],
                                hooks=RoundHooks(train_fn=train_ls), seed=4)
    assert other.selected != res.selected
    d = res.to_dict()
    assert d["strategy"] == name and d["rounds"][1]["n"] == 25 and "models" not in d


def test_driver_with_pool_labels_and_the_default_deeponet_training():
    """The default train_fn (train_operator) on a tiny DeepONet, labels looked up."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 8, generator=g)
    y = torch.sin(x[:, :5]) + 2.0
    pts = np.linspace(0, 1, 5)[:, None]
    res = run_active_learning(x, y, lambda s: DeepONet([8, 16, 4], [1, 16, 4], pts, seed=s % 1000),
                              strategy=CoreSet(), schedule=(5, 12),
                              hooks=RoundHooks(default_train_fn(TrainConfig(steps=5,
                                                                            eval_every=5))),
                              keep_models=True, seed=0)
    assert len(res.selected) == 12 and res.rounds[0].error is None
    assert isinstance(res.models[12][0], DeepONet)


@pytest.mark.parametrize("schedule,err,match", [
    ([], ValueError, r"at least one training-set size, got \[\]"),
    ([1, 10], ValueError, r"schedule\[0\] \(the random start\) must be at least 2 samples, got 1"),
    ([10, 50, 50], ValueError, r"strictly increasing, got schedule\[1\] = 50 then schedule\[2\] = 50"),
    ([10, 100], ValueError, "must not exceed the pool size 80, got 100"),
    ([10, 20.5], TypeError, r"schedule\[1\] must be an integer, got 20.5"),
    ("10,20", TypeError, "schedule must be a list of training-set sizes"),
])
def test_driver_schedule_validation(schedule, err, match):
    x, truth = _pool()
    with pytest.raises(err, match=match):
        run_active_learning(x, truth, LinearModel, strategy="random", schedule=schedule,
                            hooks=LS)


def test_driver_argument_validation():
    x, truth = _pool()
    with pytest.raises(ValueError, match="query strategy must be one of"):
        run_active_learning(x, truth, LinearModel, strategy="bald", schedule=[10], hooks=LS)
    with pytest.raises(ValueError, match=r"one row per pool row \(80\), got shape \(79, 4\)"):
        run_active_learning(x, truth(x)[:79], LinearModel, strategy="random", schedule=[10],
                            hooks=LS)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        run_active_learning(x, truth, LinearModel, strategy="random", seed=-1,
                            schedule=[10], hooks=LS)
    with pytest.raises(TypeError, match="evaluate must be callable or None, got float"):
        RoundHooks(evaluate=0.5)
    with pytest.raises(TypeError, match="hooks must be a RoundHooks, got dict"):
        run_active_learning(x, truth, LinearModel, strategy="random", schedule=[10],
                            hooks={"train_fn": train_ls})
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        default_train_fn({"steps": 3})
    assert math.isfinite(run_active_learning(
        x, truth, LinearModel, strategy="random", schedule=[10],
        hooks=RoundHooks(train_fn=train_ls, evaluate=lambda m: 0.5)).rounds[0].error)
