"""Breed: adaptive importance sampling of the simulations of an online study (SPEC §5).

Breed ("MelissaDL x Breed", seed paper 002) chooses the parameters of the simulations not yet
submitted so that simulations whose samples the surrogate finds hard breed new ones nearby.

Fitness (SPEC §5, first bullet). Every training batch reports per-sample losses ``l_i`` with
their simulation id and time step (:meth:`BreedSampler.tell`). The *loss deviation*
``delta_i = l_i - mean_batch(l)`` is comparable across network states. It is stored per
``(sim_id, step)`` (a step served again overwrites its older value), and the fitness of a
simulation is the mean of its recorded deviations. A simulation is a parent candidate once it
has ``min_steps`` recorded steps and is among the ``window`` most recently drawn simulations.

Step baseline (``fitness_baseline="step"``, beyond the paper). Losses of one simulation differ
far more between time steps (the first steps, with their sharp boundary layers, are the
hardest for every parameter) than between parameters, so a fitness averaged over the random
steps a simulation happened to have trained mostly measures *which steps* were drawn. With
the step baseline each loss is first divided by a running mean of the losses at its time
step, ``r_i = l_i / m[step_i]`` (``m <- 0.9 m + 0.1 l`` per told loss, initialised with the
first one), and the deviation is ``r_i - mean_batch(r)``: parameters, not steps, make the
fitness.

Resampling. Once ``min_finished`` simulations have finished, every ``period`` told batches
(``trigger="period"``) -- or, with ``trigger="ess"``, as soon as the effective sample size of
the parent weights falls below ``ess_threshold`` of the candidates (at least ``min_period``
batches apart) -- the proposal is rebuilt (generation ``g = 1, 2, ...``):

* parents: the candidates with probabilities proportional to their normalised fitness
  ``p_k = (f_k - min f) / sum_j (f_j - min f)`` (uniform when all fitnesses are equal);
* a fraction ``R_g`` of the upcoming simulations is bred, the rest comes from the base
  sampler; ``R_g = r_start + (r_end - r_start) * min((g - 1) / r_break, 1)`` (linear ramp
  over ``r_break`` resamplings, then constant); generation 0 (before any resampling) is never
  bred;
* a child of parent ``p`` is ``N(p, diag(s^2))`` with ``s = sigma * (high - low)``; a child
  outside the box is drawn again with ``s <- shrink * s`` (the paper's "decrease sigma by
  3e-1", read as a factor 0.3), at most ``max_tries`` draws, after which the parent itself is
  copied.

Queue. The engine asks one simulation at a time right before it submits it, so Breed keeps a
queue of the next ``queue_size`` parameters drawn from the current proposal (exactly
``round(R_g * queue_size)`` of them bred, at random positions). A resampling discards and
redraws the queue; parameters already handed out by :meth:`ask` (submitted, relaunched or
resumed simulations) are never changed.

Importance weights (beyond the paper, AMIS with deterministic mixture weights; Cornuet et al.
2012). Working in unit coordinates ``u = (theta - low) / (high - low)`` the uniform target has
density 1. Proposal ``t`` has density ``q_t(u) = (1 - R_t) + R_t * sum_k p_k c_k(u)`` with the
exact truncated-retry child density of parent ``k``::

    c_k(u) = 1_box(u) * sum_{j < J} [prod_{i < j} (1 - m_{k,i})] * N(u; p_k, s_j^2)

where ``s_j = sigma * shrink^j`` and ``m_{k,i}`` is the Gaussian mass of the box at ``s_i``
(a product of normal CDF differences). A copied parent (all ``J`` tries out of the box) is a
point mass: the uniform target has no atom, so its weight is 0 (the density ratio of the
target to the mixture's atom). Every other drawn simulation ``n`` gets the
deterministic-mixture weight::

    w_n = 1 / sum_t (N_t / N) q_t(u_n)

with ``N_t`` simulations drawn from proposal ``t`` out of ``N``: ``(1/N) sum_n w_n f(u_n)``
estimates ``int f(u) du`` over the unit box (the uniform target). The densities of every draw
under every proposal are kept in a table, updated when a draw or a proposal is added.

State. :meth:`BreedSampler.state_dict` holds the generator state, the base sampler's state,
the fitness table, the draws (window), the proposals, generation and schedule counters and the
queue; :meth:`BreedSampler.load_state_dict` restores them, so a resumed study continues
exactly as the uninterrupted one from the same checkpoint (no replay: draws depend on
``tell``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import ndtr

from .._validation import (check_nonnegative_int, check_positive_float, check_positive_int,
                           check_probability)
from .samplers import ParameterSampler

__all__ = ["BreedSampler", "r_schedule", "child_density", "normalised_fitness",
           "effective_sample_size"]

_LOG_2PI = float(np.log(2.0 * np.pi))


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


def normalised_fitness(fitness: Any) -> np.ndarray:
    """Parent probabilities ``(f - min f) / sum(f - min f)``, shape ``(K,)``; uniform when all
    ``K`` fitnesses are equal."""
    f = np.asarray(fitness, dtype=np.float64).reshape(-1)
    if f.size == 0:
        raise ValueError("fitness must hold at least one value, got an empty array")
    g = f - f.min()
    total = g.sum()
    if not total > 0:
        return np.full(f.size, 1.0 / f.size)
    return g / total


def effective_sample_size(weights: Any) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` of non-negative weights (N,)."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    s2 = float((w * w).sum())
    return float(w.sum()) ** 2 / s2 if s2 > 0 else 0.0


def _box_mass(centres: np.ndarray, s: float) -> np.ndarray:
    """Mass of ``N(c, s^2 I)`` on the unit box, for centres (K, d) -> (K,)."""
    return np.prod(ndtr((1.0 - centres) / s) - ndtr(-centres / s), axis=1)


def child_density(u: Any, parents: Any, probs: Any, *, sigma: float, shrink: float,
                  max_tries: int) -> np.ndarray:
    """Density of a bred child on the unit box (module docstring), ``u (N, d) -> (N,)``.

    ``sum_k probs_k c_k(u)`` with ``c_k`` the truncated-retry density of parent ``k``
    (``parents (K, d)`` in unit coordinates, ``probs (K,)``), relative ``sigma``, factor
    ``shrink`` per retry and ``max_tries`` draws. Zero outside the box; the point mass of
    copied parents is not included.
    """
    u = np.asarray(u, dtype=np.float64)
    par = np.asarray(parents, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    n, d = u.shape
    out = np.zeros(n)
    if n == 0 or par.shape[0] == 0:
        return out
    inside = np.all((u >= 0.0) & (u <= 1.0), axis=1)
    sq = ((u[:, None, :] - par[None, :, :]) ** 2).sum(axis=2)      # (N, K)
    survive = np.ones(par.shape[0])                                  # prod_{i<j} (1 - m_i)
    s = float(sigma)
    for _ in range(max_tries):
        logn = -0.5 * sq / s**2 - d * (np.log(s) + 0.5 * _LOG_2PI)
        out += (np.exp(logn) * (p * survive)[None, :]).sum(axis=1)
        survive = survive * (1.0 - _box_mass(par, s))
        if not survive.max() > 1e-15:
            break
        s *= shrink
    return out * inside


class BreedSampler(ParameterSampler):
    """Breed adaptive sampler with AMIS importance weights (module docstring, SPEC §5).

    Parameters
    ----------
    bounds : (d, 2) array
    seed : int, numpy.random.Generator or None
        Seeds the breeding generator and (seed + 1) the base sampler.
    base : {"uniform", "halton", "sobol", "lhs"}
        Sampler of the non-bred share (and of all of generation 0).
    sigma : float in (0, 1]
        Child standard deviation relative to the parameter range (OGAS: 0.1; the paper: 10 on
        a range of 400 = 0.025).
    shrink : float in (0, 1)
        Factor applied to sigma when a child falls out of the box (0.3).
    max_tries : int >= 1
        Draws of one child before the parent is copied.
    period : int >= 1
        Told batches between resamplings (``trigger="period"``; the paper's P = 100).
    min_finished : int >= 0
        Finished simulations needed before the first resampling.
    r_start, r_end : float in [0, 1], r_break : int >= 0
        Linear schedule of the bred fraction (the paper: 0.5 -> 0.7 over 3).
    window : int >= 1
        Parent candidates come from the ``window`` most recently drawn simulations.
    min_steps : int >= 1
        Recorded steps a simulation needs to be a parent candidate.
    queue_size : int >= 1
        Upcoming parameters drawn per proposal (see the queue in the module docstring).
    trigger : {"period", "ess"}
        Resample every ``period`` batches, or when the parent weights' ESS fraction is below
        ``ess_threshold`` (at least ``min_period`` batches after the previous resampling).
    ess_threshold : float in (0, 1], min_period : int >= 1
    min_candidates : int >= 1
        A resampling waits until at least this many candidates exist (with one candidate
        every bred child of the generation would come from one parent).
    fitness_baseline : {"batch", "step"}
        Deviation from the batch mean of the raw losses (the paper) or of the losses
        divided by their time step's running mean (module docstring).
    """

    name = "breed"
    adaptive = True
    BASES = ("uniform", "halton", "sobol", "lhs")
    TRIGGERS = ("period", "ess")
    BASELINES = ("batch", "step")

    def __init__(self, bounds: Any, *, seed: Any = None, base: str = "uniform",
                 sigma: float = 0.1, shrink: float = 0.3, max_tries: int = 10,
                 period: int = 75, min_finished: int = 10, r_start: float = 0.5,
                 r_end: float = 0.7, r_break: int = 3, window: int = 25, min_steps: int = 33,
                 queue_size: int = 10, trigger: str = "period", ess_threshold: float = 0.5,
                 min_period: int = 20, fitness_baseline: str = "batch",
                 min_candidates: int = 5) -> None:
        super().__init__(bounds, seed=seed)
        if base not in self.BASES:
            raise ValueError(f"base must be one of {list(self.BASES)}, got {base!r}")
        if trigger not in self.TRIGGERS:
            raise ValueError(f"trigger must be one of {list(self.TRIGGERS)}, got {trigger!r}")
        if fitness_baseline not in self.BASELINES:
            raise ValueError(f"fitness_baseline must be one of {list(self.BASELINES)}, got "
                             f"{fitness_baseline!r}")
        self.options = {
            "base": base,
            "sigma": _check_unit(sigma, "sigma", closed=True),
            "shrink": _check_unit(shrink, "shrink", closed=False),
            "max_tries": check_positive_int(max_tries, "max_tries"),
            "period": check_positive_int(period, "period"),
            "min_finished": check_nonnegative_int(min_finished, "min_finished"),
            "r_start": check_probability(r_start, "r_start"),
            "r_end": check_probability(r_end, "r_end"),
            "r_break": check_nonnegative_int(r_break, "r_break"),
            "window": check_positive_int(window, "window"),
            "min_steps": check_positive_int(min_steps, "min_steps"),
            "queue_size": check_positive_int(queue_size, "queue_size"),
            "trigger": trigger,
            "ess_threshold": _check_unit(ess_threshold, "ess_threshold", closed=True),
            "min_period": check_positive_int(min_period, "min_period"),
            "fitness_baseline": fitness_baseline,
            "min_candidates": check_positive_int(min_candidates, "min_candidates"),
        }
        self._reset()

    # ------------------------------------------------------------------ set-up
    def _reset(self) -> None:
        from .samplers import make_sampler

        o = self.options
        self._rng = np.random.default_rng(self.seed)
        unit_box = np.tile([0.0, 1.0], (self.dim, 1))
        self._base = make_sampler(o["base"], unit_box, seed=self.seed + 1)
        self.generation = 0
        self.batches_told = 0
        self._since = 0
        self.last_ess_fraction = float("nan")
        # Draws: unit parameters (N, d), sim ids, proposal index, bred flag.
        self._u = np.zeros((0, self.dim))
        self._sim = np.zeros(0, np.int64)
        self._prop = np.zeros(0, np.int64)
        self._bred = np.zeros(0, bool)
        self._copy = np.zeros(0, bool)
        # Proposals: generation, R, parents (K, d), probs (K,), batch, candidates, ess.
        self._proposals: list[dict] = [self._proposal_record(0.0, np.zeros((0, self.dim)),
                                                              np.zeros(0), ess=float("nan"))]
        self._dens = np.ones((0, 1))            # q_t(u_n), (N, T)
        # Fitness: (sim, step) -> deviation, and per-simulation sums / counts.
        self._fit: dict[tuple[int, int], float] = {}
        self._fsum: dict[int, float] = {}
        self._fcount: dict[int, int] = {}
        self._step_mean: dict[int, float] = {}
        self._queue_u = np.zeros((0, self.dim))
        self._queue_bred = np.zeros(0, bool)
        self._queue_copy = np.zeros(0, bool)
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
        low, high = self.bounds[:, 0], self.bounds[:, 1]
        return np.minimum(low + unit * (high - low), np.nextafter(high, low))

    def _pop(self, k: int, ids: np.ndarray | None) -> np.ndarray:
        while len(self._queue_u) < k:
            self._refill()
        unit, bred = self._queue_u[:k].copy(), self._queue_bred[:k].copy()
        copy = self._queue_copy[:k].copy()
        self._queue_u, self._queue_bred = self._queue_u[k:], self._queue_bred[k:]
        self._queue_copy = self._queue_copy[k:]
        if ids is None:
            ids = np.arange(len(self._sim), len(self._sim) + k, dtype=np.int64)
        self._record_draws(unit, ids, bred, copy)
        return unit

    def _refill(self) -> None:
        """Append ``queue_size`` draws of the current proposal (``round(R q)`` bred)."""
        q = self.options["queue_size"]
        prop = self._proposals[-1]
        n_bred = int(round(prop["r"] * q)) if len(prop["probs"]) else 0
        base = self._base.ask(q - n_bred)
        children, copied = self._breed(prop["parents"], prop["probs"], n_bred)
        u = np.concatenate([base, children])
        bred = np.concatenate([np.zeros(q - n_bred, bool), np.ones(n_bred, bool)])
        copy = np.concatenate([np.zeros(q - n_bred, bool), copied])
        order = self._rng.permutation(q) if n_bred else np.arange(q)
        self._queue_u = np.concatenate([self._queue_u, u[order]])
        self._queue_bred = np.concatenate([self._queue_bred, bred[order]])
        self._queue_copy = np.concatenate([self._queue_copy, copy[order]])

    def _breed(self, parents: np.ndarray, probs: np.ndarray, n: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """``n`` children (n, d) in unit coordinates (retry with shrinking sigma, then copy)
        and which of them are copies of their parent (n,) bool."""
        o = self.options
        if n == 0:
            return np.zeros((0, self.dim)), np.zeros(0, bool)
        idx = self._rng.choice(len(probs), size=n, p=probs)
        centre = parents[idx]
        child = centre.copy()
        todo = np.arange(n)
        s = o["sigma"]
        for _ in range(o["max_tries"]):
            draw = centre[todo] + s * self._rng.standard_normal((len(todo), self.dim))
            ok = np.all((draw >= 0.0) & (draw < 1.0), axis=1)
            child[todo[ok]] = draw[ok]
            todo = todo[~ok]
            if len(todo) == 0:
                break
            s *= o["shrink"]
        copied = np.zeros(n, bool)
        copied[todo] = True  # rows still to do are copies of their parent
        return child, copied

    def _record_draws(self, unit: np.ndarray, ids: np.ndarray, bred: np.ndarray,
                      copy: np.ndarray) -> None:
        t = len(self._proposals) - 1
        rows = np.stack([self._density(p, unit) for p in self._proposals], axis=1)
        self._u = np.concatenate([self._u, unit])
        self._sim = np.concatenate([self._sim, ids])
        self._prop = np.concatenate([self._prop, np.full(len(ids), t, np.int64)])
        self._bred = np.concatenate([self._bred, bred])
        self._copy = np.concatenate([self._copy, copy])
        self._dens = np.concatenate([self._dens, rows])

    def _density(self, prop: dict, unit: np.ndarray) -> np.ndarray:
        """``q_t(u)`` of proposal ``prop`` at unit points (N, d) -> (N,)."""
        r = prop["r"]
        inside = np.all((unit >= 0.0) & (unit <= 1.0), axis=1).astype(np.float64)
        if r == 0.0 or len(prop["probs"]) == 0:
            return inside
        o = self.options
        c = child_density(unit, prop["parents"], prop["probs"], sigma=o["sigma"],
                          shrink=o["shrink"], max_tries=o["max_tries"])
        return (1.0 - r) * inside + r * c

    # ------------------------------------------------------------------ tell
    def tell(self, sim_ids: Any, steps: Any, losses: Any) -> None:
        """Record the loss deviations of one batch and resample when it is due."""
        ids, st, ls = self._check_tell(sim_ids, steps, losses)
        if len(ls) == 0:
            return
        if self.options["fitness_baseline"] == "step":
            ls = self._step_normalised(st, ls)
        dev = ls - ls.mean()
        for s, t, v in zip(ids.tolist(), st.tolist(), dev.tolist()):
            old = self._fit.get((s, t))
            self._fit[(s, t)] = v
            self._fsum[s] = self._fsum.get(s, 0.0) + v - (old if old is not None else 0.0)
            if old is None:
                self._fcount[s] = self._fcount.get(s, 0) + 1
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

    def fitness(self, sim_ids: Any = None) -> np.ndarray:
        """Fitness (mean recorded loss deviation) of ``sim_ids`` (default: every draw); NaN
        for a simulation without recorded steps."""
        ids = self._sim if sim_ids is None else np.asarray(sim_ids, np.int64).reshape(-1)
        return np.array([self._fsum[s] / self._fcount[s] if self._fcount.get(s) else np.nan
                         for s in ids.tolist()])

    def candidates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Parent candidates: ``(sim_ids (K,), unit params (K, d), fitness (K,))`` -- the last
        ``window`` draws with at least ``min_steps`` recorded steps."""
        o = self.options
        last = slice(max(0, len(self._sim) - o["window"]), len(self._sim))
        ids, u = self._sim[last], self._u[last]
        keep = np.array([self._fcount.get(s, 0) >= o["min_steps"] for s in ids.tolist()],
                        dtype=bool)
        ids, u = ids[keep], u[keep]
        return ids, u, self.fitness(ids)

    def _due(self) -> bool:
        o = self.options
        if self.n_finished < o["min_finished"]:
            return False
        if o["trigger"] == "period":
            return self._since >= o["period"]
        if self._since < o["min_period"]:
            return False
        ids, _, fit = self.candidates()
        if len(ids) < 2:
            return False
        self.last_ess_fraction = effective_sample_size(normalised_fitness(fit)) / len(ids)
        return self.last_ess_fraction < o["ess_threshold"]

    def resample(self) -> bool:
        """Build the next generation's proposal from the current candidates and redraw the
        queue; returns False (nothing changes, it is tried again at the next batch) when
        there are fewer than ``min_candidates`` candidates."""
        ids, u, fit = self.candidates()
        if len(ids) < self.options["min_candidates"]:
            return False
        o = self.options
        self.generation += 1
        probs = normalised_fitness(fit)
        ess = effective_sample_size(probs) / len(ids)
        r = r_schedule(self.generation, o["r_start"], o["r_end"], o["r_break"])
        prop = self._proposal_record(r, u.copy(), probs, ess=ess)
        self._proposals.append(prop)
        self._dens = np.concatenate([self._dens, self._density(prop, self._u)[:, None]],
                                    axis=1)
        self._since = 0
        self.last_ess_fraction = ess
        # Not yet submitted: redraw from the new proposal (handed-out draws stay as they are).
        self._queue_u = np.zeros((0, self.dim))
        self._queue_bred = np.zeros(0, bool)
        self._queue_copy = np.zeros(0, bool)
        return True

    # ------------------------------------------------------------------ weights
    def importance_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Deterministic-mixture weights of every drawn simulation w.r.t. the uniform target.

        Returns ``(sim_ids (N,), w (N,))`` with ``w_n = 1 / sum_t (N_t / N) q_t(u_n)`` (0 for a
        copied parent); ``mean(w f(u))`` estimates the integral of ``f`` over the unit box.
        """
        n = len(self._sim)
        if n == 0:
            return self._sim.copy(), np.zeros(0)
        counts = np.bincount(self._prop, minlength=len(self._proposals)) / n
        mix = self._dens @ counts
        return self._sim.copy(), np.where(self._copy, 0.0, 1.0 / mix)

    def weights_for(self, sim_ids: Any) -> np.ndarray:
        """Importance weights of ``sim_ids`` (B,), normalised to mean 1 over every draw;
        1.0 for an id this sampler did not draw."""
        ids, w = self.importance_weights()
        lookup = dict(zip(ids.tolist(), (w / w.mean()).tolist())) if len(w) else {}
        return np.array([lookup.get(s, 1.0) for s in
                         np.asarray(sim_ids, np.int64).reshape(-1).tolist()])

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

    def diagnostics(self) -> dict:
        """Per draw (sim id, params, generation, bred, fitness, weight) and per proposal
        (generation, batch, R, candidates, ESS), JSON-ready."""
        low, high = self.bounds[:, 0], self.bounds[:, 1]
        ids, w = self.importance_weights()
        fit = self.fitness(ids)
        return {"draws": {"sim_id": ids.tolist(),
                          "params": (low + self._u * (high - low)).tolist(),
                          "generation": [self._proposals[t]["generation"]
                                         for t in self._prop.tolist()],
                          "bred": self._bred.tolist(), "copy": self._copy.tolist(),
                          "fitness": [None if np.isnan(f) else f for f in fit.tolist()],
                          "weight": w.tolist()},
                "proposals": [{k: p[k] for k in ("generation", "batch", "r", "n_candidates",
                                                  "ess_fraction")}
                              for p in self._proposals],
                "bounds": self.bounds.tolist(), "options": dict(self.options)}

    # ------------------------------------------------------------------ state
    def _extra_state(self) -> dict:
        fit_keys = list(self._fit)
        return {
            "options": dict(self.options),
            "rng": self._rng.bit_generator.state,
            "base": self._base.state_dict(),
            "draws": {"u": self._u.tolist(), "sim": self._sim.tolist(),
                      "prop": self._prop.tolist(), "bred": self._bred.tolist(),
                      "copy": self._copy.tolist()},
            "proposals": [dict(p, parents=p["parents"].tolist(), probs=p["probs"].tolist())
                          for p in self._proposals],
            "dens": self._dens.tolist(),
            "fitness": {"sim": [k[0] for k in fit_keys], "step": [k[1] for k in fit_keys],
                        "dev": [self._fit[k] for k in fit_keys]},
            "queue": {"u": self._queue_u.tolist(), "bred": self._queue_bred.tolist(),
                      "copy": self._queue_copy.tolist()},
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
        opts = _plain(state["options"])
        self.__init__(bounds, seed=check_nonnegative_int(int(state["seed"]), "state['seed']"),
                      **opts)
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
        self._proposals = [dict(_plain(p), parents=_arr(p["parents"], np.float64).reshape(-1, d),
                                probs=_arr(p["probs"], np.float64).reshape(-1))
                           for p in state["proposals"]]
        self._dens = _arr(state["dens"], np.float64).reshape(len(self._u), len(self._proposals))
        f = state["fitness"]
        self._fit, self._fsum, self._fcount = {}, {}, {}
        for s, t, v in zip(_arr(f["sim"], np.int64).tolist(), _arr(f["step"], np.int64).tolist(),
                           _arr(f["dev"], np.float64).tolist()):
            self._fit[(s, t)] = v
            self._fsum[s] = self._fsum.get(s, 0.0) + v
            self._fcount[s] = self._fcount.get(s, 0) + 1
        self._queue_u = _arr(state["queue"]["u"], np.float64).reshape(-1, d)
        self._queue_bred = _arr(state["queue"]["bred"], bool).reshape(-1)
        self._queue_copy = _arr(state["queue"]["copy"], bool).reshape(-1)
        self._finished = set(_arr(state["finished"], np.int64).tolist())
        sm = state.get("step_mean", {"step": [], "mean": []})
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


def _check_unit(value: Any, name: str, *, closed: bool) -> float:
    v = check_positive_float(value, name)
    if v > 1.0 or (not closed and v == 1.0):
        raise ValueError(f"{name} must be in (0, 1{']' if closed else ')'}, got {value}")
    return v


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
