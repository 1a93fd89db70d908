"""Meta-test families for operator learning (paper SM F.3-F.4, SPEC §4): the role of
:mod:`wheretolearn.design.metatest` for PDE problems.

* NtD: ``K`` measures of boundary data ``sin(omega_j (s - 1/2)) + KLE(alpha = 1.5, tau_j,
  sigma = tau_j)`` with ``omega_j`` in [-4 pi, 4 pi] and ``tau_j`` in [0, 50].
* Darcy: ``K`` log-conductivity fields ``m_j + KLE(alpha_j, tau_j, sigma = tau_j^(alpha_j - 1))``
  with ``m_j`` in [0, 1], ``alpha_j`` in [2, 3], ``tau_j`` in [1, 4].

Each parameter is drawn with density proportional to ``1 - cos(value)`` on its interval
(paper eq. F.13), by inverse-transform sampling of the closed-form CDF
``x - sin x``. Every measure gets ``n_seen`` + ``n_unseen`` samples labelled once through
the batched solver (:class:`~wheretolearn.design.labelling.Labeller`, cached by content).
An *empirical* family (pools of labelled samples, one per ``Q_j``) is built by
:func:`empirical_operator_metatest`. A *pool* meta-test (Burgers, paper SM F.6) is one
labelled pool split into candidate rows for training (active learning, the fitted ``Q``) and
held-out rows that alone are scored: :func:`pool_operator_metatest`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .._validation import check_nonnegative_int, check_positive_int, resolve_dtype
from ..report.metrics import relative_ood_error_squared

__all__ = ["OperatorMetaTest", "PoolMetaTest", "MetaTestDraws", "one_minus_cos_samples",
           "ntd_family", "darcy_family", "field_family", "make_operator_metatest",
           "empirical_operator_metatest", "pool_operator_metatest"]


def one_minus_cos_samples(n: int, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws from the density ``(1 - cos x) / Z`` on ``[low, high]`` (paper eq. F.13).

    The CDF ``F(x) = (x - sin x) - (low - sin low)`` (normalised) is increasing; it is
    inverted by bisection to machine precision.
    """
    n = check_positive_int(n, "n")
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise ValueError(f"need finite low < high, got [{low}, {high}]")

    def cdf(x):
        return (x - np.sin(x)) - (low - math.sin(low))

    total = cdf(high)
    if total <= 0:
        raise ValueError(f"1 - cos vanishes on [{low}, {high}]")
    target = rng.uniform(size=n) * total
    lo, hi = np.full(n, float(low)), np.full(n, float(high))
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        below = cdf(mid) < target
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class OperatorMetaTest:
    """A fixed family ``Q_1..Q_K`` with labelled seen / unseen samples.

    Attributes
    ----------
    measures : list of Measure
        The ``Q_j`` (fields with closed-form W2, or :class:`~wheretolearn.measures.Empirical`
        of the seen samples for an empirical family).
    seen_x : (K, L, *in); seen_y : (K, L, *out); unseen_x : (K, U, *in); unseen_y : (K, U, *out)
    params : list of dict
        Parameters of each ``Q_j`` (for reports).
    output_weights : out-shaped tensor or None
        Quadrature weights of the output norm used by :meth:`error`.
    """

    measures: list
    seen_x: torch.Tensor
    seen_y: torch.Tensor
    unseen_x: torch.Tensor
    unseen_y: torch.Tensor
    params: list = field(default_factory=list)
    output_weights: torch.Tensor | None = None

    @property
    def n_measures(self) -> int:
        return int(self.seen_x.shape[0])

    def split(self, split: str = "unseen") -> tuple[torch.Tensor, torch.Tensor]:
        """``(x (K, M, *in), y (K, M, *out))`` of ``split`` in {"seen", "unseen"}."""
        if split == "seen":
            return self.seen_x, self.seen_y
        if split == "unseen":
            return self.unseen_x, self.unseen_y
        raise ValueError(f"split must be 'seen' or 'unseen', got {split!r}")

    def predictions(self, predict: Callable[[torch.Tensor], torch.Tensor], *,
                    split: str = "unseen", batch: int = 512) -> torch.Tensor:
        """``predict`` on every sample of ``split``, shape (K, M, *out) (no gradient)."""
        x, _ = self.split(split)
        k, m = x.shape[:2]
        flat = x.reshape(k * m, *x.shape[2:])
        with torch.no_grad():
            out = torch.cat([predict(flat[i:i + batch]).detach().cpu()
                             for i in range(0, k * m, batch)])
        return out.reshape(k, m, *out.shape[1:])

    def error_squared(self, predict: Callable[[torch.Tensor], torch.Tensor], *,
                      split: str = "unseen") -> float:
        """Squared relative OOD error (paper F.19) in the quadrature norm of the outputs."""
        _, y = self.split(split)
        pred = self.predictions(predict, split=split).double()
        truth = y.double()
        if self.output_weights is not None:
            root = self.output_weights.double().sqrt()
            pred, truth = pred * root, truth * root
        return relative_ood_error_squared(pred, truth)

    def error(self, predict: Callable[[torch.Tensor], torch.Tensor], *,
              split: str = "unseen") -> float:
        """Relative root OOD error (SPEC §1) in the quadrature norm of the outputs."""
        return math.sqrt(self.error_squared(predict, split=split))


