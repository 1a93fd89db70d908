"""Training-data sources the bilevel result is compared with (paper SM F.1, SPEC §3).

Every source answers one question: "give me ``n`` training inputs", through
:meth:`TrainingSource.draw`. Labels always come from the ground truth ``G*`` afterwards,
so a source never needs the problem.

* ``optimized``  -- the final Gaussian of bilevel descent.
* ``normal``     -- the initial Gaussian ``N(m0 1, s0^2 I)`` (independent of Q).
* ``barycenter`` -- W2 barycenter of the meta-test Gaussians (a Gaussian).
* ``mixture``    -- equal-weight mixture of the meta-test Gaussians.
* ``uniform``    -- Uniform[0, 1]^d (independent of Q).
* ``ncoreset``   -- non-adaptive greedy coreset of the pool of seen meta-test samples.
* ``acoreset``   -- adaptive greedy coreset of the same pool (approximate by default, below).

Reading of the paper (SM F.1, items 2-6), documented because the formulas are not in the
seed text:

* Barycenter and mixture use Gaussians fitted to the *seen* samples of each Q_j
  (empirical mean and covariance of its L points), the only information the bilevel
  algorithm is given; the paper's "we enforce the mixture components to be Gaussian".
* nCoreSet: feature map ``phi(v) = k(v, .)``; RKHS distance
  ``d_k(v, w)^2 = k(v,v) + k(w,w) - 2 k(v,w) = 2 - 2 k(v,w)``; start from one random pool
  point, then repeatedly add ``argmax_v min_{s in S} d_k(v, s)`` (max-min, paper F.40),
  one point at a time.
* aCoreSet: features ``phi(v) = (a_1 k(v, x_1), ..., a_n k(v, x_n))`` where ``x_i`` are
  the points selected so far and ``a`` the KRR coefficients fitted on them (labels of
  the pool are the seen meta-test labels); Euclidean distance between features; an
  initial random set of 6, then max-min additions in batches of 10 with the features
  (and ``a``) recomputed after every batch. **The default is an approximation of that
  method**, labelled so in every table (:data:`APPROXIMATE_SOURCES`); three deviations for
  cost, each an option: when ``n`` is large the batch grows so that there are at most
  ``max_rounds`` refits (100 by default: N = 1024 gives batches of 11, N = 4096 of 41;
  ``max_rounds=None`` keeps the paper's 10); features wider than ``sketch_dim`` (64) are
  compressed by a fixed Gaussian sketch (Johnson-Lindenstrauss, as the paper's CoreSet
  for Burgers does, SM F.6 eq. F.39) before distances are taken (``sketch_dim=None``:
  exact distances); the KRR fits use the ridge shift ``n eps`` of the final size
  throughout, so the Cholesky factor grows by block updates (with ``eps = 1e-7`` the
  shift differs from the paper's ``|S| eps`` by less than 1e-4).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import torch

from .._validation import (as_tensor, check_positive_float, check_positive_int, check_type,
                           torch_generator)

if TYPE_CHECKING:
    from ..measures import Gaussian
from ..measures.gaussian import empirical_gaussians  # re-exported: its former home

__all__ = [
    "BASELINE_NAMES",
    "SOURCE_NAMES",
    "APPROXIMATE_SOURCES",
    "acoreset_batch_size",
    "ACoresetOptions",
    "TrainingSource",
    "DistributionSource",
    "CoresetSource",
    "ncoreset",
    "acoreset",
    "empirical_gaussians",
    "make_sources",
]

#: Baselines of paper Table 1, in its column order.
BASELINE_NAMES = ("normal", "barycenter", "mixture", "uniform", "ncoreset", "acoreset")
#: Every source name :func:`make_sources` accepts.
SOURCE_NAMES = ("optimized",) + BASELINE_NAMES
#: Sources whose default differs from the paper's method, with the reason shown in tables.
APPROXIMATE_SOURCES = {
    "acoreset": "approximate aCoreSet: at most 100 refits (batches of 11 at N = 1024), "
                "features sketched to 64 columns, ridge shift of the final size",
}


@dataclass(frozen=True)
class ACoresetOptions:
    """How :func:`acoreset` grows its coreset (module docstring: the approximations).

    Attributes
    ----------
    batch_size : int
        Points added per refit (paper: 10).
    n_initial : int
        Size of the initial random set (paper: 6).
    max_rounds : int or None
        Cap on the number of refits; the batch grows to ``ceil((n - n_initial) /
        max_rounds)`` when needed. ``None``: no cap (the paper's setting).
    sketch_dim : int or None
        When the feature width ``|S|`` exceeds it, features are multiplied by one fixed
        Gaussian sketch ``R[:|S|]``, ``R`` of shape ``(n, sketch_dim) / sqrt(sketch_dim)``.
        ``None``: exact distances.
    """

    batch_size: int = 10
    n_initial: int = 6
    max_rounds: int | None = 100
    sketch_dim: int | None = 64

    def __post_init__(self):
        for name in ("batch_size", "n_initial", "max_rounds", "sketch_dim"):
            value = getattr(self, name)
            if value is not None or name in ("batch_size", "n_initial"):
                object.__setattr__(self, name,
                                   check_positive_int(value, f"ACoresetOptions.{name}"))


def acoreset_batch_size(n: int, *, batch_size: int = 10, n_initial: int = 6,
                        max_rounds: int | None = 100) -> int:
    """Points added per refit by :func:`acoreset` for a coreset of size ``n``:
    ``max(batch_size, ceil((n - n_initial) / max_rounds))``."""
    n0 = min(n_initial, n)
    if max_rounds is None:
        return batch_size
    return max(batch_size, math.ceil((n - n0) / max_rounds))


# ------------------------------------------------------------------------------ sources
class TrainingSource(ABC):
    """Something that provides ``n`` training inputs in R^d.

    Attributes
    ----------
    name : str
        Label used in tables and figures.
    """

    name: str = "source"

    @abstractmethod
    def draw(self, n: int, *, generator: int | torch.Generator | None = None,
             metatest: Any = None) -> torch.Tensor:
        """Return ``n`` training inputs, shape (n, d)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class DistributionSource(TrainingSource):
    """I.i.d. samples of a measure with ``.sample(n, generator=g)`` (Gaussian, Mixture, Uniform).

    Parameters
    ----------
    name : str
    measure : object with ``sample(n, *, generator) -> (n, d)``
    """

    def __init__(self, name: str, measure: Any):
        if not callable(getattr(measure, "sample", None)):
            raise TypeError(f"measure for source {name!r} must have a sample(n, generator=) "
                            f"method, got {type(measure).__name__}")
        self.name = str(name)
        self.measure = measure

    def draw(self, n, *, generator=None, metatest=None):
        n = check_positive_int(n, "n")
        return self.measure.sample(n, generator=torch_generator(generator)).detach()


class CoresetSource(TrainingSource):
    """Greedy coreset of the pool of seen meta-test samples (``ncoreset`` / ``acoreset``).

    Parameters
    ----------
    name : {"ncoreset", "acoreset"}
    pool : (P, d) tensor
        Candidate inputs (the seen meta-test samples, all Q_j stacked).
    bandwidth : float
        Gaussian kernel length scale ``s``.
    labels : (P,) tensor, optional
        ``G*`` at the pool points; required for ``acoreset``.
    ridge : float
        Ridge ``eps`` of the KRR fits inside ``acoreset`` (system ``K + n eps I``).
    options : ACoresetOptions
        Batching and sketching of :func:`acoreset`.
    """

    def __init__(self, name: str, pool, *, bandwidth: float, labels=None, ridge: float = 1e-7,
                 options: ACoresetOptions = ACoresetOptions()):
        if name not in ("ncoreset", "acoreset"):
            raise ValueError(f"coreset name must be 'ncoreset' or 'acoreset', got {name!r}")
        self.name = name
        self.pool = as_tensor(pool, "pool").detach()
        if self.pool.ndim != 2:
            raise ValueError(f"pool must have shape (P, d), got {tuple(self.pool.shape)}")
        self.bandwidth = check_positive_float(bandwidth, "bandwidth")
        self.ridge = check_positive_float(ridge, "ridge")
        if name == "acoreset" and labels is None:
            raise ValueError("acoreset needs labels of the pool points")
        self.labels = None if labels is None else as_tensor(labels, "labels").detach().reshape(-1)
        check_type(options, ACoresetOptions, "options")
        self.options = options

    def draw(self, n, *, generator=None, metatest=None):
        n = check_positive_int(n, "n")
        g = torch_generator(generator)
        if self.name == "ncoreset":
            idx = ncoreset(self.pool, n, bandwidth=self.bandwidth, generator=g)
        else:
            idx = acoreset(self.pool, self.labels, n, bandwidth=self.bandwidth,
                           ridge=self.ridge, generator=g, options=self.options)
        return self.pool[idx].clone()


# ------------------------------------------------------------------------------ coresets
def _sqdist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (n, m) between rows of x (n, d) and y (m, d), >= 0."""
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return d2.clamp_min_(0.0)


def _check_pool(pool, n: int) -> torch.Tensor:
    p = as_tensor(pool, "pool").detach()
    if p.ndim != 2 or p.shape[0] < 1:
        raise ValueError(f"pool must have shape (P, d) with P >= 1, got {tuple(p.shape)}")
    n = check_positive_int(n, "n")
    if n > p.shape[0]:
        raise ValueError(f"n must be at most the pool size {p.shape[0]}, got {n}")
    return p.double()


def ncoreset(pool, n: int, *, bandwidth: float,
             generator: int | torch.Generator | None = None) -> torch.Tensor:
    """Non-adaptive greedy coreset (max-min / farthest-point in RKHS distance).

    ``S_1 = {random index}``; ``S_{t+1} = S_t + argmax_v min_{s in S_t} d_k(v, s)`` with
    ``d_k(v, s)^2 = 2 - 2 exp(-||v - s||^2 / (2 s^2))`` (paper SM F.1 item 5, eq. F.40).
    A running minimum-distance vector makes each addition O(P d).

    Parameters
    ----------
    pool : (P, d) array-like
    n : int, 1 <= n <= P
    bandwidth : float
    generator : seed, torch.Generator or None (the random first point)

    Returns
    -------
    (n,) int64 tensor of distinct pool indices, in selection order.
    """
    x = _check_pool(pool, n)
    s = check_positive_float(bandwidth, "bandwidth")
    g = torch_generator(generator)
    first = int(torch.randint(x.shape[0], (1,), generator=g))
    # numpy for the sequential loop: thousands of tiny vector ops, where torch's intra-op
    # thread pool costs milliseconds per op on a loaded machine
    xn = x.numpy()
    idx = np.empty(n, dtype=np.int64)
    idx[0] = first
    mind = np.full(xn.shape[0], np.inf)
    for t in range(n):
        j = first if t == 0 else int(np.argmax(mind))
        idx[t] = j
        sq = ((xn - xn[j]) ** 2).sum(1)
        np.minimum(mind, 2.0 - 2.0 * np.exp(sq / (-2.0 * s * s)), out=mind)
        mind[j] = -1.0  # never pick a selected point again, even among duplicates
    return torch.from_numpy(idx)


def acoreset(pool, labels, n: int, *, bandwidth: float, ridge: float = 1e-7,
             generator: int | torch.Generator | None = None,
             options: ACoresetOptions = ACoresetOptions()) -> torch.Tensor:
    """Adaptive greedy coreset with KRR-coefficient-weighted kernel features.

    Start from ``n_initial`` random pool points. Each round: fit KRR on the selected set
    ``X_S`` (labels from ``labels``), build features ``Phi[v, i] = a_i k(v, x_i)`` for every
    pool point, then add ``batch_size`` points by max-min selection in Euclidean feature
    distance (paper SM F.1 item 6, eq. F.40).

    The fits solve ``(K_SS + n eps I) a = y_S`` with the shift of the *final* size ``n``
    (not ``|S| eps``): the shift then stays fixed, so the Cholesky factor grows by block
    updates (O(|S|^2 b) per round instead of O(|S|^3)), and kernel columns are computed
    once per selected point.

    Parameters
    ----------
    pool : (P, d) array-like
    labels : (P,) array-like, ``G*`` at the pool points
    n : int, 1 <= n <= P
    bandwidth, ridge : float
        Kernel length scale and ridge ``eps``.
    generator : seed, torch.Generator or None
    options : ACoresetOptions
        Batch size, initial set, cap on the refits and feature sketch (paper: batches of 10
        after 6 random points, no cap, exact distances: ``ACoresetOptions(max_rounds=None,
        sketch_dim=None)``).

    Returns
    -------
    (n,) int64 tensor of distinct pool indices.
    """
    x = _check_pool(pool, n)
    y = as_tensor(labels, "labels").detach().double().reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must have one value per pool point ({x.shape[0]}), got {y.shape[0]}")
    s = check_positive_float(bandwidth, "bandwidth")
    eps = check_positive_float(ridge, "ridge")
    check_type(options, ACoresetOptions, "options")
    n0 = min(options.n_initial, n)
    batch = acoreset_batch_size(n, batch_size=options.batch_size, n_initial=n0,
                                max_rounds=options.max_rounds)
    g = torch_generator(generator)
    sketch = None
    if options.sketch_dim is not None:
        r = options.sketch_dim
        sketch = torch.randn(n, r, generator=g, dtype=torch.float64) / math.sqrt(r)
    krr = _GrowingKRR(x, y, bandwidth=s, shift=n * eps, capacity=n)
    krr.add(torch.randperm(x.shape[0], generator=g)[:n0])
    while krr.size < n:
        a = krr.coefficients()
        cols = krr.columns()  # (P, S) = k(pool, X_S)
        if sketch is not None and krr.size > sketch.shape[1]:
            feats = cols @ (a[:, None] * sketch[:krr.size])
        else:
            feats = cols * a[None, :]
        take = min(batch, n - krr.size)
        krr.add(_maxmin_batch(feats, krr.selected(), take))
    return krr.selected().clone()


class _GrowingKRR:
    """KRR on a growing subset of a pool, ``(K_SS + shift I) a = y_S``, by block Cholesky.

    Kernel columns ``k(pool, x_i)`` and the Cholesky factor live in preallocated buffers
    of the final size; adding ``b`` points costs O(P b d + S^2 b).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, bandwidth: float, shift: float,
                 capacity: int):
        self.x, self.y, self.bandwidth, self.shift = x, y, bandwidth, shift
        self.cols = torch.empty(x.shape[0], capacity, dtype=torch.float64)
        self.chol = torch.zeros(capacity, capacity, dtype=torch.float64)
        self.idx = torch.empty(capacity, dtype=torch.long)
        self.size = 0

    def selected(self) -> torch.Tensor:
        return self.idx[:self.size]

    def columns(self) -> torch.Tensor:
        return self.cols[:, :self.size]

    def add(self, new: torch.Tensor) -> None:
        s, b = self.size, new.numel()
        sq = _sqdist(self.x, self.x[new])
        self.cols[:, s:s + b] = torch.exp(sq / (-2.0 * self.bandwidth ** 2))
        self.idx[s:s + b] = new
        k_bb = self.cols[new, s:s + b] + self.shift * torch.eye(b, dtype=torch.float64)
        if s:
            k_sb = self.cols[self.idx[:s], s:s + b]
            l21 = torch.linalg.solve_triangular(self.chol[:s, :s], k_sb, upper=False).T
            k_bb = k_bb - l21 @ l21.T
            self.chol[s:s + b, :s] = l21
        chol, info = torch.linalg.cholesky_ex(0.5 * (k_bb + k_bb.T))
        if int(info) != 0:
            raise ValueError(f"acoreset: Cholesky update failed with ridge shift {self.shift:g}; "
                             "use a larger ridge")
        self.chol[s:s + b, s:s + b] = chol
        self.size = s + b

    def coefficients(self) -> torch.Tensor:
        l = self.chol[:self.size, :self.size]
        return torch.cholesky_solve(self.y[self.selected()][:, None], l)[:, 0]


