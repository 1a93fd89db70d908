"""Pool-based active learning baselines for operator learning (paper §5, SM F.6; SPEC §4).

A *query strategy* chooses which points of a fixed candidate pool to label next. Every
strategy answers one call, independent of the model class (scikit-activeml's contract)::

    idx = strategy.query(pool_x, labelled_idx, models, batch_size=b, generator=seed)

``pool_x`` (P, *in) are the candidates, ``labelled_idx`` (L,) the pool rows already
labelled, ``models`` the ``strategy.n_models`` models fitted on them (any callables
``(B, *in) -> (B, *out)``; CoreSet needs a feature map, see below). The answer is ``b``
distinct unlabelled pool indices, in the order they were chosen.

Strategies (:data:`QUERY_STRATEGIES`, built by :func:`make_query_strategy`):

* ``random``  -- uniform draws without replacement from the unlabelled rows.
* ``qbc``     -- Query-by-Committee (paper F.38): a committee of ``M`` models (default 4,
  trained from different seeds); the score of pool point ``u_i`` is the committee variance
  averaged over the output points ``y_j``::

      s_i = (1/J) sum_j (1/M) sum_m (G_m(u_i)(y_j) - Gbar(u_i)(y_j))^2,
      Gbar = (1/M) sum_m G_m,

  (with output quadrature weights ``w_j``, ``sum_j w_j (...)`` instead of the mean; the
  paper's ``h sum_j`` ranks the same as the mean); the ``b`` largest scores are taken.
* ``coreset`` -- greedy k-center (Sener & Savarese 2018; paper F.39-F.40) on last-layer
  features: ``phi(u)`` = the DeepONet branch output (its ``p`` features, ``model.features``),
  sketched ``z = R^T phi(u)`` with a seeded Gaussian ``R`` (p, k), entries ``N(0, 1/k)``,
  ``k = 32`` (skipped when ``p <= k``), and normalised ``z / ||z||``; then ``b`` times
  ``i* = argmax_{i unlabelled} min_{s in S} ||z_i - z_s||``, ``S <- S + {i*}``, starting
  from ``S`` = the labelled rows (``init="random"``: from one random pool row, counted in
  the batch, as the paper's text reads).

:func:`run_active_learning` is the loop of the paper's comparison: start from
``schedule[0]`` (10) random pool rows, then for each size ``N`` in the schedule train the
strategy's models *from scratch* on the ``N`` labelled rows, evaluate them, and query
``N_next - N`` more rows with those models.
"""

from __future__ import annotations

import inspect
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from numbers import Integral
from typing import Any

import numpy as np
import torch

from .._validation import as_tensor, check_positive_int, check_type, torch_generator
from ..models.operator_training import first_real_parameter

__all__ = [
    "QUERY_STRATEGIES",
    "ActiveLearningResult",
    "ActiveLearningRound",
    "CoreSet",
    "QueryByCommittee",
    "QueryStrategy",
    "RandomQuery",
    "RoundHooks",
    "available_query_strategies",
    "default_train_fn",
    "make_query_strategy",
    "register_query_strategy",
    "run_active_learning",
]

#: Pool rows evaluated per model call when scoring (bounds memory to chunk x output size).
_CHUNK = 512


# ------------------------------------------------------------------------------ helpers
def _pool_tensor(pool_x: Any) -> torch.Tensor:
    x = as_tensor(pool_x, "pool_x")
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"pool_x must have shape (P, *input_shape) with P >= 1, got "
                         f"{tuple(x.shape)}")
    return x