@dataclass(frozen=True)
class PoolMetaTest(OperatorMetaTest):
    """A meta-test with one labelled candidate pool next to its held-out rows (paper SM F.6).

    ``pool_x (P, *in)``, ``pool_y (P, *out)``: the candidates that active learning may label
    and that the test measure ``Q`` is fitted to; the ``seen`` / ``unseen`` samples (one
    measure, ``K = 1``) are other rows of the same labelled draw, never in the pool, so a
    model trained on pool rows is never scored on them.
    """

    pool_x: torch.Tensor | None = None
    pool_y: torch.Tensor | None = None

    @property
    def n_pool(self) -> int:
        return 0 if self.pool_x is None else int(self.pool_x.shape[0])


def pool_operator_metatest(x: Any, y: Any, *, n_pool: int, n_seen: int, n_unseen: int,
                           measure: Any, params: dict | None = None,
                           output_weights: Any = None) -> PoolMetaTest:
    """Split one labelled draw into the candidate pool and held-out seen / unseen rows.

    Parameters
    ----------
    x : (n_pool + n_seen + n_unseen, *in); y : (same, *out)
        Labelled i.i.d. samples of the test distribution, in the order drawn.
    n_pool, n_seen, n_unseen : int
        Rows ``[0, n_pool)`` are the pool, the next ``n_seen`` the seen rows (guard
        selection, Lipschitz samples), the last ``n_unseen`` the unseen rows (the reported
        error; paper: 1843 pool rows, 205 held out).
    measure : Measure
        The test measure ``Q`` used by ``J`` (e.g. a Gaussian fitted to the pool).
    params : dict, optional
        Its description for reports.
    """
    n_pool = check_positive_int(n_pool, "n_pool")
    n_seen = check_positive_int(n_seen, "n_seen")
    n_unseen = check_positive_int(n_unseen, "n_unseen")
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    need = n_pool + n_seen + n_unseen
    if x.shape[0] != need or y.shape[0] != need:
        raise ValueError(f"x and y must hold n_pool + n_seen + n_unseen = {need} rows, got "
                         f"{x.shape[0]} and {y.shape[0]}")
    held = slice(n_pool, n_pool + n_seen), slice(n_pool + n_seen, need)
    w = None if output_weights is None else torch.as_tensor(output_weights)
    return PoolMetaTest([measure], x[None, held[0]].contiguous(), y[None, held[0]].contiguous(),
                        x[None, held[1]].contiguous(), y[None, held[1]].contiguous(),
                        params=[dict(params or {})], output_weights=w,
                        pool_x=x[:n_pool].contiguous(), pool_y=y[:n_pool].contiguous())


