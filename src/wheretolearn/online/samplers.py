"""Parameter samplers for the online ensemble: which simulation to run next (SPEC §5).

Samplers follow an *ask / tell* protocol (as in optuna):

* ``ask(k, sim_ids=...)`` returns the parameters ``(k, d)`` of the next ``k`` simulations. The
  engine calls it just in time, right before it submits those simulations, so that an
  adaptive sampler (Breed / AMIS, SPEC §5) decides with the newest information.
* ``tell(sim_ids, steps, losses)`` reports per-sample training losses of one batch: sample
  ``i`` of the batch came from simulation ``sim_ids[i]`` at time step ``steps[i]`` and had
  loss ``losses[i]``. Static samplers ignore it; an adaptive sampler turns it into a fitness
  per simulation (an upper quantile of its loss deviations over the recorded steps).
* ``simulation_finished(sim_id, completed=...)`` tells when a simulation ended (an adaptive
  sampler only breeds once enough simulations have finished).

Every hook the online study, the lockstep comparison or the executor calls is declared on
:class:`ParameterSampler` with a documented no-op default, so a new sampler implements
``_reset`` and ``_draw_unit`` and overrides only the hooks it needs: ``tell``,
``simulation_finished``, ``importance_weights`` (ledger weights; default ``None``: the draws
follow the target design), ``weights_for`` (training-loss weights of a batch; default
``None``: unweighted), ``metrics`` (scalars for ``metrics.jsonl``; default none) and
``write_report`` (the sampler's own files in the run folder; default none). The engine never
probes a sampler with ``hasattr``.

Static samplers draw points of the unit cube ``[0, 1)^d`` and scale them to the bounds::

    theta = low + u * (high - low)

Points are inside the box, ``low <= theta < high``, except boundary points (below), whose
snapped coordinates equal ``low`` or ``high`` exactly.

Boundary share (every sampler, option ``boundary_share``, default 0). A uniform or
low-discrepancy design almost never visits the faces and corners of the box, where solutions
are often hardest (SPEC §5: the heat study's tail lives in a corner). With
``boundary_share = s > 0`` every ``m``-th point, ``m = round(1 / s)`` (positions ``m - 1,
2m - 1, ...`` counted from 0 over the whole sequence; the share is therefore ``1 / m``), is a
boundary point: each coordinate is snapped, with probability 1/2, to ``low`` or ``high``
(1/2 each); if no coordinate was snapped, one chosen at random is, so every such point lies
on a face, an edge or a corner (a corner with probability ``2^-d / (1 - 2^-d)``). Point
``j`` of the boundary design is drawn from its own stream,
``SeedSequence(seed, spawn_key=(2, j))``, and the sampler's own sequence still advances
over those positions: the other points are exactly those of ``boundary_share = 0`` at the
same seed, and the boundary points need no replay on resume. (A boundary point replaces a
point of the design: a Latin hypercube block or a Halton / Sobol' prefix loses its exact
stratification at those positions.)

Reproducibility rule. ``state_dict()`` holds the integer seed, the number of points drawn
so far and ``boundary_share``; ``load_state_dict`` rebuilds the generator from the seed and
fast-forwards it, so a restored sampler continues *exactly* the sequence it would have
produced. The sequence does not depend on how it was split into ``ask`` calls (``ask(2)``
then ``ask(3)`` equals ``ask(5)``). With ``seed=None`` a seed is drawn from OS entropy once,
at construction, and stored, so even an unseeded run can be resumed.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from scipy.stats import qmc

from .._validation import (check_bounds, check_finite, check_nonnegative_int, check_positive_int,
                           check_probability)

__all__ = [
    "ParameterSampler",
    "UniformSampler",
    "HaltonSampler",
    "SobolSampler",
    "LHSSampler",
    "STATIC_SAMPLERS",
    "boundary_point",
]

# Replaying a long sequence in chunks keeps the memory of a restore bounded.
_REPLAY_CHUNK = 65536


def _resolve_seed(seed: Any) -> int:
    """Turn ``seed`` (int, ``numpy.random.Generator`` or ``None``) into a stored integer seed."""
    if seed is None:
        return int(np.random.SeedSequence().entropy % (2**63))
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, 2**63))
    return check_nonnegative_int(seed, "seed")


def _as_bounds(bounds: Any) -> np.ndarray:
    """Validate ``bounds`` as a finite ``(d, 2)`` array with ``low < high`` in every dimension."""
    try:
        b = np.array(bounds, dtype=np.float64)  # a copy: the caller's array is never aliased
    except (TypeError, ValueError) as exc:
        raise TypeError(f"bounds must be a (d, 2) array of numbers, got {bounds!r}") from exc
    if b.ndim != 2 or b.shape[1] != 2 or b.shape[0] < 1:
        raise ValueError(f"bounds must have shape (d, 2) with d >= 1, got {b.shape}")
    check_bounds(b[:, 0], b[:, 1], "bounds")
    b.setflags(write=False)
    return b


#: ``spawn_key`` tag of the boundary-point streams (Breed's own stream uses 1).
_BOUNDARY_STREAM = 2


def _boundary_every(share: Any) -> int:
    """``round(1 / share)`` (halves up), 0 for ``share = 0``; ``share`` must be in [0, 1]."""
    s = check_probability(share, "boundary_share")
    return 0 if s == 0.0 else int(np.floor(1.0 / s + 0.5))


def boundary_point(seed: int, j: int, dim: int) -> np.ndarray:
    """Boundary point ``j`` (unit coordinates, ``(dim,)``) of the design of ``seed``.

    Each coordinate is snapped to 0 or 1 (1/2 each) with probability 1/2, at least one of
    them; the others are uniform on ``[0, 1)``. Drawn from
    ``SeedSequence(seed, spawn_key=(2, j))``: random access, independent of the main stream.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_BOUNDARY_STREAM, j)))
    u = rng.random(dim)
    snap = rng.random(dim) < 0.5
    side = (rng.random(dim) < 0.5).astype(np.float64)
    if not snap.any():
        snap[rng.integers(dim)] = True
    u[snap] = side[snap]
    return u