def _labelled_index(labelled_idx: Any, n_pool: int) -> torch.Tensor:
    """``labelled_idx`` as a 1-D int64 tensor of distinct rows in ``[0, n_pool)``."""
    if labelled_idx is None:
        return torch.zeros(0, dtype=torch.long)
    arr = np.asarray(labelled_idx.detach().cpu() if isinstance(labelled_idx, torch.Tensor)
                     else labelled_idx)
    if arr.size == 0:
        return torch.zeros(0, dtype=torch.long)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labelled_idx must be a 1-D sequence of integer pool indices, got "
                         f"{arr.ndim}-D array of dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= n_pool:
        raise ValueError(f"labelled_idx must lie in [0, {n_pool}) (the pool has {n_pool} rows), "
                         f"got values from {arr.min()} to {arr.max()}")
    if np.unique(arr).size != arr.size:
        raise ValueError("labelled_idx must not repeat an index, got "
                         f"{arr.size - np.unique(arr).size} repeated")
    return torch.from_numpy(arr.astype(np.int64))


def _check_batch(batch_size: Any, n_pool: int, n_labelled: int) -> int:
    b = check_positive_int(batch_size, "batch_size")
    free = n_pool - n_labelled
    if b > free:
        raise ValueError(f"batch_size must be at most the number of unlabelled pool rows "
                         f"(P - L = {n_pool} - {n_labelled} = {free}), got {b}")
    return b


def _model_dtype(model: Any, x: torch.Tensor) -> tuple[torch.dtype, torch.device]:
    """Dtype and device of ``model``'s first real parameter, else those of ``x``."""
    has_params = callable(getattr(model, "parameters", None))
    first = first_real_parameter(model) if has_params else None
    return (x.dtype, x.device) if first is None else (first.dtype, first.device)


def _apply(fn: Callable[[torch.Tensor], torch.Tensor], model: Any,
           x: torch.Tensor) -> torch.Tensor:
    """``fn`` on ``x`` in chunks of :data:`_CHUNK` rows, without gradients, flattened to
    (P, -1) float64 on the CPU."""
    dtype, device = _model_dtype(model, x)
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], _CHUNK):
            y = fn(x[i:i + _CHUNK].to(dtype=dtype, device=device))
            out.append(y.reshape(y.shape[0], -1).detach().to("cpu", torch.float64))
    return torch.cat(out)


