"""The AMA-learned training distribution against pool-based active learning on the same pool
(paper §5, Fig. 6 right, SM F.6; SPEC §4; issue 22).

A problem whose test data is one labelled pool (:data:`~.ama_problems.POOL_AMA_PROBLEMS`,
Burgers) is compared at every size ``N`` of a schedule (the study's ``eval_n``, paper 10, 50,
100, ..., 1000):

* the *distribution baselines* of the guard (:func:`~.ama_study.run_ama_study`): fresh models
  trained on ``N`` samples of the AMA-learned distribution (drawn and labelled by the solver,
  not taken from the pool), of the initial one and of the Gaussian fitted to the pool;
* the *pool baselines* (:data:`POOL_BASELINES`, the registered query strategies of
  :mod:`~.active_learning`): from ``schedule[0]`` random pool rows, each round retrains the
  strategy's models from scratch on the labelled rows and queries the next batch from the pool
  (:func:`~.active_learning.run_active_learning`). ``qbc``: a committee of 4 models, largest
  committee variance in the output quadrature norm (paper F.38); ``coreset``: greedy
  k-center on the model's branch features, Gaussian sketch to 32 dimensions, normalised
  (paper F.39-F.40; distances to the labelled rows, Sener & Savarese); ``random``: uniform
  pool rows (i.i.d. samples of the test distribution).

Every model is scored on the same held-out rows (the meta-test's unseen rows, never pool
rows) with the same training settings; trial ``t`` of a pool baseline uses seed ``seed + t``.
The error of a QbC round is the mean over its committee.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral
from typing import Any, Callable

import numpy as np
from scipy import stats

from .._validation import check_nonnegative_int, check_positive_int, check_type
from .active_learning import (QUERY_STRATEGIES, ActiveLearningResult, QueryStrategy,
                              RoundHooks, available_query_strategies, make_query_strategy,
                              run_active_learning)

__all__ = ["POOL_BASELINES", "ComparisonPlan", "available_pool_baselines",
           "make_pool_baseline", "check_pool_baselines", "run_pool_comparison",
           "comparison_table", "difference_ci95"]


def _qbc_options(setup: Any) -> dict:
    return {"n_models": 4, "weights": setup.output_weights.double().reshape(-1)}


def _coreset_options(setup: Any) -> dict:
    # the DeepONet's branch features (the paper); the outputs for a model without them (FNO)
    return {"features": "auto", "sketch_dim": 32, "normalize": True, "init": "labelled"}


#: Options of the registered query strategies in an AMA comparison (the paper's settings);
#: a strategy registered without an entry here runs with its defaults.
POOL_BASELINES: dict[str, Callable[[Any], dict]] = {"qbc": _qbc_options,
                                                    "coreset": _coreset_options,
                                                    "random": lambda setup: {}}


def available_pool_baselines() -> list[str]:
    """Names ``compare`` accepts: every registered query strategy."""
    return available_query_strategies()


def check_pool_baselines(names: Any) -> list[str]:
    """``names`` as a list of distinct registered strategy names, else ``ValueError``."""
    if isinstance(names, str):
        names = [names]
    out = [str(n) for n in names]
    unknown = [n for n in out if n not in QUERY_STRATEGIES]
    if unknown:
        raise ValueError(f"unknown active-learning strategy {unknown[0]!r}; choose from "
                         f"{', '.join(available_pool_baselines())}")
    if len(set(out)) != len(out):
        raise ValueError(f"each active-learning strategy may be named once, got {out}")
    return out


def make_pool_baseline(name: str, setup: Any) -> QueryStrategy:
    """The query strategy ``name`` with the options of :data:`POOL_BASELINES` for ``setup``."""
    check_pool_baselines([name])
    options = POOL_BASELINES.get(name, lambda s: {})(setup)
    return make_query_strategy(name, **options)


@dataclass(frozen=True)
class ComparisonPlan:
    """Sizes, trials and seeds of a pool comparison (:func:`run_pool_comparison`).

    Attributes
    ----------
    schedule : tuple of int
        Strictly increasing training-set sizes ``N``, ``schedule[0]`` random pool rows to
        start (the study's ``eval_n``; paper 10, 50, 100, ..., 1000).
    trials : int >= 1
        Runs of each pool baseline.
    seed : int >= 0
        Trial ``t`` runs with seed ``seed + t``.
    """

    schedule: tuple[int, ...]
    trials: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        sizes = self.schedule
        if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
            raise TypeError(f"schedule must be a list of training-set sizes, got {sizes!r}")
        sizes = tuple(sizes)
        if not sizes or any(isinstance(n, bool) or not isinstance(n, Integral) for n in sizes):
            raise ValueError(f"schedule must be a non-empty list of integer sizes, got "
                             f"{list(sizes)}")
        if any(b <= a for a, b in zip(sizes, sizes[1:])):
            raise ValueError(f"schedule must be strictly increasing, got {list(sizes)}")
        object.__setattr__(self, "schedule", tuple(int(n) for n in sizes))
        object.__setattr__(self, "trials", check_positive_int(self.trials, "trials"))
        object.__setattr__(self, "seed", check_nonnegative_int(self.seed, "seed"))


def run_pool_comparison(names: list[str], *, setup: Any, metatest: Any,
                        model_factory: Callable[[int], Any], train_config: Any,
                        plan: ComparisonPlan,
                        on_round: Callable[[str, int, Any], None] | None = None
                        ) -> dict[str, list[ActiveLearningResult]]:
    """Run each pool baseline ``plan.trials`` times on ``metatest``'s pool.

    Parameters
    ----------
    names : list of str
        Registered strategies (:func:`available_pool_baselines`).
    setup : AMASetup
        Output weights of the training loss and of QbC's score.
    metatest : PoolMetaTest
        ``pool_x`` / ``pool_y`` (candidates, labelled once by the solver) and the unseen
        held-out rows every round is scored on (relative root error).
    model_factory : callable, ``seed -> fresh model``
    train_config : TrainConfig
        The same settings as the study's fresh models.
    plan : ComparisonPlan
        The sizes ``N`` (strictly increasing, ``schedule[0]`` random rows to start), the
        trials and the seed (trial ``t`` runs with seed ``seed + t``).
    on_round : callable, optional
        ``(name, trial, ActiveLearningRound)`` after every round.

    Returns
    -------
    ``{name: [ActiveLearningResult per trial]}``
    """
    check_type(plan, ComparisonPlan, "plan")
    from ..models.operator_training import train_operator

    names = check_pool_baselines(names)
    if getattr(metatest, "pool_x", None) is None:
        raise ValueError("the active-learning comparison needs a meta-test with a labelled "
                         "pool (a PoolMetaTest, e.g. problem burgers)")

    def train_fn(model, x, y, s):
        return train_operator(model, x, y, config=train_config, weights=setup.output_weights,
                              seed=s)

    def evaluate(model):
        model.eval()
        return metatest.error(model)

    out: dict[str, list[ActiveLearningResult]] = {}
    for name in names:
        out[name] = []
        for t in range(plan.trials):
            strategy = make_pool_baseline(name, setup)
            cb = None if on_round is None else (lambda rec, name=name, t=t: on_round(name, t, rec))
            out[name].append(run_active_learning(
                metatest.pool_x, metatest.pool_y, model_factory, strategy=strategy,
                schedule=list(plan.schedule), seed=plan.seed + t,
                hooks=RoundHooks(train_fn=train_fn, evaluate=evaluate, progress=cb)))
    return out


def difference_ci95(a: Any, b: Any) -> dict:
    """``mean(a) - mean(b)`` with Welch's two-sided 95 % interval (independent samples).

    Returns ``{"diff", "lo", "hi"}`` (``lo = hi = diff`` when either side has one value)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return {"diff": d, "lo": d, "hi": d}
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(vx + vy)
    if se == 0:
        return {"diff": d, "lo": d, "hi": d}
    df = (vx + vy) ** 2 / (vx ** 2 / (x.size - 1) + vy ** 2 / (y.size - 1))
    half = float(stats.t.ppf(0.975, df) * se)
    return {"diff": d, "lo": d - half, "hi": d + half}


def comparison_table(schedule: list[int], distribution: dict[str, dict[int, list[float]]],
                     pool: dict[str, list[ActiveLearningResult]], *,
                     reference: str = "learned") -> dict:
    """The per-N table of every method (summary key ``compare``).

    Parameters
    ----------
    schedule : list of int
    distribution : ``{source: {N: [unseen error per repeat]}}`` (the guard's fresh models)
    pool : ``{strategy: [ActiveLearningResult per trial]}``
    reference : str
        The method every other one is compared with (the AMA-learned distribution).

    Returns
    -------
    dict with ``schedule``, ``methods`` (``{method: {N: {mean, lo, hi, n, values}}}``),
    ``kind`` (``distribution`` / ``pool``), ``versus`` (``{method: {N: {diff, lo, hi,
    verdict}}}``: reference minus method with Welch's 95 % interval; verdict ``lower`` /
    ``higher`` when the interval excludes 0, else ``tie``) and ``seconds`` per pool method.
    """
    from ..report.metrics import mean_ci95

    def cell(values):
        c = mean_ci95(values)
        return {**c, "values": [float(v) for v in values]}

    methods: dict[str, dict[str, dict]] = {}
    values: dict[str, dict[int, list[float]]] = {}
    kind: dict[str, str] = {}
    for name, by_n in distribution.items():
        values[name] = {n: list(by_n[n]) for n in schedule if n in by_n}
        kind[name] = "distribution"
    seconds: dict[str, float] = {}
    for name, results in pool.items():
        values[name] = {n: [r.errors()[n] for r in results] for n in schedule}
        kind[name] = "pool"
        seconds[name] = float(sum(rd.label_seconds + rd.train_seconds + rd.eval_seconds
                                  + rd.query_seconds for r in results for rd in r.rounds))
    for name, by_n in values.items():
        methods[name] = {str(n): cell(v) for n, v in by_n.items()}
    versus: dict[str, dict[str, dict]] = {}
    if reference in values:
        for name, by_n in values.items():
            if name == reference:
                continue
            versus[name] = {}
            for n, v in by_n.items():
                d = difference_ci95(values[reference][n], v)
                d["verdict"] = ("lower" if d["hi"] < 0 else "higher" if d["lo"] > 0
                                else "tie")
                versus[name][str(n)] = d
    return {"schedule": [int(n) for n in schedule], "reference": reference,
            "error": "relative root OOD error on the unseen held-out rows (never pool rows)",
            "methods": methods, "kind": kind, "versus": versus, "seconds": seconds,
            "options": {name: results[0].strategy_options if results else {}
                        for name, results in pool.items()}}