def ntd_family(n_boundary: int, *, n_measures: int = 20, seed: int = 0, n_modes: int | None = None,
               dtype: Any = None) -> tuple[list, list[dict]]:
    """The NtD meta-test measures (SPEC §4): ``omega ~ 1 - cos`` on [-4 pi, 4 pi],
    ``tau ~ 1 - cos`` on [0, 50], alpha = 1.5, sigma = tau. Returns ``(measures, params)``."""
    from ..measures import NtDInputMeasure

    k = check_positive_int(n_measures, "n_measures")
    rng = np.random.default_rng(check_nonnegative_int(seed, "seed"))
    omegas = one_minus_cos_samples(k, -4 * math.pi, 4 * math.pi, rng)
    taus = one_minus_cos_samples(k, 0.0, 50.0, rng)
    measures, params = [], []
    for om, ta in zip(omegas, taus):
        measures.append(NtDInputMeasure(float(om), tau=float(ta), alpha=1.5, sigma=float(ta),
                                        n_boundary=n_boundary, n_modes=n_modes, dtype=dtype))
        params.append({"omega": float(om), "tau": float(ta), "alpha": 1.5, "sigma": float(ta)})
    return measures, params


def field_family(basis: Any, *, n_measures: int = 20, seed: int = 0,
                 mean_range: tuple[float, float] = (0.0, 1.0), dtype: Any = None
                 ) -> tuple[list, list[dict]]:
    """Gaussian random fields ``m_j + KLE(alpha_j, tau_j, sigma_j)`` on a sine ``basis`` (1-D
    or 2-D): ``m ~ 1 - cos`` on ``mean_range``, ``alpha`` on [2, 3], ``tau`` on [1, 4],
    ``sigma = tau^(alpha - dim/2)``. The Darcy family (SPEC §4) is this family on a 2-D
    basis; AMA studies of user field problems use it on their grid. Returns
    ``(measures, params)``."""
    from ..measures import GaussianRandomField

    k = check_positive_int(n_measures, "n_measures")
    lo, hi = (float(v) for v in mean_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"mean_range must be two finite numbers low < high, got {mean_range!r}")
    rng = np.random.default_rng(check_nonnegative_int(seed, "seed"))
    ms = one_minus_cos_samples(k, lo, hi, rng)
    alphas = one_minus_cos_samples(k, 2.0, 3.0, rng)
    taus = one_minus_cos_samples(k, 1.0, 4.0, rng)
    measures, params = [], []
    for m, a, t in zip(ms, alphas, taus):
        sigma = float(t) ** (float(a) - basis.dim / 2)
        measures.append(GaussianRandomField(basis, alpha=float(a), tau=float(t), sigma=sigma,
                                            mean=float(m), dtype=dtype))
        params.append({"mean": float(m), "alpha": float(a), "tau": float(t), "sigma": sigma})
    return measures, params


def darcy_family(basis: Any, *, n_measures: int = 20, seed: int = 0,
                 dtype: Any = None) -> tuple[list, list[dict]]:
    """The Darcy meta-test log-conductivity fields (SPEC §4) on a 2-D sine ``basis``:
    ``m ~ 1 - cos`` on [0, 1], ``alpha`` on [2, 3], ``tau`` on [1, 4],
    ``sigma = tau^(alpha - 1)``. Returns ``(measures, params)``."""
    if basis.dim != 2:
        raise ValueError(f"the Darcy family needs a 2-D basis, got a {basis.dim}-D one")
    return field_family(basis, n_measures=n_measures, seed=seed, dtype=dtype)


@dataclass(frozen=True)
class MetaTestDraws:
    """How many labelled samples of each ``Q_j`` a meta-test holds, and their seed.

    Attributes
    ----------
    n_seen : int >= 1
        "Seen" samples per measure (guard selection, Lipschitz samples).
    n_unseen : int >= 1
        "Unseen" samples per measure (the reported OOD error).
    seed : int >= 0
        Seeds the draws (:func:`make_operator_metatest`: measure ``j`` with ``seed * 1000 +
        j``; :func:`empirical_operator_metatest`: the subsets of the pools).
    """

    n_seen: int
    n_unseen: int
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_seen", check_positive_int(self.n_seen, "n_seen"))
        object.__setattr__(self, "n_unseen", check_positive_int(self.n_unseen, "n_unseen"))
        object.__setattr__(self, "seed", check_nonnegative_int(self.seed, "seed"))