# ------------------------------------------------------------------------------ contract
class QueryStrategy(ABC):
    """Base of the pool-based query strategies.

    Subclasses set :attr:`name`, :attr:`n_models` and implement :meth:`_select`;
    :meth:`query` validates the arguments once for all of them.

    Attributes
    ----------
    name : str
        Registry name.
    n_models : int
        How many models :func:`run_active_learning` trains per round and passes to
        :meth:`query` (the committee size for QbC, 1 otherwise).
    """

    name: str = "strategy"
    n_models: int = 1

    def query(self, pool_x: Any, labelled_idx: Any, models: Sequence[Any] = (), *,
              batch_size: int, generator: Any = None) -> torch.Tensor:
        """Choose ``batch_size`` unlabelled pool rows to label next.

        Parameters
        ----------
        pool_x : (P, *in) array-like
            Candidate inputs (never modified).
        labelled_idx : (L,) int array-like
            Pool rows already labelled (distinct, in ``[0, P)``); may be empty.
        models : sequence of callables
            The strategy's ``n_models`` models fitted on the labelled rows (``random``
            needs none). Each maps (B, *in) -> (B, *out); ``nn.Module`` inputs are cast to
            the module's dtype and device.
        batch_size : int
            Rows to choose, ``1 <= batch_size <= P - L``.
        generator : int, torch.Generator or None
            Randomness of the strategy (random draws, CoreSet's sketch and random start).

        Returns
        -------
        (batch_size,) int64 tensor
            Distinct pool indices not in ``labelled_idx``, in the order chosen.
        """
        x = _pool_tensor(pool_x)
        lab = _labelled_index(labelled_idx, x.shape[0])
        b = _check_batch(batch_size, x.shape[0], lab.numel())
        models = list(models)
        if len(models) < self.n_models:
            raise ValueError(f"query strategy {self.name!r} needs {self.n_models} fitted "
                             f"model(s), got {len(models)}")
        g = torch_generator(generator)
        picked = self._select(x, lab, models[:self.n_models] if self.n_models else [], b, g)
        return picked.to(torch.long)

    @abstractmethod
    def _select(self, pool_x: torch.Tensor, labelled: torch.Tensor, models: list,
                batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Validated inputs -> (batch_size,) distinct unlabelled indices."""

    def options(self) -> dict[str, Any]:
        """Constructor options (JSON-serialisable), for provenance."""
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


QUERY_STRATEGIES: dict[str, type[QueryStrategy]] = {}


def register_query_strategy(name: str) -> Callable[[type[QueryStrategy]], type[QueryStrategy]]:
    """Class decorator: make a strategy constructible as ``make_query_strategy(name, ...)``."""
    def deco(cls: type[QueryStrategy]) -> type[QueryStrategy]:
        if name in QUERY_STRATEGIES:
            raise ValueError(f"query strategy {name!r} is already registered")
        cls.name = name
        QUERY_STRATEGIES[name] = cls
        return cls
    return deco


def available_query_strategies() -> list[str]:
    """Registered strategy names, sorted."""
    return sorted(QUERY_STRATEGIES)


def make_query_strategy(name: str, **options: Any) -> QueryStrategy:
    """Build the strategy registered as ``name`` with its keyword ``options``.

    Raises ``ValueError`` for an unknown name and ``TypeError`` for an option the strategy
    does not take (both list what is allowed).
    """
    if name not in QUERY_STRATEGIES:
        raise ValueError(f"query strategy must be one of {available_query_strategies()}, "
                         f"got {name!r}")
    cls = QUERY_STRATEGIES[name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"query strategy {name!r} takes the options {allowed}, got unknown "
                        f"{unknown}")
    return cls(**options)


# ------------------------------------------------------------------------------ strategies
@register_query_strategy("random")
class RandomQuery(QueryStrategy):
    """Uniform draws without replacement from the unlabelled pool rows (needs no model)."""

    n_models = 0

    def __init__(self) -> None:
        pass

    def _select(self, pool_x, labelled, models, batch_size, generator):
        free = torch.ones(pool_x.shape[0], dtype=torch.bool)
        free[labelled] = False
        candidates = torch.nonzero(free)[:, 0]
        return candidates[torch.randperm(candidates.numel(), generator=generator)[:batch_size]]


@register_query_strategy("qbc")
class QueryByCommittee(QueryStrategy):
    """Largest committee variance (paper F.38).

    Parameters
    ----------
    n_models : int
        Committee size ``M >= 2`` (paper: 4 DeepONets trained from different seeds).
    weights : (J,) array-like, optional
        Output quadrature weights ``w_j`` (flattened output shape); default: the mean over
        the ``J`` output values.

    Score ``s_i = sum_j w_j (1/M) sum_m (G_m(u_i)(y_j) - Gbar(u_i)(y_j))^2`` (population
    variance over the committee); ties go to the lower pool index.
    """

    def __init__(self, n_models: int = 4, *, weights: Any = None) -> None:
        self.n_models = check_positive_int(n_models, "n_models")
        if self.n_models < 2:
            raise ValueError(f"n_models (committee size) must be at least 2, got {n_models}")
        self.weights = None if weights is None else as_tensor(weights, "weights",
                                                              dtype=torch.float64).reshape(-1)

    def options(self) -> dict[str, Any]:
        return {"n_models": self.n_models,
                "weights": None if self.weights is None else "given"}

    def scores(self, pool_x: Any, models: Sequence[Any]) -> torch.Tensor:
        """Committee variance ``s`` (P,) float64 of every pool row (formula above)."""
        x = _pool_tensor(pool_x)
        models = list(models)
        if len(models) < 2:
            raise ValueError(f"QbC needs a committee of at least 2 models, got {len(models)}")
        total = torch.zeros(x.shape[0], dtype=torch.float64)
        for i in range(0, x.shape[0], _CHUNK):
            chunk = x[i:i + _CHUNK]
            preds = torch.stack([_apply(m, m, chunk) for m in models])       # (M, c, J)
            var = preds.var(dim=0, unbiased=False)                            # (c, J)
            if self.weights is None:
                total[i:i + chunk.shape[0]] = var.mean(1)
            else:
                if self.weights.numel() != var.shape[1]:
                    raise ValueError(f"weights must hold one value per output value "
                                     f"({var.shape[1]}), got {self.weights.numel()}")
                total[i:i + chunk.shape[0]] = var @ self.weights
        return total

    def _select(self, pool_x, labelled, models, batch_size, generator):
        s = self.scores(pool_x, models)
        s[labelled] = -math.inf
        # stable sort on -s: equal scores keep ascending pool order
        order = torch.sort(-s, stable=True).indices
        return order[:batch_size]


@register_query_strategy("coreset")
class CoreSet(QueryStrategy):
    """Greedy k-center on (sketched, normalised) last-layer features (paper F.39-F.40).

    Parameters
    ----------
    features : "branch" | "auto" | "input" | callable
        ``"branch"`` (default): ``model.features(u)`` (B, p), the DeepONet branch output;
        ``"auto"``: ``model.features(u)`` where the model has it, else the model's flattened
        outputs ``model(u)`` (B, P) (e.g. an FNO, which has no last-layer feature vector);
        ``"input"``: the flattened inputs themselves (no model needed); a callable
        ``features(model, u) -> (B, p)`` for other model classes.
    sketch_dim : int or None
        ``k`` of the Gaussian sketch (default 32); ``None`` or ``p <= k``: no sketch.
    normalize : bool
        Divide each (sketched) feature row by its Euclidean norm (default True; zero rows
        stay zero).
    init : "labelled" | "random"
        ``"labelled"`` (default): distances are taken to the labelled rows (a random first
        pick only when nothing is labelled); ``"random"``: the batch starts from one random
        pool row and ignores the labelled ones for distances (the paper's text).

    Ties in the max-min distance go to the lower pool index.
    """

    n_models = 1

    def __init__(self, *, features: Any = "branch", sketch_dim: int | None = 32,
                 normalize: bool = True, init: str = "labelled") -> None:
        if not (callable(features) or features in ("branch", "auto", "input")):
            raise ValueError(f"features must be 'branch', 'auto', 'input' or a callable "
                             f"(model, u) -> (B, p), got {features!r}")
        self.features = features
        self.sketch_dim = None if sketch_dim is None else check_positive_int(sketch_dim,
                                                                             "sketch_dim")
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be True or False, got {normalize!r}")
        self.normalize = normalize
        if init not in ("labelled", "random"):
            raise ValueError(f"init must be 'labelled' or 'random', got {init!r}")
        self.init = init
        if features == "input":
            self.n_models = 0

    def options(self) -> dict[str, Any]:
        feats = self.features if isinstance(self.features, str) else "callable"
        return {"features": feats, "sketch_dim": self.sketch_dim, "normalize": self.normalize,
                "init": self.init}

    def embed(self, pool_x: Any, model: Any = None, *, generator: Any = None) -> torch.Tensor:
        """Feature rows ``z`` (P, k) float64: features, Gaussian sketch, normalisation."""
        x = _pool_tensor(pool_x)
        if self.features == "input":
            phi = x.reshape(x.shape[0], -1).to(torch.float64)
        elif self.features == "branch":
            if not callable(getattr(model, "features", None)):
                raise TypeError(f"CoreSet(features='branch') needs a model with a "
                                f".features(u) method (a DeepONet), got "
                                f"{type(model).__name__}; pass features=callable or 'input'")
            phi = _apply(model.features, model, x)
        elif self.features == "auto":
            fn = getattr(model, "features", None)
            phi = _apply(fn if callable(fn) else (lambda u: model(u).reshape(u.shape[0], -1)),
                         model, x)
        else:
            phi = _apply(lambda u: self.features(model, u), model, x)
        k = self.sketch_dim
        if k is not None and phi.shape[1] > k:
            g = torch_generator(generator)
            r = torch.randn(phi.shape[1], k, generator=g, dtype=torch.float64) / math.sqrt(k)
            phi = phi @ r
        if self.normalize:
            phi = phi / phi.norm(dim=1, keepdim=True).clamp_min(torch.finfo(phi.dtype).tiny)
        return phi

    def _select(self, pool_x, labelled, models, batch_size, generator):
        z = self.embed(pool_x, models[0] if models else None, generator=generator)
        n = z.shape[0]
        taken = torch.zeros(n, dtype=torch.bool)
        taken[labelled] = True
        picked: list[int] = []
        centres = labelled if self.init == "labelled" else labelled[:0]
        if centres.numel():
            mind = torch.cdist(z, z[centres]).min(1).values
        else:
            free = torch.nonzero(~taken)[:, 0]
            first = int(free[torch.randint(free.numel(), (1,), generator=generator)])
            picked.append(first)
            taken[first] = True
            mind = (z - z[first]).norm(dim=1)
        while len(picked) < batch_size:
            d = mind.masked_fill(taken, -math.inf)
            j = int(torch.argmax(d))          # first maximal index: ties to the lower index
            picked.append(j)
            taken[j] = True
            mind = torch.minimum(mind, (z - z[j]).norm(dim=1))
        return torch.tensor(picked, dtype=torch.long)


# ------------------------------------------------------------------------------ driver
def default_train_fn(config: Any = None) -> Callable[[Any, torch.Tensor, torch.Tensor, int], Any]:
    """``train_fn(model, x, y, seed)`` that fits with
    :func:`wheretolearn.models.operator_training.train_operator` under ``config``
    (a :class:`~wheretolearn.models.operator_training.TrainConfig`; default ``TrainConfig()``)."""
    from ..models.operator_training import TrainConfig, train_operator

    cfg = config if config is not None else TrainConfig()
    check_type(cfg, TrainConfig, "config")

    def train_fn(model, x, y, seed):
        return train_operator(model, x, y, config=cfg, seed=seed)

    return train_fn


@dataclass
class ActiveLearningRound:
    """One size ``n`` of the schedule.

    ``errors``: ``evaluate(model)`` of each of the round's models (the committee for QbC);
    ``error``: their mean (None without ``evaluate``); ``queried``: the rows chosen with
    these models for the next size (empty in the last round); seconds spent labelling the
    rows new at this size, training, evaluating and querying.
    """

    n: int
    error: float | None
    errors: list[float]
    queried: list[int]
    label_seconds: float
    train_seconds: float
    eval_seconds: float
    query_seconds: float


@dataclass
class ActiveLearningResult:
    """Outcome of :func:`run_active_learning`.

    ``selected``: pool rows in the order they were labelled (the first ``schedule[0]`` at
    random), so the training set at size ``n`` is ``selected[:n]``; ``rounds``: one
    :class:`ActiveLearningRound` per size; ``models``: ``{n: [models]}`` when
    ``keep_models`` (not serialised).
    """

    strategy: str
    strategy_options: dict
    seed: int
    schedule: list[int]
    selected: list[int]
    rounds: list[ActiveLearningRound]
    models: dict[int, list[Any]] = field(default_factory=dict, repr=False)

    def errors(self) -> dict[int, float | None]:
        """``{n: error}`` per size."""
        return {r.n: r.error for r in self.rounds}

    def to_dict(self) -> dict:
        """JSON-serialisable summary (without models)."""
        return {"strategy": self.strategy, "strategy_options": self.strategy_options,
                "seed": self.seed, "schedule": list(self.schedule),
                "selected": list(self.selected), "rounds": [asdict(r) for r in self.rounds]}


def _check_schedule(schedule: Any, n_pool: int) -> list[int]:
    if isinstance(schedule, (str, bytes)) or not hasattr(schedule, "__iter__"):
        raise TypeError(f"schedule must be a list of training-set sizes, got {schedule!r}")
    sizes = list(schedule)
    if not sizes:
        raise ValueError("schedule must list at least one training-set size, got []")
    for i, s in enumerate(sizes):
        if isinstance(s, bool) or not isinstance(s, Integral):
            raise TypeError(f"schedule[{i}] must be an integer, got {s!r}")
    sizes = [int(s) for s in sizes]
    if sizes[0] < 2:
        raise ValueError(f"schedule[0] (the random start) must be at least 2 samples, "
                         f"got {sizes[0]}")
    bad = [i for i in range(1, len(sizes)) if sizes[i] <= sizes[i - 1]]
    if bad:
        i = bad[0]
        raise ValueError(f"schedule must be strictly increasing, got schedule[{i - 1}] = "
                         f"{sizes[i - 1]} then schedule[{i}] = {sizes[i]}")
    if sizes[-1] > n_pool:
        raise ValueError(f"schedule must not exceed the pool size {n_pool}, got "
                         f"{sizes[-1]} as its largest size")
    return sizes


def _seed(*parts: int) -> int:
    """A 31-bit seed derived from ``parts`` (independent streams per round and member)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] & 0x7FFFFFFF)