class ParameterSampler(ABC):
    """Base class of the ask/tell parameter samplers.

    Parameters
    ----------
    bounds : (d, 2) array
        ``[low, high]`` per parameter; finite with ``low < high`` (the error names the
        dimension that violates it).
    seed : int, numpy.random.Generator or None
        Same seed -> same sequence. A Generator is consumed once to derive an integer seed.
    boundary_share : float in [0, 1]
        Share of boundary points: every ``round(1 / boundary_share)``-th point (module
        docstring); 0 (default): none.

    Attributes
    ----------
    name : str
        Registry name (``make_sampler(name, ...)``).
    adaptive : bool
        ``True`` when ``tell`` changes future ``ask`` results; the engine may skip computing
        per-sample losses for samplers where it is ``False``.
    bounds : (d, 2) ndarray (read-only), dim : int, seed : int, n_drawn : int
    boundary_share : float, boundary_every : int
        The option and ``m = round(1 / boundary_share)`` (0: no boundary points).
    """

    name: str = ""
    adaptive: bool = False

    def __init__(self, bounds: Any, *, seed: Any = None, boundary_share: float = 0.0) -> None:
        self.bounds = _as_bounds(bounds)
        self.dim = int(self.bounds.shape[0])
        self.seed = _resolve_seed(seed)
        self.n_drawn = 0
        self.boundary_every = _boundary_every(boundary_share)
        self.boundary_share = float(boundary_share)

    # -- ask / tell -----------------------------------------------------------------------
    def ask(self, k: int = 1, *, sim_ids: Any = None) -> np.ndarray:
        """Parameters of the next ``k`` simulations.

        Parameters
        ----------
        k : int >= 0
        sim_ids : (k,) ints, optional
            Ids the engine will give these simulations. Static samplers ignore them; an
            adaptive sampler records them to link later ``tell`` losses to parameters.

        Returns
        -------
        (k, d) float64 ndarray, inside ``bounds`` (``low <= theta < high``; boundary points
        have their snapped coordinates exactly at ``low`` or ``high``).
        """
        k = check_nonnegative_int(k, "k")
        if sim_ids is not None:
            ids = np.asarray(sim_ids)
            if ids.shape != (k,):
                raise ValueError(f"sim_ids must have shape ({k},) to match k, got {ids.shape}")
        unit = self._with_boundary(self._draw_unit(k), self.n_drawn)
        self.n_drawn += k
        return self._to_bounds(unit)

    def boundary_mask(self, start: int, k: int) -> np.ndarray:
        """Which of the points ``start, ..., start + k - 1`` of the sequence are boundary
        points, ``(k,)`` bool (every ``boundary_every``-th: positions ``m - 1, 2m - 1, ...``)."""
        idx = np.arange(start, start + k)
        m = self.boundary_every
        return (idx + 1) % m == 0 if m else np.zeros(k, bool)

    def _with_boundary(self, unit: np.ndarray, start: int) -> np.ndarray:
        """``unit`` (points ``start, ...``) with its boundary positions replaced."""
        mask = self.boundary_mask(start, len(unit))
        for i in np.flatnonzero(mask).tolist():
            unit[i] = boundary_point(self.seed, (start + i + 1) // self.boundary_every - 1,
                                     self.dim)
        return unit

    def _to_bounds(self, unit: np.ndarray) -> np.ndarray:
        """Unit points (k, d) -> parameters; a unit coordinate of exactly 1 (a snapped
        boundary coordinate) gives ``high`` exactly, any other stays below ``high``."""
        low, high = self.bounds[:, 0], self.bounds[:, 1]
        theta = low + unit * (high - low)
        # Rounding in low + u (high - low) can reach high when u is within 1 ulp of 1.
        return np.where(unit >= 1.0, high, np.minimum(theta, np.nextafter(high, low)))

    def tell(self, sim_ids: Any, steps: Any, losses: Any) -> None:
        """Report per-sample training losses of one batch (static samplers ignore them).

        Parameters
        ----------
        sim_ids : (B,) ints   simulation of each sample
        steps : (B,) ints     time step of each sample
        losses : (B,) floats  per-sample training loss (finite)
        """
        self._check_tell(sim_ids, steps, losses)

    def simulation_finished(self, sim_id: int, *, completed: bool = True) -> None:
        """Hook called when simulation ``sim_id`` ended (``completed=False``: it failed).
        Default: nothing."""

    def importance_weights(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Importance weights of the drawn simulations with respect to the target design,
        ``(sim_ids (N,), w (N,))``, recorded in the ledger at each checkpoint. Default
        ``None``: the draws follow the target design (every weight would be 1)."""
        return None

    def weights_for(self, sim_ids: Any) -> np.ndarray | None:
        """Training-loss weights ``(B,)`` of one batch whose samples came from simulations
        ``sim_ids`` (B,), used when ``[sampler] weighted`` is set. Default ``None``: the batch
        is trained unweighted."""
        return None

    def metrics(self) -> dict[str, float]:
        """Scalars added to each ``metrics.jsonl`` record (names prefixed ``sampler_``).
        Default: none."""
        return {}

    def write_report(self, run_dir: Any, history: Any) -> None:
        """Write the sampler's own files (tables, figures) into the run folder ``run_dir`` at
        the end of a study; ``history`` is the list of the run's metrics records. Default:
        nothing."""

    @staticmethod
    def _check_tell(sim_ids: Any, steps: Any, losses: Any
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validate the three ``tell`` arrays; return copies ``(int64, int64, float64)``."""
        ids = np.array(sim_ids, dtype=np.int64).reshape(-1)
        st = np.array(steps, dtype=np.int64).reshape(-1)
        ls = np.array(losses, dtype=np.float64).reshape(-1)
        if not ids.shape == st.shape == ls.shape:
            raise ValueError("sim_ids, steps and losses must have the same length (B,), got "
                             f"{ids.shape}, {st.shape} and {ls.shape}")
        check_finite(ls, "losses")
        return ids, st, ls

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """JSON-serialisable state: ``{"name", "seed", "n_drawn", "bounds",
        "boundary_share", ...}``."""
        return {"name": self.name, "seed": self.seed, "n_drawn": self.n_drawn,
                "bounds": self.bounds.tolist(), "boundary_share": self.boundary_share,
                **self._extra_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from :meth:`state_dict`; the sequence then continues exactly."""
        if state.get("name") != self.name:
            raise ValueError(f"state is for sampler {state.get('name')!r}, not {self.name!r}")
        bounds = _as_bounds(state["bounds"])
        if bounds.shape != self.bounds.shape:
            raise ValueError(f"state bounds have shape {bounds.shape}, sampler has "
                             f"{self.bounds.shape}")
        self._load_extra_state(state)
        self.bounds = bounds
        self.seed = check_nonnegative_int(state["seed"], "state['seed']")
        if "boundary_share" not in state:
            raise ValueError("sampler state lacks 'boundary_share': it was written by an older "
                             "wheretolearn, which this version does not resume; start the "
                             "study again")
        share = state["boundary_share"]
        self.boundary_every = _boundary_every(share)
        self.boundary_share = float(share)
        n = check_nonnegative_int(state["n_drawn"], "state['n_drawn']")
        self._reset()
        self._fast_forward(n)
        self.n_drawn = n

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict) -> None:
        """Check or restore subclass options stored by :meth:`_extra_state`."""

    def _fast_forward(self, n: int) -> None:
        """Advance the generator by ``n`` points (default: draw and discard, in chunks)."""
        while n > 0:
            m = min(n, _REPLAY_CHUNK)
            self._draw_unit(m)
            n -= m

    @abstractmethod
    def _reset(self) -> None:
        """(Re)build the generator from ``self.seed`` at position 0."""

    @abstractmethod
    def _draw_unit(self, k: int) -> np.ndarray:
        """Next ``k`` points of the unit cube, shape ``(k, d)``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, seed={self.seed}, n_drawn={self.n_drawn})"


class UniformSampler(ParameterSampler):
    """Independent uniform draws on the box (PCG64 stream seeded with ``seed``)."""

    name = "uniform"

    def __init__(self, bounds: Any, *, seed: Any = None, boundary_share: float = 0.0) -> None:
        super().__init__(bounds, seed=seed, boundary_share=boundary_share)
        self._reset()

    def _reset(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def _draw_unit(self, k: int) -> np.ndarray:
        # Row-major fill: the stream of doubles does not depend on how it is split into calls.
        return self._rng.random((k, self.dim))


class _QMCSampler(ParameterSampler):
    """A scrambled low-discrepancy sequence from :mod:`scipy.stats.qmc`."""

    def __init__(self, bounds: Any, *, seed: Any = None, boundary_share: float = 0.0) -> None:
        super().__init__(bounds, seed=seed, boundary_share=boundary_share)
        self._reset()

    @abstractmethod
    def _engine(self) -> qmc.QMCEngine:
        """A fresh scrambled engine seeded with ``self.seed``."""

    def _reset(self) -> None:
        self._qmc = self._engine()

    def _draw_unit(self, k: int) -> np.ndarray:
        with warnings.catch_warnings():
            # Sobol warns when a draw is not a power of 2 long; just-in-time draws of one
            # point are expected here (balance holds for every prefix of length 2^m).
            warnings.simplefilter("ignore", UserWarning)
            return self._qmc.random(k)

    def _fast_forward(self, n: int) -> None:
        self._qmc.fast_forward(n)


class HaltonSampler(_QMCSampler):
    """Scrambled Halton sequence: every prefix of length ``b^m`` in base ``b`` (2 for the first
    dimension, 3 for the second, ...) has one point in each of the ``b^m`` strata."""

    name = "halton"

    def _engine(self) -> qmc.QMCEngine:
        return qmc.Halton(self.dim, scramble=True, rng=np.random.default_rng(self.seed))


class SobolSampler(_QMCSampler):
    """Scrambled Sobol' sequence (balanced for prefixes of length ``2^m``)."""

    name = "sobol"

    def _engine(self) -> qmc.QMCEngine:
        return qmc.Sobol(self.dim, scramble=True, rng=np.random.default_rng(self.seed))


class LHSSampler(ParameterSampler):
    """Latin hypercube sampling in consecutive blocks.

    Points are served from blocks of ``block_size`` points; each block is a Latin hypercube:
    in every dimension each of the ``block_size`` equal strata holds exactly one point of the
    block (points are jittered uniformly inside their stratum). A new block is drawn when the
    current one is used up. Set ``block_size`` to the number of simulations of the campaign to
    make the whole campaign one Latin hypercube.

    State: seed, points drawn and ``block_size``; a restore replays the blocks.
    """

    name = "lhs"

    def __init__(self, bounds: Any, *, seed: Any = None, block_size: int = 100,
                 boundary_share: float = 0.0) -> None:
        super().__init__(bounds, seed=seed, boundary_share=boundary_share)
        self.block_size = check_positive_int(block_size, "block_size")
        self._reset()

    def _reset(self) -> None:
        self._qmc = qmc.LatinHypercube(self.dim, scramble=True,
                                       rng=np.random.default_rng(self.seed))
        self._block = np.empty((0, self.dim))
        self._pos = 0

    def _draw_unit(self, k: int) -> np.ndarray:
        out = np.empty((k, self.dim))
        filled = 0
        while filled < k:
            if self._pos == len(self._block):
                self._block = self._qmc.random(self.block_size)
                self._pos = 0
            m = min(k - filled, len(self._block) - self._pos)
            out[filled:filled + m] = self._block[self._pos:self._pos + m]
            self._pos += m
            filled += m
        return out

    def _extra_state(self) -> dict:
        return {"block_size": self.block_size}

    def _load_extra_state(self, state: dict) -> None:
        self.block_size = check_positive_int(state.get("block_size", self.block_size),
                                             "state['block_size']")


#: The static samplers by name (Breed, the adaptive one, is added in :mod:`.sampler_registry`).
STATIC_SAMPLERS: dict[str, type[ParameterSampler]] = {
    cls.name: cls for cls in (UniformSampler, HaltonSampler, SobolSampler, LHSSampler)
}
