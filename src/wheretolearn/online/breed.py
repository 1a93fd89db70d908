"""Breed: adaptive importance sampling of the simulations of an online study (SPEC §5).

Breed ("MelissaDL x Breed", seed paper 002) chooses the parameters of the simulations not yet
submitted so that simulations whose samples the surrogate finds hard breed new ones nearby.

Seeds. The base sampler is built with the sampler's own ``seed`` (and ``boundary_share``), so
Breed at seed ``s`` draws exactly the plain base sampler's sequence at seed ``s`` for its
non-bred points -- all of generation 0 is that sequence, which pairs Breed and the base
sampler seed by seed in a comparison. Breed's own randomness (parent choice, children, queue
order) comes from a separate stream, ``SeedSequence(seed, spawn_key=(1,))``.

Fitness (SPEC §5, first bullet). Every training batch reports per-sample losses ``l_i`` with
their simulation id and time step (:meth:`BreedSampler.tell`; the engine tells the loss named
by ``[sampler] fitness_loss``: MSE by default, or the per-sample nRMSE, OGAS's choice). The
*loss deviation* ``delta_i = l_i - mean_batch(l)`` is comparable across network states. It is
stored per ``(sim_id, step)`` (a step served again overwrites its older value), and the
fitness of a simulation is the ``fitness_quantile``-quantile (default 0.9; ``"mean"``: the
mean, the paper) of its recorded deviations: a simulation that is hard at a few steps is a
parent even if it is easy at most of them. A simulation is a parent candidate once it has
``min_steps`` recorded steps and is among the ``window`` most recently drawn simulations.

Step baseline (``fitness_baseline="step"``, beyond the paper; default ``"batch"``). Losses
of one simulation differ far more between time steps (the first steps, with their sharp boundary
layers, are the hardest for every parameter) than between parameters, so a fitness computed
from the random steps a simulation happened to have trained mostly measures *which steps*
were drawn. With the step baseline each loss is first divided by a running mean of the losses
at its time step, ``r_i = l_i / m[step_i]`` (``m <- 0.9 m + 0.1 l`` per told loss,
initialised with the first one), and the deviation is ``r_i - mean_batch(r)``: parameters,
not steps, make the fitness. (``"batch"``, the default: the paper's raw deviations.) nRMSE
with the step baseline tracked the final per-simulation error best (Spearman 0.75, issue 23)
and gives the better per-simulation tail on heat; MSE with the batch baseline chases the
large errors of the first time steps and gives the better per-sample tail on heat and
Gray-Scott (10 paired seeds, docs/online.md), so it is the default.

Resampling. Once ``min_finished`` simulations have finished, every ``period`` told batches
(``trigger="period"``) -- or, with ``trigger="ess"``, as soon as the effective sample size of
the parent weights falls below ``ess_threshold`` of the candidates (at least ``min_period``
batches apart) -- the proposal is rebuilt (generation ``g = 1, 2, ...``):

* parents: the candidates with probabilities proportional to their normalised fitness
  ``p_k = (f_k - min f) / sum_j (f_j - min f)`` (uniform when all fitnesses are equal);
* a fraction ``R_g`` of the upcoming simulations is bred, the rest comes from the base
  sampler; ``R_g = r_start + (r_end - r_start) * min((g - 1) / r_break, 1)`` (linear ramp
  over ``r_break`` resamplings, then constant); generation 0 (before any resampling) is never
  bred. The defaults are the paper's 0.5 -> 0.7 over 3: ``R = 0.5, 0.57, 0.63, 0.7, ...``
  for ``g = 1, 2, ...`` (OGAS's 0 -> 0.7 breeds nothing at the first resampling and cost
  faces and corners on heat);
* no resampling once the last simulation of the budget was requested: with
  ``n_simulations`` set (the online study passes its ``[study] n_simulations``), a
  resampling is refused once ``n_simulations`` parameters were handed out by :meth:`ask`
  (relaunches reuse their parameters and do not ask; a redraw after repeated failures asks
  and counts, so with redraws the last resampling may come up to that many simulations
  early). Without it (``None``) generations would keep firing during the end-of-ensemble
  drain, where they can change nothing.

Children (``children="reflect"``, the default). A child of parent ``p`` is ``p + s z``,
``z ~ N(0, I)``, ``s = sigma`` in unit coordinates (``sigma * (high - low)`` in parameter
units), folded back into the box coordinate by coordinate (reflection at both bounds,
repeated: ``y = x mod 2``, ``y <- 2 - y`` if ``y > 1``). Every child is inside the box and
nothing is copied; a parent on a bound has children ``|N(0, s^2)|`` away from it. The
density of a reflected child is the folded normal, per coordinate::

    c_k(u) = prod_i sum_{n in Z} [phi_s(u_i - p_ki - 2n) + phi_s(u_i + p_ki - 2n)]

(terms with ``|n| > ceil((8 s + 1) / 2)`` are below ``phi(8)`` and dropped); it integrates
to 1 over the box. ``children="retry"`` (the paper): a child outside the box is drawn again
with ``s <- shrink * s`` (the paper's "decrease sigma by 3e-1", read as a factor 0.3), at
most ``max_tries`` draws, after which the parent itself is copied; its density is::

    c_k(u) = 1_box(u) * sum_{j < J} [prod_{i < j} (1 - m_{k,i})] * N(u; p_k, s_j^2)

where ``s_j = sigma * shrink^j`` and ``m_{k,i}`` is the Gaussian mass of the box at ``s_i``
(a product of normal CDF differences); a copied parent is a point mass.

Queue. The engine asks one simulation at a time right before it submits it, so Breed keeps a
queue of the next ``queue_size`` parameters drawn from the current proposal (exactly
``round(R_g * queue_size)`` of them bred, at random positions). A resampling discards and
redraws the queue; parameters already handed out by :meth:`ask` (submitted, relaunched or
resumed simulations) are never changed.

Importance weights (beyond the paper, AMIS with deterministic mixture weights; Cornuet et al.
2012). The target is the base design: in unit coordinates ``u = (theta - low) / (high -
low)`` the uniform density 1, or, with a boundary share ``b = 1 / round(1 /
boundary_share)`` (:mod:`.samplers`), ``(1 - b)`` uniform plus ``b`` on the boundary design.
Proposal ``t`` (bred fraction ``R_t``, parents ``p_k``) has, relative to the target, the
density ``q_t(u) = (1 - R_t) + R_t * sum_k p_k c_k(u) / (1 - b)`` at an interior point and
``q_t = 1 - R_t`` at a boundary point of the base design (children put no mass on the
faces). A copied parent (``children="retry"``) is an atom the target lacks: weight 0. Every
other drawn simulation ``n`` gets the deterministic-mixture weight::

    w_n = 1 / sum_t (N_t / N) q_t(u_n)

with ``N_t`` simulations drawn from proposal ``t`` out of ``N``: ``(1/N) sum_n w_n f(u_n)``
estimates the target's integral of ``f``. The densities of every draw under every proposal
are kept in a table, updated when a draw or a proposal is added.

Weighted training (``[sampler] weighted``): :meth:`BreedSampler.weights_for` gives the
weights of one training batch, normalised over that batch (mean 1: the learning rate is
unchanged whatever the mixture weights' scale) and capped at ``weight_cap`` times the batch
mean (default 10; the largest ``c`` with ``min(w, c) / mean(min(w, c)) <= weight_cap`` is
used, so the order is kept). The raw weights (:meth:`BreedSampler.importance_weights`, in
the ledger) had a batch mean drifting from 1.3 to 4.4, a largest weight of 35 and an ESS of
6 % of the draws -- a 3-4x effective learning rate with heavy-tailed gradients (issue 23).

State. :meth:`BreedSampler.state_dict` holds the generator state, the base sampler's state,
the fitness table, the draws (window), the proposals, generation and schedule counters and the
queue; :meth:`BreedSampler.load_state_dict` restores them, so a resumed study continues
exactly as the uninterrupted one from the same checkpoint (no replay: draws depend on
``tell``). A state written before issue 23 (without its options, boundary flags and step
means) is refused with an error: start such a study again.

Options. :class:`BreedOptions` groups them by concern -- :class:`BreedMutation` (children),
:class:`BreedSchedule` (bred fraction), :class:`BreedResampling` (when), :class:`BreedParents`
(candidates and fitness) -- and maps one to one onto the flat ``[sampler]`` keys of the
online TOML (:meth:`BreedOptions.from_flat`, :meth:`BreedOptions.flat`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Mapping

import numpy as np
from scipy.special import ndtr

from .._validation import (check_nonnegative_int, check_positive_float, check_positive_int,
                           check_probability, check_type, set_frozen)
from .samplers import STATIC_SAMPLERS, ParameterSampler

__all__ = ["BreedSampler", "BreedOptions", "BreedMutation", "BreedSchedule", "BreedResampling",
           "BreedParents", "r_schedule", "child_density", "normalised_fitness",
           "effective_sample_size", "cap_weights"]

_LOG_2PI = float(np.log(2.0 * np.pi))
#: ``spawn_key`` of Breed's own stream (the boundary design of :mod:`.samplers` uses 2).
_BREED_STREAM = 1
#: Rows of ``u`` per block in :func:`child_density` (bounds the (rows, K, d) temporaries).
_ROWS = 4096
BASES = ("uniform", "halton", "sobol", "lhs")
CHILDREN = ("reflect", "retry")
TRIGGERS = ("period", "ess")
BASELINES = ("batch", "step")




def r_schedule(generation: int, r_start: float, r_end: float, r_break: int) -> float:
    """Bred fraction ``R`` of generation ``generation`` (0 = before any resampling -> 0).

    ``R_g = r_start + (r_end - r_start) * min((g - 1) / r_break, 1)`` for ``g >= 1``
    (``r_break = 0``: ``r_end`` at once).
    """
    if generation <= 0:
        return 0.0
    if r_break <= 0:
        return float(r_end)
    return float(r_start + (r_end - r_start) * min((generation - 1) / r_break, 1.0))


def normalised_fitness(fitness: Any, power: float = 1.0) -> np.ndarray:
    """Parent probabilities ``(f - min f)^p / sum (f - min f)^p``, shape ``(K,)``, with the
    selection power ``p`` (1: the paper; larger: sharper); uniform when all ``K`` fitnesses
    are equal."""
    f = np.asarray(fitness, dtype=np.float64).reshape(-1)
    if f.size == 0:
        raise ValueError("fitness must hold at least one value, got an empty array")
    g = f - f.min()
    if power != 1.0:
        g = (g / g.max()) ** power if g.max() > 0 else g
    total = g.sum()
    if not total > 0:
        return np.full(f.size, 1.0 / f.size)
    return g / total


def effective_sample_size(weights: Any) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` of non-negative weights (N,)."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    s2 = float((w * w).sum())
    return float(w.sum()) ** 2 / s2 if s2 > 0 else 0.0


def _check_weight_cap(weight_cap: Any) -> float:
    """``weight_cap`` as a float, or ``ValueError`` unless it is a finite number >= 1."""
    if isinstance(weight_cap, bool) or not isinstance(weight_cap, (int, float)) or not (
            math.isfinite(weight_cap) and weight_cap >= 1.0):
        raise ValueError(f"weight_cap must be a finite number >= 1 (the largest weight over "
                         f"the batch mean), got {weight_cap!r}")
    return float(weight_cap)


def cap_weights(weights: Any, weight_cap: float) -> np.ndarray:
    """Non-negative weights (B,) -> mean 1 over the B of them with the largest at most
    ``weight_cap`` (>= 1) times the mean.

    Returns ``min(w, c) / mean(min(w, c))`` with the largest clip level ``c`` that keeps the
    maximum within ``weight_cap`` (no clipping when the normalised weights already are), so
    the order of the weights is kept. When fewer than ``B / weight_cap`` weights are positive
    no such ``c`` exists: the positive ones get ``weight_cap`` (the cap wins, the mean is
    below 1). All zero: ones (nothing to re-weight).
    """
    cap = _check_weight_cap(weight_cap)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    b, total = len(w), float(w.sum()) if len(w) else 0.0
    if b == 0:
        return w.copy()
    if not total > 0:
        return np.ones(b)
    ws = np.sort(w)[::-1]
    if b * ws[0] <= cap * total:
        return w * (b / total)
    tail = np.cumsum(ws[::-1])[::-1]                          # tail[k] = sum of ws[k:]
    tol = 1e-12
    for k in range(1, b):                                     # clip the k largest
        denom = b - cap * k
        if denom <= 0 or not tail[k] > 0:
            break
        c = cap * tail[k] / denom
        if ws[k] * (1 - tol) <= c <= ws[k - 1] * (1 + tol):
            clipped = np.minimum(w, c)
            return clipped * (b / clipped.sum())
    return np.where(w > 0, cap, 0.0)


def _box_mass(centres: np.ndarray, s: float) -> np.ndarray:
    """Mass of ``N(c, s^2 I)`` on the unit box, for centres (K, d) -> (K,)."""
    return np.prod(ndtr((1.0 - centres) / s) - ndtr(-centres / s), axis=1)


def _fold(x: np.ndarray) -> np.ndarray:
    """Reflect coordinates into [0, 1] at both bounds, repeatedly (period 2)."""
    y = np.mod(x, 2.0)
    return np.where(y > 1.0, 2.0 - y, y)


def child_density(u: Any, parents: Any, probs: Any, *, sigma: float,
                  children: str = "reflect", shrink: float = 0.3,
                  max_tries: int = 10) -> np.ndarray:
    """Density of a bred child on the unit box (module docstring), ``u (N, d) -> (N,)``.

    ``sum_k probs_k c_k(u)`` with ``c_k`` the child density of parent ``k`` (``parents
    (K, d)`` in unit coordinates, ``probs (K,)``, relative ``sigma``): the folded normal for
    ``children="reflect"`` (integrates to 1 over the box), or the truncated-retry density
    for ``children="retry"`` (factor ``shrink`` per retry, ``max_tries`` draws; the point
    mass of copied parents is not included). Zero outside the box.
    """
    _check_choice(children, "children", CHILDREN)
    u = np.asarray(u, dtype=np.float64)
    par = np.asarray(parents, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    n, d = u.shape
    out = np.zeros(n)
    if n == 0 or par.shape[0] == 0:
        return out
    inside = np.all((u >= 0.0) & (u <= 1.0), axis=1)
    s = float(sigma)
    for lo in range(0, n, _ROWS):
        blk = u[lo:lo + _ROWS]
        if children == "reflect":
            out[lo:lo + _ROWS] = _folded_density(blk, par, s) @ p
            continue
        sq = ((blk[:, None, :] - par[None, :, :]) ** 2).sum(axis=2)   # (rows, K)
        survive = np.ones(par.shape[0])                               # prod_{i<j} (1 - m_i)
        sj = s
        for _ in range(max_tries):
            logn = -0.5 * sq / sj**2 - d * (np.log(sj) + 0.5 * _LOG_2PI)
            out[lo:lo + _ROWS] += (np.exp(logn) * (p * survive)[None, :]).sum(axis=1)
            survive = survive * (1.0 - _box_mass(par, sj))
            if not survive.max() > 1e-15:
                break
            sj *= shrink
    return out * inside


def _folded_density(u: np.ndarray, par: np.ndarray, s: float) -> np.ndarray:
    """Reflected-normal density of the children of each parent, ``(N, d), (K, d) -> (N, K)``:
    a product over coordinates of sums over the images ``+-u + 2n``."""
    diff = u[:, None, :] - par[None, :, :]
    summ = u[:, None, :] + par[None, :, :]
    acc = np.zeros(diff.shape)
    n_max = math.ceil((8.0 * s + 1.0) / 2.0)
    for m in range(-n_max, n_max + 1):
        acc += np.exp(-0.5 * ((diff - 2 * m) / s) ** 2) + np.exp(-0.5 * ((summ - 2 * m) / s) ** 2)
    acc /= s * math.sqrt(2.0 * math.pi)
    return acc.prod(axis=2)


def _check_unit(value: Any, name: str, *, closed: bool) -> float:
    v = check_positive_float(value, name)
    if v > 1.0 or (not closed and v == 1.0):
        raise ValueError(f"{name} must be in (0, 1{']' if closed else ')'}, got {value}")
    return v


def _check_quantile(value: Any) -> float | str:
    if value == "mean":
        return "mean"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"fitness_quantile must be a number in (0, 1] or 'mean', got "
                         f"{value!r}")
    return float(value)


def _check_choice(value: Any, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


@dataclass(frozen=True)
class BreedMutation:
    """How a child is drawn around its parent (module docstring, "Children").

    Parameters
    ----------
    sigma : float in (0, 1]
        Child standard deviation relative to the parameter range (OGAS: 0.1; the paper: 10
        on a range of 400 = 0.025).
    children : {"reflect", "retry"}
        Children folded back into the box at its bounds (default), or drawn again with a
        shrinking sigma and copied after ``max_tries`` draws (the paper).
    shrink : float in (0, 1)
        ``children="retry"`` only: factor applied to sigma when a child falls out of the box.
    max_tries : int >= 1
        ``children="retry"`` only: draws of one child before the parent is copied.
    """

    sigma: float = 0.1
    children: str = "reflect"
    shrink: float = 0.3
    max_tries: int = 10

    def __post_init__(self) -> None:
        set_frozen(self, sigma=_check_unit(self.sigma, "sigma", closed=True),
               children=_check_choice(self.children, "children", CHILDREN),
               shrink=_check_unit(self.shrink, "shrink", closed=False),
               max_tries=check_positive_int(self.max_tries, "max_tries"))


@dataclass(frozen=True)
class BreedSchedule:
    """Bred fraction of generation ``g >= 1``: ``R_g = r_start + (r_end - r_start) *
    min((g - 1) / r_break, 1)`` (:func:`r_schedule`); generation 0 is never bred.

    Parameters
    ----------
    r_start, r_end : float in [0, 1]
        Default the paper's 0.5 -> 0.7 (OGAS: 0 -> 0.7).
    r_break : int >= 0
        Resamplings over which ``R`` ramps from ``r_start`` to ``r_end`` (0: ``r_end`` at once).
    """

    r_start: float = 0.5
    r_end: float = 0.7
    r_break: int = 3

    def __post_init__(self) -> None:
        set_frozen(self, r_start=check_probability(self.r_start, "r_start"),
               r_end=check_probability(self.r_end, "r_end"),
               r_break=check_nonnegative_int(self.r_break, "r_break"))


@dataclass(frozen=True)
class BreedResampling:
    """When the proposal is rebuilt (module docstring, "Resampling").

    Parameters
    ----------
    trigger : {"period", "ess"}
        Resample every ``period`` told batches, or when the parent weights' ESS fraction is
        below ``ess_threshold`` (at least ``min_period`` batches after the previous one).
    period : int >= 1
        Told batches between resamplings with ``trigger="period"`` (the paper's P = 100).
    min_period : int >= 1, ess_threshold : float in (0, 1]
        ``trigger="ess"`` only.
    min_finished : int >= 0
        Finished simulations needed before the first resampling.
    """

    trigger: str = "period"
    period: int = 75
    min_period: int = 20
    ess_threshold: float = 0.5
    min_finished: int = 10

    def __post_init__(self) -> None:
        set_frozen(self, trigger=_check_choice(self.trigger, "trigger", TRIGGERS),
               period=check_positive_int(self.period, "period"),
               min_period=check_positive_int(self.min_period, "min_period"),
               ess_threshold=_check_unit(self.ess_threshold, "ess_threshold", closed=True),
               min_finished=check_nonnegative_int(self.min_finished, "min_finished"))


@dataclass(frozen=True)
class BreedParents:
    """Which simulations may be parents and how likely each is chosen (module docstring,
    "Fitness").

    Parameters
    ----------
    window : int >= 1
        Parent candidates come from the ``window`` most recently drawn simulations.
    min_steps : int >= 1
        Recorded steps a simulation needs to be a parent candidate.
    min_candidates : int >= 1
        A resampling waits until at least this many candidates exist (with one candidate
        every bred child of the generation would come from one parent).
    fitness_baseline : {"batch", "step"}
        Deviation from the batch mean of the raw losses (default, the paper) or of the losses
        divided by their time step's running mean.
    fitness_quantile : float in (0, 1] or "mean"
        A simulation's fitness is this quantile of its recorded deviations (default 0.9), or
        their mean (the paper).
    selection_power : float > 0
        Parent probabilities ``(f - min f)^p`` normalised (:func:`normalised_fitness`); 1 is
        the paper's fitness-proportional choice, larger values favour the worst simulations.
    """

    window: int = 25
    min_steps: int = 33
    min_candidates: int = 5
    fitness_baseline: str = "batch"
    fitness_quantile: float | str = 0.9
    selection_power: float = 1.0

    def __post_init__(self) -> None:
        set_frozen(self, window=check_positive_int(self.window, "window"),
               min_steps=check_positive_int(self.min_steps, "min_steps"),
               min_candidates=check_positive_int(self.min_candidates, "min_candidates"),
               fitness_baseline=_check_choice(self.fitness_baseline, "fitness_baseline",
                                              BASELINES),
               fitness_quantile=_check_quantile(self.fitness_quantile),
               selection_power=check_positive_float(self.selection_power, "selection_power"))


@dataclass(frozen=True)
class BreedOptions:
    """Every option of :class:`BreedSampler`, grouped by concern.

    ``BreedOptions(mutation=BreedMutation(sigma=0.05), schedule=BreedSchedule(r_end=0.9))``;
    :meth:`from_flat` builds the same from the flat ``[sampler]`` keys of the online TOML
    (``{"sigma": 0.05, "r_end": 0.9}``) and :meth:`flat` gives them back.

    Parameters
    ----------
    base : {"uniform", "halton", "sobol", "lhs"}
        Sampler of the non-bred share (and of all of generation 0).
    mutation : BreedMutation
    schedule : BreedSchedule
    resampling : BreedResampling
    parents : BreedParents
    queue_size : int >= 1
        Upcoming parameters drawn per proposal (module docstring, "Queue").
    weight_cap : float >= 1
        Largest training weight over its batch's mean (:meth:`BreedSampler.weights_for`).
    """

    base: str = "uniform"
    mutation: BreedMutation = BreedMutation()
    schedule: BreedSchedule = BreedSchedule()
    resampling: BreedResampling = BreedResampling()
    parents: BreedParents = BreedParents()
    queue_size: int = 10
    weight_cap: float = 10.0

    #: The flat keys (the online TOML's ``[sampler]`` Breed keys), in state order.
    KEYS: ClassVar[tuple[str, ...]] = (
        "base", "sigma", "children", "shrink", "max_tries", "period", "min_finished",
        "r_start", "r_end", "r_break", "window", "min_steps", "queue_size", "trigger",
        "ess_threshold", "min_period", "fitness_baseline", "fitness_quantile",
        "selection_power", "min_candidates", "weight_cap")

    def __post_init__(self) -> None:
        for group, cls in _GROUPS.items():
            check_type(getattr(self, group), cls, group)
        set_frozen(self, base=_check_choice(self.base, "base", BASES),
               queue_size=check_positive_int(self.queue_size, "queue_size"),
               weight_cap=_check_weight_cap(self.weight_cap))

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> "BreedOptions":
        """Options from flat keys (:attr:`KEYS`, e.g. ``{"sigma": 0.05}``); absent keys keep
        their defaults, an unknown key raises ``TypeError`` naming it."""
        unknown = sorted(set(values) - set(cls.KEYS))
        if unknown:
            raise TypeError(f"unknown Breed option(s) {unknown}; allowed: {list(cls.KEYS)}")
        top: dict[str, Any] = {}
        grouped: dict[str, dict[str, Any]] = {g: {} for g in _GROUPS}
        for key, value in values.items():
            (grouped[_GROUP_OF[key]] if key in _GROUP_OF else top)[key] = value
        return cls(**top, **{g: _GROUPS[g](**kw) for g, kw in grouped.items()})

    def flat(self) -> dict[str, Any]:
        """The options as flat keys, ``{key: value}`` in :attr:`KEYS` order (JSON-ready)."""
        values = {"base": self.base, "queue_size": self.queue_size,
                  "weight_cap": self.weight_cap}
        for group in _GROUPS:
            values.update(asdict(getattr(self, group)))
        return {key: values[key] for key in self.KEYS}


#: Option group name -> its class, and flat key -> its group.
_GROUPS: dict[str, type] = {"mutation": BreedMutation, "schedule": BreedSchedule,
                            "resampling": BreedResampling, "parents": BreedParents}
_GROUP_OF = {f.name: group for group, cls in _GROUPS.items() for f in fields(cls)}
#: State keys a Breed state needs beyond the options (written since issue 23).
_STATE_KEYS = ("boundary_share", "step_mean")


class BreedSampler(ParameterSampler):
    """Breed adaptive sampler with AMIS importance weights (module docstring, SPEC §5).

    Parameters
    ----------
    bounds : (d, 2) array
    options : BreedOptions
        Base sampler, mutation, bred-fraction schedule, resampling trigger, parent choice,
        queue size and weight cap (:class:`BreedOptions`; default: the issue 23 defaults).
    seed : int, numpy.random.Generator or None
        Seeds the base sampler (the same sequence as the plain base sampler at this seed)
        and, through ``SeedSequence(seed, spawn_key=(1,))``, Breed's own draws.
    n_simulations : int >= 1 or None
        The study's simulation budget: no resampling once that many were asked for (None:
        unknown, resample as long as batches are told).
    boundary_share : float
        Of the base sampler (:mod:`.samplers`), at most 2/3 so that some base points are
        interior (bred children are; the weights need the target's interior part).

    Attributes
    ----------
    options : BreedOptions
    n_simulations : int or None
    """

    name = "breed"
    adaptive = True

    def __init__(self, bounds: Any, options: BreedOptions = BreedOptions(), *,
                 seed: Any = None, n_simulations: int | None = None,
                 boundary_share: float = 0.0) -> None:
        super().__init__(bounds, seed=seed, boundary_share=boundary_share)
        if self.boundary_every == 1:
            raise ValueError(f"boundary_share = {boundary_share} puts every base point on the "
                             "boundary (round(1 / share) = 1); breed needs interior base "
                             "points: use boundary_share <= 2/3")
        if not isinstance(options, BreedOptions):
            raise TypeError(f"options must be a BreedOptions, got {type(options).__name__} "
                            "(BreedOptions.from_flat builds one from flat keys)")
        self.options = options
        self.n_simulations = (None if n_simulations is None
                              else check_positive_int(n_simulations, "n_simulations"))
        self._reset()

    # ------------------------------------------------------------------ set-up
    def _reset(self) -> None:
        self._rng = np.random.default_rng(np.random.SeedSequence(self.seed,
                                                                 spawn_key=(_BREED_STREAM,)))
        unit_box = np.tile([0.0, 1.0], (self.dim, 1))
        self._base = STATIC_SAMPLERS[self.options.base](unit_box, seed=self.seed,
                                                 boundary_share=self.boundary_share)
        self.generation = 0
        self.batches_told = 0
        self._since = 0
        self.last_ess_fraction = float("nan")
        # Draws: unit parameters (N, d), sim ids, proposal index, bred / copy / boundary flags.
        self._u = np.zeros((0, self.dim))
        self._sim = np.zeros(0, np.int64)
        self._prop = np.zeros(0, np.int64)
        self._bred = np.zeros(0, bool)
        self._copy = np.zeros(0, bool)
        self._bnd = np.zeros(0, bool)
        # Proposals: generation, R, parents (K, d), probs (K,), batch, candidates, ess.
        self._proposals: list[dict] = [self._proposal_record(0.0, np.zeros((0, self.dim)),
                                                              np.zeros(0), ess=float("nan"))]
        self._dens = np.ones((0, 1))            # q_t(u_n), (N, T)
        # Fitness: sim -> {step -> deviation}, and a cache of fitness values (sim -> f).
        self._fit: dict[int, dict[int, float]] = {}
        self._fit_cache: dict[int, float] = {}
        self._step_mean: dict[int, float] = {}
        self._queue_u = np.zeros((0, self.dim))
        self._queue_bred = np.zeros(0, bool)
        self._queue_copy = np.zeros(0, bool)
        self._queue_bnd = np.zeros(0, bool)
        self._finished: set[int] = set()

    def _proposal_record(self, r: float, parents: np.ndarray, probs: np.ndarray, *,
                         ess: float) -> dict:
        return {"generation": self.generation, "r": float(r), "parents": parents,
                "probs": probs, "batch": self.batches_told,
                "n_candidates": int(len(probs)), "ess_fraction": float(ess)}

    # ------------------------------------------------------------------ ask
    def _draw_unit(self, k: int) -> np.ndarray:  # only used through ask()
        return self._pop(k, None)

    def ask(self, k: int = 1, *, sim_ids: Any = None) -> np.ndarray:
        """Parameters ``(k, d)`` of the next ``k`` simulations, taken from the queue.

        ``sim_ids`` (k,) links later ``tell`` losses to these parameters (default: the draw
        counter, which equals the engine's ids when every simulation comes from here).
        """
        k = check_nonnegative_int(k, "k")
        ids = (np.arange(self.n_drawn, self.n_drawn + k, dtype=np.int64) if sim_ids is None
               else np.asarray(sim_ids, dtype=np.int64).reshape(-1))
        if ids.shape != (k,):
            raise ValueError(f"sim_ids must have shape ({k},) to match k, got {ids.shape}")
        unit = self._pop(k, ids)
        self.n_drawn += k
        return self._to_bounds(unit)

    def _pop(self, k: int, ids: np.ndarray | None) -> np.ndarray:
        while len(self._queue_u) < k:
            self._refill()
        unit, bred = self._queue_u[:k].copy(), self._queue_bred[:k].copy()
        copy, bnd = self._queue_copy[:k].copy(), self._queue_bnd[:k].copy()
        self._queue_u, self._queue_bred = self._queue_u[k:], self._queue_bred[k:]
        self._queue_copy, self._queue_bnd = self._queue_copy[k:], self._queue_bnd[k:]
        if ids is None:
            ids = np.arange(len(self._sim), len(self._sim) + k, dtype=np.int64)
        self._record_draws(unit, ids, bred, copy, bnd)
        return unit

    def _refill(self) -> None:
        """Append ``queue_size`` draws of the current proposal (``round(R q)`` bred)."""
        q = self.options.queue_size
        prop = self._proposals[-1]
        n_bred = int(round(prop["r"] * q)) if len(prop["probs"]) else 0
        n_base = q - n_bred
        on_boundary = self._base.boundary_mask(self._base.n_drawn, n_base)
        base = self._base.ask(n_base)
        children, copied = self._breed(prop["parents"], prop["probs"], n_bred)
        u = np.concatenate([base, children])
        bred = np.concatenate([np.zeros(n_base, bool), np.ones(n_bred, bool)])
        copy = np.concatenate([np.zeros(n_base, bool), copied])
        bnd = np.concatenate([on_boundary, np.zeros(n_bred, bool)])
        order = self._rng.permutation(q) if n_bred else np.arange(q)
        self._queue_u = np.concatenate([self._queue_u, u[order]])
        self._queue_bred = np.concatenate([self._queue_bred, bred[order]])
        self._queue_copy = np.concatenate([self._queue_copy, copy[order]])
        self._queue_bnd = np.concatenate([self._queue_bnd, bnd[order]])

    def _breed(self, parents: np.ndarray, probs: np.ndarray, n: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """``n`` children (n, d) in unit coordinates and which of them are copies of their
        parent (n,) bool (only with ``children="retry"``)."""
        m = self.options.mutation
        if n == 0:
            return np.zeros((0, self.dim)), np.zeros(0, bool)
        idx = self._rng.choice(len(probs), size=n, p=probs)
        centre = parents[idx]
        s = m.sigma
        if m.children == "reflect":
            child = _fold(centre + s * self._rng.standard_normal((n, self.dim)))
            return child, np.zeros(n, bool)
        child = centre.copy()
        todo = np.arange(n)
        for _ in range(m.max_tries):
            draw = centre[todo] + s * self._rng.standard_normal((len(todo), self.dim))
            ok = np.all((draw >= 0.0) & (draw < 1.0), axis=1)
            child[todo[ok]] = draw[ok]
            todo = todo[~ok]
            if len(todo) == 0:
                break
            s *= m.shrink
        copied = np.zeros(n, bool)
        copied[todo] = True  # rows still to do are copies of their parent
        return child, copied

    def _record_draws(self, unit: np.ndarray, ids: np.ndarray, bred: np.ndarray,
                      copy: np.ndarray, bnd: np.ndarray) -> None:
        t = len(self._proposals) - 1
        rows = np.stack([self._density(p, unit, bnd) for p in self._proposals], axis=1)
        self._u = np.concatenate([self._u, unit])
        self._sim = np.concatenate([self._sim, ids])
        self._prop = np.concatenate([self._prop, np.full(len(ids), t, np.int64)])
        self._bred = np.concatenate([self._bred, bred])
        self._copy = np.concatenate([self._copy, copy])
        self._bnd = np.concatenate([self._bnd, bnd])
        self._dens = np.concatenate([self._dens, rows])

    def _density(self, prop: dict, unit: np.ndarray, bnd: np.ndarray) -> np.ndarray:
        """``q_t(u)`` of proposal ``prop`` relative to the target, at unit points (N, d) that
        are (``bnd``) or not boundary points of the base design -> (N,)."""
        r = prop["r"]
        inside = np.all((unit >= 0.0) & (unit <= 1.0), axis=1).astype(np.float64)
        if r == 0.0 or len(prop["probs"]) == 0:
            return inside
        m = self.options.mutation
        c = child_density(unit, prop["parents"], prop["probs"], sigma=m.sigma,
                          children=m.children, shrink=m.shrink, max_tries=m.max_tries)
        interior = 1.0 - (1.0 / self.boundary_every if self.boundary_every else 0.0)
        return np.where(bnd, 1.0 - r, (1.0 - r) * inside + r * c / interior)

    # ------------------------------------------------------------------ tell
    def tell(self, sim_ids: Any, steps: Any, losses: Any) -> None:
        """Record the loss deviations of one batch and resample when it is due."""
        ids, st, ls = self._check_tell(sim_ids, steps, losses)
        if len(ls) == 0:
            return
        if self.options.parents.fitness_baseline == "step":
            ls = self._step_normalised(st, ls)
        dev = ls - ls.mean()
        for s, t, v in zip(ids.tolist(), st.tolist(), dev.tolist()):
            self._fit.setdefault(s, {})[t] = v
            self._fit_cache.pop(s, None)
        self.batches_told += 1
        self._since += 1
        if self._due():
            self.resample()

    def _step_normalised(self, steps: np.ndarray, losses: np.ndarray) -> np.ndarray:
        """``l_i / m[step_i]`` with the running mean ``m`` of each step's losses updated
        first (``m <- 0.9 m + 0.1 l``, in batch order)."""
        for t, v in zip(steps.tolist(), losses.tolist()):
            old = self._step_mean.get(t)
            self._step_mean[t] = v if old is None else 0.9 * old + 0.1 * v
        tiny = np.finfo(np.float64).tiny
        return losses / np.maximum([self._step_mean[t] for t in steps.tolist()], tiny)

    def simulation_finished(self, sim_id: int, *, completed: bool = True) -> None:
        """Count finished simulations (failed ones do not count)."""
        if completed:
            self._finished.add(int(sim_id))

    @property
    def n_finished(self) -> int:
        return len(self._finished)

    @property
    def budget_requested(self) -> bool:
        """Whether the last simulation of ``n_simulations`` was asked for (then no more
        resampling); False when the budget is unknown."""
        n = self.n_simulations
        return n is not None and self.n_drawn >= n

    def fitness(self, sim_ids: Any = None) -> np.ndarray:
        """Fitness of ``sim_ids`` (default: every draw): the ``fitness_quantile``-quantile
        (or the mean) of its recorded loss deviations; NaN for a simulation without any."""
        ids = self._sim if sim_ids is None else np.asarray(sim_ids, np.int64).reshape(-1)
        q = self.options.parents.fitness_quantile
        out = np.full(len(ids), np.nan)
        for i, s in enumerate(ids.tolist()):
            f = self._fit_cache.get(s)
            if f is None and self._fit.get(s):
                v = np.fromiter(self._fit[s].values(), np.float64, len(self._fit[s]))
                f = self._fit_cache[s] = float(v.mean() if q == "mean" else np.quantile(v, q))
            if f is not None:
                out[i] = f
        return out

    def candidates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Parent candidates: ``(sim_ids (K,), unit params (K, d), fitness (K,))`` -- the last
        ``window`` draws with at least ``min_steps`` recorded steps."""
        o = self.options.parents
        last = slice(max(0, len(self._sim) - o.window), len(self._sim))
        ids, u = self._sim[last], self._u[last]
        keep = np.array([len(self._fit.get(s, ())) >= o.min_steps for s in ids.tolist()],
                        dtype=bool)
        ids, u = ids[keep], u[keep]
        return ids, u, self.fitness(ids)

    def _due(self) -> bool:
        o = self.options.resampling
        if self.n_finished < o.min_finished or self.budget_requested:
            return False
        if o.trigger == "period":
            return self._since >= o.period
        if self._since < o.min_period:
            return False
        ids, _, fit = self.candidates()
        if len(ids) < 2:
            return False
        self.last_ess_fraction = effective_sample_size(
            normalised_fitness(fit, self.options.parents.selection_power)) / len(ids)
        return self.last_ess_fraction < o.ess_threshold

    def resample(self) -> bool:
        """Build the next generation's proposal from the current candidates and redraw the
        queue; returns False (nothing changes) when there are fewer than ``min_candidates``
        candidates (tried again at the next batch) or the last simulation of the budget was
        already requested (never again)."""
        if self.budget_requested:
            return False
        ids, u, fit = self.candidates()
        if len(ids) < self.options.parents.min_candidates:
            return False
        sch = self.options.schedule
        self.generation += 1
        probs = normalised_fitness(fit, self.options.parents.selection_power)
        ess = effective_sample_size(probs) / len(ids)
        r = r_schedule(self.generation, sch.r_start, sch.r_end, sch.r_break)
        prop = self._proposal_record(r, u.copy(), probs, ess=ess)
        self._proposals.append(prop)
        self._dens = np.concatenate([self._dens,
                                     self._density(prop, self._u, self._bnd)[:, None]], axis=1)
        self._since = 0
        self.last_ess_fraction = ess
        # Not yet submitted: redraw from the new proposal (handed-out draws stay as they are).
        self._queue_u = np.zeros((0, self.dim))
        self._queue_bred = np.zeros(0, bool)
        self._queue_copy = np.zeros(0, bool)
        self._queue_bnd = np.zeros(0, bool)
        return True

    # ------------------------------------------------------------------ weights
    def importance_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Deterministic-mixture weights of every drawn simulation w.r.t. the target (the
        base design).

        Returns ``(sim_ids (N,), w (N,))`` with ``w_n = 1 / sum_t (N_t / N) q_t(u_n)`` (0 for a
        copied parent); ``mean(w f(u))`` estimates the target's integral of ``f``.
        """
        n = len(self._sim)
        if n == 0:
            return self._sim.copy(), np.zeros(0)
        counts = np.bincount(self._prop, minlength=len(self._proposals)) / n
        mix = self._dens @ counts
        return self._sim.copy(), np.where(self._copy, 0.0, 1.0 / mix)

    def weights_for(self, sim_ids: Any) -> np.ndarray:
        """Training weights of the samples of one batch, from their simulations ``sim_ids``
        (B,): the importance weights (an id this sampler did not draw counts as the mean
        weight), normalised to mean 1 over the batch and capped at ``weight_cap`` times that
        mean (:func:`cap_weights`)."""
        ids, w = self.importance_weights()
        scale = float(w.mean()) if len(w) and w.mean() > 0 else 1.0
        lookup = dict(zip(ids.tolist(), (w / scale).tolist()))
        raw = np.array([lookup.get(s, 1.0) for s in
                        np.asarray(sim_ids, np.int64).reshape(-1).tolist()])
        return cap_weights(raw, self.options.weight_cap)

    # ------------------------------------------------------------------ diagnostics
    def metrics(self) -> dict:
        """Scalars for ``metrics.jsonl``: generation, bred fraction R, parent-weight ESS
        fraction and importance-weight ESS fraction."""
        _, w = self.importance_weights()
        return {"sampler_generation": self.generation,
                "sampler_r": self._proposals[-1]["r"],
                "sampler_fitness_ess": self._proposals[-1]["ess_fraction"],
                "sampler_weight_ess": (effective_sample_size(w) / len(w) if len(w)
                                       else float("nan")),
                "sampler_bred": int(self._bred.sum()),
                "sampler_copies": int(self._copy.sum())}

    def write_report(self, run_dir: Any, history: Any) -> None:
        """``sampler.json`` and ``figures/breed_*.png`` (:func:`.breed_report.write_breed_report`
        of :meth:`diagnostics`)."""
        from .breed_report import write_breed_report

        write_breed_report(self.diagnostics(), history, run_dir)

    def diagnostics(self) -> dict:
        """Per draw (sim id, params, generation, bred, boundary, fitness, weight) and per
        proposal (generation, batch, R, candidates, ESS), JSON-ready."""
        ids, w = self.importance_weights()
        fit = self.fitness(ids)
        return {"draws": {"sim_id": ids.tolist(),
                          "params": self._to_bounds(self._u).tolist(),
                          "generation": [self._proposals[t]["generation"]
                                         for t in self._prop.tolist()],
                          "bred": self._bred.tolist(), "copy": self._copy.tolist(),
                          "boundary": self._bnd.tolist(),
                          "fitness": [None if np.isnan(f) else f for f in fit.tolist()],
                          "weight": w.tolist()},
                "proposals": [{k: p[k] for k in ("generation", "batch", "r", "n_candidates",
                                                  "ess_fraction")}
                              for p in self._proposals],
                "bounds": self.bounds.tolist(),
                "options": dict(self._flat_options(), boundary_share=self.boundary_share)}

    # ------------------------------------------------------------------ state
    def _flat_options(self) -> dict:
        """The options as the flat ``[sampler]`` keys plus ``n_simulations`` (state and
        ``sampler.json``)."""
        return {**self.options.flat(), "n_simulations": self.n_simulations}

    def _extra_state(self) -> dict:
        fit = [(s, t, v) for s, rec in self._fit.items() for t, v in rec.items()]
        return {
            "options": self._flat_options(),
            "rng": self._rng.bit_generator.state,
            "base": self._base.state_dict(),
            "draws": {"u": self._u.tolist(), "sim": self._sim.tolist(),
                      "prop": self._prop.tolist(), "bred": self._bred.tolist(),
                      "copy": self._copy.tolist(), "boundary": self._bnd.tolist()},
            "proposals": [dict(p, parents=p["parents"].tolist(), probs=p["probs"].tolist())
                          for p in self._proposals],
            "dens": self._dens.tolist(),
            "fitness": {"sim": [f[0] for f in fit], "step": [f[1] for f in fit],
                        "dev": [f[2] for f in fit]},
            "queue": {"u": self._queue_u.tolist(), "bred": self._queue_bred.tolist(),
                      "copy": self._queue_copy.tolist(), "boundary": self._queue_bnd.tolist()},
            "finished": sorted(self._finished),
            "step_mean": {"step": list(self._step_mean),
                          "mean": list(self._step_mean.values())},
            "counters": {"generation": self.generation, "batches_told": self.batches_told,
                         "since": self._since, "last_ess_fraction": self.last_ess_fraction},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore everything from :meth:`state_dict` (no replay: exact continuation)."""
        if state.get("name") != self.name:
            raise ValueError(f"state is for sampler {state.get('name')!r}, not {self.name!r}")
        bounds = np.asarray(_plain(state["bounds"]), dtype=np.float64)
        if bounds.shape != self.bounds.shape:
            raise ValueError(f"state bounds have shape {bounds.shape}, sampler has "
                             f"{self.bounds.shape}")
        _check_current_state(state)
        opts = dict(_plain(state["options"]))
        n_simulations = opts.pop("n_simulations")
        self.__init__(bounds, BreedOptions.from_flat(opts),
                      seed=check_nonnegative_int(int(state["seed"]), "state['seed']"),
                      n_simulations=n_simulations,
                      boundary_share=float(_plain(state["boundary_share"])))
        self.n_drawn = int(state["n_drawn"])
        self._rng.bit_generator.state = _rng_state(state["rng"])
        self._base.load_state_dict(_plain(state["base"]))
        d = self.dim
        dr = state["draws"]
        self._u = _arr(dr["u"], np.float64).reshape(-1, d)
        self._sim = _arr(dr["sim"], np.int64).reshape(-1)
        self._prop = _arr(dr["prop"], np.int64).reshape(-1)
        self._bred = _arr(dr["bred"], bool).reshape(-1)
        self._copy = _arr(dr["copy"], bool).reshape(-1)
        self._bnd = _arr(dr["boundary"], bool).reshape(-1)
        self._proposals = [dict(_plain(p), parents=_arr(p["parents"], np.float64).reshape(-1, d),
                                probs=_arr(p["probs"], np.float64).reshape(-1))
                           for p in state["proposals"]]
        self._dens = _arr(state["dens"], np.float64).reshape(len(self._u), len(self._proposals))
        f = state["fitness"]
        self._fit, self._fit_cache = {}, {}
        for s, t, v in zip(_arr(f["sim"], np.int64).tolist(), _arr(f["step"], np.int64).tolist(),
                           _arr(f["dev"], np.float64).tolist()):
            self._fit.setdefault(s, {})[t] = v
        qs = state["queue"]
        self._queue_u = _arr(qs["u"], np.float64).reshape(-1, d)
        self._queue_bred = _arr(qs["bred"], bool).reshape(-1)
        self._queue_copy = _arr(qs["copy"], bool).reshape(-1)
        self._queue_bnd = _arr(qs["boundary"], bool).reshape(-1)
        self._finished = set(_arr(state["finished"], np.int64).tolist())
        sm = state["step_mean"]
        self._step_mean = dict(zip(_arr(sm["step"], np.int64).reshape(-1).tolist(),
                                   _arr(sm["mean"], np.float64).reshape(-1).tolist()))
        c = _plain(state["counters"])
        self.generation = int(c["generation"])
        self.batches_told = int(c["batches_told"])
        self._since = int(c["since"])
        self.last_ess_fraction = float(c["last_ess_fraction"])

    def __repr__(self) -> str:
        return (f"BreedSampler(dim={self.dim}, seed={self.seed}, n_drawn={self.n_drawn}, "
                f"generation={self.generation})")


def _check_current_state(state: dict) -> None:
    """Refuse a Breed state written before issue 23 (it lacks options, boundary flags or the
    step means): this version resumes only its own states."""
    missing = sorted((set(BreedOptions.KEYS) | {"n_simulations"}) - set(state["options"]))
    missing += [k for k in _STATE_KEYS if k not in state]
    missing += [f"{part}.boundary" for part in ("draws", "queue") if "boundary" not in state[part]]
    if missing:
        raise ValueError(f"Breed sampler state lacks {missing}: it was written by an older "
                         "wheretolearn (before issue 23), which this version cannot resume; "
                         "start the study again")


def _plain(obj: Any) -> Any:
    """Tensors / numpy values (a checkpoint round trip) back to Python lists and numbers."""
    if hasattr(obj, "tolist") and not isinstance(obj, (list, dict)):
        return obj.tolist()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _arr(value: Any, dtype: Any) -> np.ndarray:
    return np.asarray(_plain(value), dtype=dtype)


def _rng_state(state: Any) -> dict:
    s = _plain(state)
    return {k: (_rng_state(v) if isinstance(v, dict) else v) for k, v in s.items()}