@dataclass(frozen=True)
class RoundHooks:
    """What :func:`run_active_learning` calls in every round besides the query strategy.

    Attributes
    ----------
    train_fn : callable, optional
        ``train_fn(model, x, y, seed)`` fits ``model`` in place; default
        :func:`default_train_fn` (``train_operator`` with ``TrainConfig()``).
    evaluate : callable, optional
        ``evaluate(model) -> float`` (e.g. the relative OOD error on a held-out set); None:
        the rounds record no error.
    progress : callable, optional
        Called with each finished :class:`ActiveLearningRound`.
    """

    train_fn: Callable[[Any, torch.Tensor, torch.Tensor, int], Any] | None = None
    evaluate: Callable[[Any], float] | None = None
    progress: Callable[[ActiveLearningRound], None] | None = None

    def __post_init__(self) -> None:
        for name in ("train_fn", "evaluate", "progress"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable or None, got "
                                f"{type(value).__name__}")


def run_active_learning(pool_x: Any, label_fn: Any, model_factory: Callable[[int], Any], *,
                        strategy: QueryStrategy | str, schedule: Sequence[int],
                        hooks: RoundHooks | None = None, seed: int = 0,
                        keep_models: bool = False) -> ActiveLearningResult:
    """Pool-based active learning from a random start to each size of ``schedule``.

    Paper SM F.6: 10 random pool rows, then, for each size ``N_r`` of the schedule, train
    the strategy's models from scratch on the ``N_r`` labelled rows, evaluate them, and
    query ``N_{r+1} - N_r`` new rows with them (one batch per gap; paper: 10, 50, 100, ...,
    1000, i.e. batches of 40 then 50).

    Parameters
    ----------
    pool_x : (P, *in) array-like
        Candidate inputs (never modified).
    label_fn : callable or (P, *out) array-like
        Labels: ``label_fn(x (b, *in)) -> (b, *out)`` called once per round on the new rows
        only (e.g. a :class:`~wheretolearn.problems.Problem`), or the pool's precomputed
        labels (looked up).
    model_factory : callable
        ``model_factory(seed) -> fresh model``; called ``max(1, strategy.n_models)`` times
        per round with distinct seeds (retraining from scratch).
    strategy : QueryStrategy or str
        A strategy or a registry name (default options).
    schedule : sequence of int
        Strictly increasing training-set sizes; ``schedule[0] >= 2`` random rows to start,
        ``schedule[-1] <= P`` (paper: ``[10, 50, 100, ..., 1000]`` on a pool of 1843).
    hooks : RoundHooks, optional
        How each round trains and evaluates its models and whom it reports to (default
        ``RoundHooks()``: :func:`default_train_fn`, no evaluation, no progress).
    seed : int
        Seeds the random start, the model seeds and the strategy's randomness.
    keep_models : bool
        Keep every round's models in the result (memory: one set per size).

    Returns
    -------
    ActiveLearningResult
    """
    hooks = RoundHooks() if hooks is None else hooks
    check_type(hooks, RoundHooks, "hooks")
    evaluate, progress = hooks.evaluate, hooks.progress
    x = _pool_tensor(pool_x)
    n_pool = x.shape[0]
    sizes = _check_schedule(schedule, n_pool)
    if isinstance(strategy, str):
        strategy = make_query_strategy(strategy)
    if not isinstance(strategy, QueryStrategy):
        raise TypeError(f"strategy must be a QueryStrategy or one of "
                        f"{available_query_strategies()}, got {type(strategy).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not callable(model_factory):
        raise TypeError(f"model_factory must be callable (seed -> model), got "
                        f"{type(model_factory).__name__}")
    if callable(label_fn):
        pool_y = None
    else:
        pool_y = as_tensor(label_fn, "label_fn")
        if pool_y.ndim < 1 or pool_y.shape[0] != n_pool:
            raise ValueError(f"label_fn given as labels must have one row per pool row "
                             f"({n_pool}), got shape {tuple(pool_y.shape)}")
    train = default_train_fn() if hooks.train_fn is None else hooks.train_fn

    g = torch_generator(_seed(seed, 0))
    selected = torch.randperm(n_pool, generator=g)[:sizes[0]].tolist()
    ys: list[torch.Tensor] = []
    n_labelled = 0
    rounds: list[ActiveLearningRound] = []
    models_by_n: dict[int, list[Any]] = {}
    for r, n in enumerate(sizes):
        t0 = time.perf_counter()
        new = selected[n_labelled:]
        n_labelled = len(selected)
        new_idx = torch.tensor(new, dtype=torch.long)
        if pool_y is not None:
            y_new = pool_y[new_idx]
        else:
            y_new = as_tensor(label_fn(x[new_idx].clone()), "label_fn(x)")
            if y_new.shape[0] != len(new):
                raise ValueError(f"label_fn returned {y_new.shape[0]} rows for {len(new)} inputs")
        ys.append(y_new.detach().clone())
        t1 = time.perf_counter()
        idx = torch.tensor(selected, dtype=torch.long)
        x_tr, y_tr = x[idx], torch.cat(ys)
        models = []
        for m in range(max(1, strategy.n_models)):
            s = _seed(seed, r + 1, m)
            model = model_factory(s)
            train(model, x_tr, y_tr, s)
            models.append(model)
        t2 = time.perf_counter()
        errors = [float(evaluate(model)) for model in models] if evaluate is not None else []
        t3 = time.perf_counter()
        queried: list[int] = []
        if r + 1 < len(sizes):
            queried = strategy.query(x, idx, models, batch_size=sizes[r + 1] - n,
                                     generator=_seed(seed, r + 1, 10_000)).tolist()
            selected += queried
        t4 = time.perf_counter()
        rec = ActiveLearningRound(n=n, error=float(np.mean(errors)) if errors else None,
                                  errors=errors, queried=queried, label_seconds=t1 - t0,
                                  train_seconds=t2 - t1, eval_seconds=t3 - t2,
                                  query_seconds=t4 - t3)
        rounds.append(rec)
        if keep_models:
            models_by_n[n] = models
        if progress is not None:
            progress(rec)
    return ActiveLearningResult(strategy=strategy.name, strategy_options=strategy.options(),
                                seed=int(seed), schedule=sizes, selected=selected,
                                rounds=rounds, models=models_by_n)