def _maxmin_batch(feats: torch.Tensor, selected: torch.Tensor, take: int) -> torch.Tensor:
    """Add ``take`` indices by max-min Euclidean distance to the selected rows of ``feats``."""
    mind = _sqdist(feats, feats[selected]).min(1).values.numpy()
    mind[selected.numpy()] = -1.0
    fn = feats.numpy()
    new = np.empty(take, dtype=np.int64)
    for t in range(take):
        j = int(np.argmax(mind))
        new[t] = j
        np.minimum(mind, ((fn - fn[j]) ** 2).sum(1), out=mind)
        mind[j] = -1.0
    return torch.from_numpy(new)


# ------------------------------------------------------------------------------ factory
def make_sources(names: Iterable[str], *, init, final=None, metatest, bandwidth: float,
                 ridge: float = 1e-7, coreset_options: ACoresetOptions = ACoresetOptions()
                 ) -> list[TrainingSource]:
    """Build the named training sources.

    Parameters
    ----------
    names : iterable of str
        Any of :data:`SOURCE_NAMES`: optimized, normal, barycenter, mixture, uniform,
        ncoreset, acoreset.
    init : Gaussian
        Initial training distribution (``normal``).
    final : Gaussian, optional
        Result of bilevel descent (``optimized``); required when that name is asked for.
    metatest : MetaTest
        Provides ``seen_x`` (J, L, d) and ``seen_y`` (J, L): the coreset pool and the
        samples the barycenter / mixture Gaussians are fitted to.
    bandwidth, ridge : float
        Kernel length scale and ridge ``eps`` (coresets only).
    coreset_options : ACoresetOptions
        Batching and sketching of :func:`acoreset`.

    Returns
    -------
    list of TrainingSource, in the order of ``names``.
    """
    names = list(names)
    unknown = [n for n in names if n not in SOURCE_NAMES]
    if unknown:
        raise ValueError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(SOURCE_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"baseline names must be distinct, got {names}")
    seen_x = metatest.seen_x.detach()
    d = seen_x.shape[-1]
    dtype = seen_x.dtype
    builders = {
        "optimized": lambda: DistributionSource("optimized", _require(final, "final")),
        "normal": lambda: DistributionSource("normal", init.detach()),
        "barycenter": lambda: DistributionSource("barycenter", seen_barycenter(seen_x, dtype)),
        "mixture": lambda: DistributionSource("mixture", _mixture_of(seen_x, dtype)),
        "uniform": lambda: DistributionSource("uniform", _unit_box(d, dtype)),
        "ncoreset": lambda: CoresetSource("ncoreset", seen_x.reshape(-1, d), bandwidth=bandwidth),
        "acoreset": lambda: CoresetSource("acoreset", seen_x.reshape(-1, d), bandwidth=bandwidth,
                                          labels=metatest.seen_y.detach().reshape(-1),
                                          ridge=ridge, options=coreset_options),
    }
    return [builders[n]() for n in names]


def _require(value, name):
    if value is None:
        raise ValueError(f"source 'optimized' needs the {name} Gaussian, got None")
    return value.detach()


def seen_barycenter(seen_x: torch.Tensor, dtype) -> "Gaussian":
    """W2 barycenter (computed in float64) of the Gaussians fitted to each ``seen_x[j]``."""
    from ..measures import barycenter

    return barycenter(empirical_gaussians(seen_x, dtype=torch.float64)).measure.to(dtype=dtype)


def _mixture_of(seen_x, dtype):
    from ..measures import Mixture

    return Mixture(empirical_gaussians(seen_x, dtype=dtype))


def _unit_box(d, dtype):
    from ..measures import Uniform

    return Uniform(torch.zeros(d, dtype=dtype), torch.ones(d, dtype=dtype))