def _draws(draws: Any) -> MetaTestDraws:
    if not isinstance(draws, MetaTestDraws):
        raise TypeError(f"draws must be a MetaTestDraws(n_seen, n_unseen, seed), got "
                        f"{type(draws).__name__}")
    return draws


def make_operator_metatest(labeller: Any, measures: Sequence[Any], draws: MetaTestDraws, *,
                           params: list | None = None, output_weights: Any = None,
                           dtype: Any = torch.float32,
                           progress: Callable[[], None] | None = None) -> OperatorMetaTest:
    """Label ``n_seen + n_unseen`` samples of every measure once (``labeller.label``).

    Measure ``j`` is sampled with seed ``draws.seed * 1000 + j`` (so another family seed
    gives other samples); the first ``draws.n_seen`` samples are "seen", the rest "unseen".
    ``params`` describes each measure (for reports); ``progress()`` is called once per
    measure.
    """
    draws = _draws(draws)
    n_seen, n_unseen = draws.n_seen, draws.n_unseen
    dt = resolve_dtype(dtype)
    xs, ys = [], []
    for j, q in enumerate(measures):
        x, y = labeller.label(q, n_seen + n_unseen, draws.seed * 1000 + j)
        xs.append(x.to(dt))
        ys.append(y.to(dt))
        if progress is not None:
            progress()
    x, y = torch.stack(xs), torch.stack(ys)
    w = None if output_weights is None else torch.as_tensor(output_weights)
    return OperatorMetaTest(list(measures), x[:, :n_seen].contiguous(), y[:, :n_seen].contiguous(),
                            x[:, n_seen:].contiguous(), y[:, n_seen:].contiguous(),
                            params=list(params or [{} for _ in measures]), output_weights=w)


def empirical_operator_metatest(pools_x: Sequence[Any], pools_y: Sequence[Any],
                                draws: MetaTestDraws, *, input_weights: Any = None,
                                output_weights: Any = None,
                                dtype: Any = torch.float32) -> OperatorMetaTest:
    """A family given by pools of labelled samples (one pool per ``Q_j``).

    From pool ``j`` (``x (M_j, *in)``, ``y (M_j, *out)``, ``M_j >= n_seen + n_unseen``) a
    random subset (seeded by ``draws.seed``) is split into seen and unseen samples; ``Q_j``
    is the :class:`~wheretolearn.measures.Empirical` measure of its seen inputs (with
    ``input_weights`` as quadrature, so W2 to it is computed by POT in the same norm).
    """
    from ..measures import Empirical

    if len(pools_x) != len(pools_y) or not pools_x:
        raise ValueError(f"pools_x and pools_y must list the same non-zero number of pools, got "
                         f"{len(pools_x)} and {len(pools_y)}")
    draws = _draws(draws)
    n_seen, n_unseen = draws.n_seen, draws.n_unseen
    dt = resolve_dtype(dtype)
    g = torch.Generator().manual_seed(draws.seed)
    xs, ys, measures = [], [], []
    for j, (px, py) in enumerate(zip(pools_x, pools_y)):
        px, py = torch.as_tensor(px).to(dt), torch.as_tensor(py).to(dt)
        if px.shape[0] != py.shape[0] or px.shape[0] < n_seen + n_unseen:
            raise ValueError(f"pool {j} must hold n_seen + n_unseen = {n_seen + n_unseen} "
                             f"labelled samples, got {px.shape[0]} inputs and {py.shape[0]} outputs")
        idx = torch.randperm(px.shape[0], generator=g)[:n_seen + n_unseen]
        xs.append(px[idx])
        ys.append(py[idx])
        qw = None if input_weights is None else torch.as_tensor(input_weights).to(dt)
        measures.append(Empirical(px[idx[:n_seen]], quadrature_weights=qw))
    x, y = torch.stack(xs), torch.stack(ys)
    w = None if output_weights is None else torch.as_tensor(output_weights)
    return OperatorMetaTest(measures, x[:, :n_seen].contiguous(), y[:, :n_seen].contiguous(),
                            x[:, n_seen:].contiguous(), y[:, n_seen:].contiguous(),
                            params=[{"pool": j, "size": int(torch.as_tensor(p).shape[0])}
                                    for j, p in enumerate(pools_x)], output_weights=w)
