"""Gray-Scott reaction-diffusion on a periodic square (Pearson, Science 261, 1993).

Equations, for the concentrations ``u`` (substrate) and ``v`` (autocatalyst)::

    u_t = Du Lap u - u v^2 + F (1 - u)
    v_t = Dv Lap v + u v^2 - (F + k) v          on the periodic square (0, side)^2

with feed rate ``F`` and kill rate ``k`` (Pearson: ``Du = 2e-5``, ``Dv = 1e-5``, ``dt = 1``,
grid spacing ``h = 2.5 / 256``). Depending on ``(F, k)`` the small initial perturbation
decays to the trivial state ``u = 1, v = 0``, settles to a uniform state, or grows into
spots, stripes or waves; the regime boundaries are sharp and lie *inside* the parameter
box ``F in [0.01, 0.06]``, ``k in [0.04, 0.07]``.

Discretisation: nodes ``x_j = j h``, ``j = 0..n-1``, ``h = side / n`` (default
``side = n * 2.5 / 256``, Pearson's spacing), the periodic 5-point Laplacian and explicit
Euler with step ``dt``::

    u' = u + dt (Du Lap_h u - u v^2 + F (1 - u))
    v' = v + dt (Dv Lap_h v + u v^2 - (F + k) v)
    Lap_h w_ij = ((w_i+1,j + w_i-1,j) + (w_i,j+1 + w_i,j-1) - 4 w_ij) / h^2

(stable for ``max(Du, Dv) dt / h^2 <= 1/4``; Pearson's values give 0.21). The Laplacian is
summed in this order so that a uniform field has a Laplacian of exactly 0: the trivial
state stays exactly fixed and a uniform state follows the Euler steps of the kinetics ODE.
The state of ``B`` simulations is one padded ``(B, 2, n + 2, n + 2)`` array (ghost rows and
columns copied from the opposite side), advanced with in-place numpy operations, so a
batch costs one set of numpy calls per step. The solver runs in the problem's ``dtype``
(float32 by default: about 1.5-2x faster than float64; the trajectory is deterministic for a
given dtype, but at parameters where the pattern is chaotic float32 and float64 runs end
in different patterns of the same kind).

Initial state (Pearson's, on the scaled-down domain): ``u = 1, v = 0`` except a central
square of side ``size * side`` where ``u = 1/2, v = 1/4``; a node covered in part gets the
covered fraction of its cell (so the map is continuous in ``size``). Then both fields are
multiplied by ``1 + noise * xi`` with ``xi ~ U(-1, 1)`` drawn once per problem from
``noise_seed``: every simulation sees the same noise, so the same parameters always give
the same trajectory (the online engine re-runs simulations after failures).

Field layout: ``field[i, j]`` is the node at ``y = i h`` (row) and ``x = j h`` (column).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np
import torch

from .._validation import (as_tensor, check_nonnegative_int, check_positive_float,
                           check_positive_int, check_type, resolve_dtype)
from .base import Problem, register_problem

__all__ = ["GrayScott", "GrayScottPhysics", "PARAMETER_NAMES", "PARAMETER_BOUNDS",
           "PEARSON_SPACING"]

#: Names of the three inputs, in order: feed rate, kill rate, side of the initial square
#: as a fraction of the domain side.
PARAMETER_NAMES = ["F", "k", "size"]
#: Allowed range of every input (Pearson's pattern-forming window for F and k).
PARAMETER_BOUNDS = np.array([[0.01, 0.06], [0.04, 0.07], [0.1, 0.5]])
#: Pearson's grid spacing: 256 nodes on a side of 2.5.
PEARSON_SPACING = 2.5 / 256
#: Output fields: index of the concentration in the solver's ``(u, v)`` state.
_FIELDS = {"v": 1, "u": 0}
_LONG_NAMES = {"v": "autocatalyst concentration v", "u": "substrate concentration u"}
#: Samples per block in ``__call__`` ~ this many grid values, so a block stays in cache.
_BLOCK_VALUES = 2**16


def square_fraction(n: int, size: float) -> np.ndarray:
    """Fraction (n,) of each node's cell ``[j - 1/2, j + 1/2]`` (in units of ``h``) covered by
    the centred interval of length ``size * n`` (centre ``n / 2``)."""
    x = np.arange(n, dtype=np.float64)
    half = 0.5 * size * n
    lo = np.maximum(x - 0.5, n / 2 - half)
    hi = np.minimum(x + 0.5, n / 2 + half)
    return np.clip(hi - lo, 0.0, 1.0)


class _Integrator:
    """Explicit-Euler state of ``B`` Gray-Scott simulations (see the module docstring).

    ``u, v (B, n, n)`` initial fields; ``F, k (B,)`` rates; ``coef (2,)`` = ``(Du, Dv) dt /
    h^2``. The state is a private padded copy ``(B, 2, n + 2, n + 2)``; the inputs are not
    modified.
    """

    def __init__(self, u: np.ndarray, v: np.ndarray, F: np.ndarray, k: np.ndarray, *,
                 coef: np.ndarray, dt: float, dtype: np.dtype):
        b, n = u.shape[0], u.shape[-1]
        self.w = np.zeros((b, 2, n + 2, n + 2), dtype=dtype)
        self.w[:, 0, 1:-1, 1:-1] = u
        self.w[:, 1, 1:-1, 1:-1] = v
        self.coef = np.asarray(coef, dtype=dtype).reshape(1, 2, 1, 1)
        self.dt = dtype.type(dt)
        f, fk = np.asarray(F, dtype=np.float64), np.asarray(F, dtype=np.float64) + k
        self.dt_f = (dt * f).astype(dtype).reshape(b, 1, 1)
        #: ``-dt (F, F + k)`` (B, 2, 1, 1): the linear decay rates of ``u`` and ``v``.
        self.decay = -(dt * np.stack([f, fk], axis=1)).astype(dtype).reshape(b, 2, 1, 1)
        self._inc = np.empty((b, 2, n, n), dtype=dtype)
        self._tmp = np.empty((b, 2, n, n), dtype=dtype)
        self._r = np.empty((b, n, n), dtype=dtype)

    @property
    def interior(self) -> np.ndarray:
        """View (B, 2, n, n) of ``(u, v)`` (not a copy)."""
        return self.w[..., 1:-1, 1:-1]

    def _fill_ghosts(self) -> None:
        w = self.w
        w[..., 0, 1:-1] = w[..., -2, 1:-1]
        w[..., -1, 1:-1] = w[..., 1, 1:-1]
        w[..., 1:-1, 0] = w[..., 1:-1, -2]
        w[..., 1:-1, -1] = w[..., 1:-1, 1]

    def _diffusion(self) -> np.ndarray:
        """``dt (Du, Dv) Lap_h (u, v)`` (B, 2, n, n) in a work array.

        Summed as ``(N + S) + (E + W) - 4 c``: for a uniform field every term is an exact
        multiple of it, so the result is exactly 0."""
        w, inc, tmp = self.w, self._inc, self._tmp
        np.add(w[..., :-2, 1:-1], w[..., 2:, 1:-1], out=inc)
        np.add(w[..., 1:-1, :-2], w[..., 1:-1, 2:], out=tmp)
        inc += tmp
        np.multiply(self.interior, 4, out=tmp)
        inc -= tmp
        inc *= self.coef
        return inc

    def step(self, n_steps: int) -> None:
        """Advance every simulation by ``n_steps`` explicit-Euler steps, in place."""
        c, tmp, r = self.interior, self._tmp, self._r
        u, v = c[:, 0], c[:, 1]
        inc_u, inc_v = self._inc[:, 0], self._inc[:, 1]
        for _ in range(n_steps):
            self._fill_ghosts()
            inc = self._diffusion()
            np.multiply(c, self.decay, out=tmp)      # -dt (F u, (F + k) v)
            inc += tmp
            inc_u += self.dt_f                       # + dt F
            np.multiply(v, v, out=r)
            r *= u
            if self.dt != 1:
                r *= self.dt                         # dt u v^2
            inc_u -= r
            inc_v += r
            c += inc


@dataclasses.dataclass(frozen=True)
class GrayScottPhysics:
    """The physical set-up of :class:`GrayScott`: diffusivities, domain and initial noise.

    Each field is also a flat option of ``get_problem("grayscott", **options)`` (a TOML
    ``[study.options]`` key of the same name).

    Parameters
    ----------
    Du, Dv : float
        Diffusivities of ``u`` and ``v`` (default 2e-5 and 1e-5, Pearson's; >= 0).
    side : float, optional
        Side of the periodic square (> 0; default ``n * 2.5 / 256``: Pearson's spacing, so
        0.625 at n = 64).
    noise : float
        Relative amplitude of the initial noise (default 0.01, Pearson's 1 %; >= 0).
    noise_seed : int
        Seed of the noise field, the same for every simulation (default 0).
    """

    Du: float = 2e-5
    Dv: float = 1e-5
    side: float | None = None
    noise: float = 0.01
    noise_seed: int = 0

    def __post_init__(self) -> None:
        valid = {"Du": check_positive_float(self.Du, "Du", allow_zero=True),
                 "Dv": check_positive_float(self.Dv, "Dv", allow_zero=True),
                 "side": None if self.side is None else check_positive_float(self.side, "side"),
                 "noise": check_positive_float(self.noise, "noise", allow_zero=True),
                 "noise_seed": check_nonnegative_int(self.noise_seed, "noise_seed")}
        for name, value in valid.items():
            object.__setattr__(self, name, value)


@register_problem("grayscott")
class GrayScott(Problem):
    """``(F, k, size)`` -> Gray-Scott trajectory of ``v`` (or ``u``) on a periodic ``n x n`` grid.

    Parameters
    ----------
    n : int
        Nodes per side (default 64; at least 3).
    n_steps : int
        Snapshots per simulation (default 100).
    every : int
        Solver steps between snapshots (default 100): a simulation runs ``n_steps * every``
        explicit-Euler steps (default 10^4, where Pearson's patterns have formed).
    dt : float
        Time step (default 1, Pearson's).
    physics : GrayScottPhysics
        Diffusivities ``Du, Dv``, domain ``side``, initial ``noise`` and ``noise_seed``
        (default Pearson's). ``get_problem("grayscott", **options)`` takes these fields as
        flat options (``Du=3e-5``, ``noise=0.0``, ...).
    dtype : "float32" | "float64"
        Dtype of the solver and of the returned fields (default float32).
    field : "v" | "u"
        Which concentration is output (default ``"v"``). Online studies should use ``"u"``:
        ``v`` decays to exactly 0 over much of the box, where the relative L2 validation
        error ``||y_hat - y|| / ||y||`` is undefined; ``u`` stays above about 0.1.

    Inputs ``(B, 3)`` = ``[F, k, size]`` inside :data:`PARAMETER_BOUNDS` (else
    ``ValueError``); outputs ``(B, n_steps, n, n)``: ``field`` after ``every, 2 every, ...,
    n_steps * every`` solver steps. ``simulate(params)`` yields the same fields one by one.
    """

    name = "grayscott"
    differentiable = False

    def __init__(self, n: int = 64, *, n_steps: int = 100, every: int = 100, dt: float = 1.0,
                 physics: GrayScottPhysics = GrayScottPhysics(), dtype: str = "float32",
                 field: str = "v"):
        self.n = check_positive_int(n, "n")
        if self.n < 3:
            raise ValueError(f"n must be at least 3, got {n}")
        self.n_steps = check_positive_int(n_steps, "n_steps")
        self.every = check_positive_int(every, "every")
        self.dt = check_positive_float(dt, "dt")
        check_type(physics, GrayScottPhysics, "physics")
        side = self.n * PEARSON_SPACING if physics.side is None else physics.side
        #: The set-up used, ``side`` resolved.
        self.physics = dataclasses.replace(physics, side=side)
        self.dtype = resolve_dtype(dtype)
        if field not in _FIELDS:
            raise ValueError(f"field must be one of {', '.join(_FIELDS)}, got {field!r}")
        self.field = field
        self.h = self.side / self.n
        self._check_stability()
        #: Noise factors ``1 + noise * xi`` (2, n, n) for u and v, the same for every run.
        xi = np.random.default_rng(physics.noise_seed).uniform(-1.0, 1.0, (2, self.n, self.n))
        self._noise = 1.0 + physics.noise * xi

    @property
    def side(self) -> float:
        """Side of the periodic square (``physics.side``, resolved)."""
        return self.physics.side

    def _check_stability(self) -> None:
        ratio = max(self.physics.Du, self.physics.Dv) * self.dt / self.h**2
        if ratio > 0.25:
            raise ValueError(f"explicit Euler is unstable: max(Du, Dv) dt / h^2 = {ratio:.3g} > "
                             f"1/4 (h = side / n = {self.h:.3g}); lower dt, Du or Dv, or "
                             "enlarge side")

    # ------------------------------------------------------------------ interface
    @property
    def input_shape(self) -> tuple[int, ...]:
        return (3,)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.n_steps, self.n, self.n)

    @property
    def parameter_bounds(self) -> np.ndarray:
        """Bounds (3, 2): ``[[0.01, 0.06], [0.04, 0.07], [0.1, 0.5]]``."""
        return PARAMETER_BOUNDS.copy()

    def field_range(self, bounds: Any) -> tuple[float, float]:
        """``(0, 1)``: the concentrations start in [0, 1] and stay there for these rates
        (the cached 328-simulation validation set spans u in [0.071, 1.0001])."""
        return 0.0, 1.0

    @property
    def parameter_names(self) -> list[str]:
        """``["F", "k", "size"]``."""
        return list(PARAMETER_NAMES)

    def coordinates(self) -> dict[str, np.ndarray]:
        """``x`` (n,), ``y`` (n,) node coordinates and ``t`` (n_steps,) snapshot times."""
        x = self.h * np.arange(self.n)
        t = self.dt * self.every * np.arange(1, self.n_steps + 1)
        return {"x": x, "y": x.copy(), "t": t}

    def options(self) -> dict[str, Any]:
        return {"n": self.n, "n_steps": self.n_steps, "every": self.every, "dt": self.dt,
                **dataclasses.asdict(self.physics),
                "dtype": str(self.dtype).replace("torch.", ""), "field": self.field}

    def default_input_measure(self) -> Any:
        """Uniform on :data:`PARAMETER_BOUNDS` (float64 samples)."""
        from ..measures import Uniform

        return Uniform(PARAMETER_BOUNDS[:, 0], PARAMETER_BOUNDS[:, 1], dtype=torch.float64)

    def dataset_layout(self) -> Any:
        """Dimension names and units of a ``wheretolearn generate`` store."""
        from ..datasets.layout import DatasetLayout

        c = self.coordinates()
        axis = (lambda name, values, long: ((name,), values, {"long_name": long, "units": "1"}))
        coords = {"parameter": (("parameter",), np.asarray(PARAMETER_NAMES, dtype=str),
                                {"long_name": "feed rate F, kill rate k, initial square size"}),
                  "t": axis("t", c["t"], "time of the snapshot"),
                  "y": axis("y", c["y"], "y coordinate of the periodic grid node"),
                  "x": axis("x", c["x"], "x coordinate of the periodic grid node")}
        return DatasetLayout(
            ("sample", "parameter"), ("sample", "t", "y", "x"),
            {"long_name": "Gray-Scott parameters (F, k, size)", "units": "1"},
            {"long_name": _LONG_NAMES[self.field], "units": "1",
             "description": f"{self.field}[t, i, j] at y_i, x_j after (t + 1) * every solver "
                            "steps"},
            coords)

    # ------------------------------------------------------------------ solver
    def initial_state(self, params: Any) -> tuple[np.ndarray, np.ndarray]:
        """Pearson's initial ``u, v`` (B, n, n) float64 for ``params`` (B, 3) (new arrays)."""
        p = self._check_params(params, batched=True)
        m = np.stack([np.multiply.outer(f, f) for f in
                      (square_fraction(self.n, s) for s in p[:, 2])])
        return (1.0 - 0.5 * m) * self._noise[0], (0.25 * m) * self._noise[1]

    def evolve(self, u: Any, v: Any, F: Any, k: Any, n_steps: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """Advance arbitrary states by ``n_steps`` explicit-Euler steps (the raw scheme).

        ``u, v`` (B, n, n) and ``F, k`` (B,) (any finite values: no bounds are checked);
        returns new ``u, v`` (B, n, n) arrays in the problem's dtype."""
        n_steps = check_nonnegative_int(n_steps, "n_steps")
        u, v = (self._check_field(a, name) for a, name in ((u, "u"), (v, "v")))
        if u.shape != v.shape:
            raise ValueError(f"u and v must have the same shape, got {u.shape} and {v.shape}")
        F, k = (self._check_rates(a, name, u.shape[0]) for a, name in ((F, "F"), (k, "k")))
        state = self._integrator(u, v, F, k)
        state.step(n_steps)
        out = state.interior.copy()
        return out[:, 0], out[:, 1]

    def simulate(self, params: Any) -> Iterator[tuple[int, np.ndarray]]:
        """Run one simulation, yielding ``(t, field)`` as each snapshot is computed.

        Parameters
        ----------
        params : (3,) array-like
            ``[F, k, size]`` inside :data:`PARAMETER_BOUNDS`.

        Yields
        ------
        t : int
            Snapshot index ``0..n_steps-1``.
        field : (n, n) ndarray of the problem's dtype
            ``v`` (or ``u``, option ``field``) after ``(t + 1) * every`` solver steps (a new
            array).
        """
        p = self._check_params(params, batched=False)[None]
        return self._snapshots(p, squeeze=True)

    def check_input(self, u: torch.Tensor) -> None:
        """Shape ``(B, 3)``, finite and inside the bounds (``ValueError`` naming the value)."""
        self._check_params(u, batched=True)

    def _evaluate(self, u: torch.Tensor) -> torch.Tensor:
        p = u.detach().cpu().double().numpy()
        out = np.empty((p.shape[0], *self.output_shape), dtype=self._np_dtype)
        rows = max(1, _BLOCK_VALUES // self.n**2)
        for lo in range(0, p.shape[0], rows):
            for t, fields in self._snapshots(p[lo:lo + rows], squeeze=False):
                out[lo:lo + rows, t] = fields
        return torch.from_numpy(out)

    @property
    def _np_dtype(self) -> np.dtype:
        return torch.empty((), dtype=self.dtype).numpy().dtype

    def _integrator(self, u: np.ndarray, v: np.ndarray, F: np.ndarray,
                    k: np.ndarray) -> _Integrator:
        coef = np.array([self.physics.Du, self.physics.Dv]) * self.dt / self.h**2
        return _Integrator(u, v, F, k, coef=coef, dt=self.dt, dtype=self._np_dtype)

    def _snapshots(self, p: np.ndarray, *, squeeze: bool) -> Iterator[tuple[int, np.ndarray]]:
        """Generator behind :meth:`simulate` / ``__call__``: p (B, 3) -> (t, (B, n, n))."""
        u, v = self.initial_state(p)
        state = self._integrator(u, v, p[:, 0], p[:, 1])
        channel = _FIELDS[self.field]
        for t in range(self.n_steps):
            state.step(self.every)
            field = state.interior[:, channel].copy()
            yield t, (field[0] if squeeze else field)

    def _check_params(self, params: Any, *, batched: bool) -> np.ndarray:
        """Validate ``params`` ((B, 3) or (3,)): finite, inside the bounds; float64 copy."""
        p = as_tensor(params, "params").detach().cpu().double().numpy().copy()
        want = "(B, 3)" if batched else "(3,)"
        ok = (p.ndim == 2 and p.shape[1] == 3) if batched else p.shape == (3,)
        if not ok:
            raise ValueError(f"params for problem 'grayscott' must have shape {want} "
                             f"([F, k, size]), got {p.shape}")
        rows = p if batched else p[None]
        for i, name in enumerate(PARAMETER_NAMES):
            lo, hi = PARAMETER_BOUNDS[i]
            tol = 1e-6 * (abs(lo) + abs(hi))          # float32 rounding of a bound
            bad = ~((rows[:, i] >= lo - tol) & (rows[:, i] <= hi + tol))   # NaN is bad too
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                value = float(rows[j, i])
                where = f"params[{j}, {i}]" if batched else f"params[{i}]"
                what = "is outside" if np.isfinite(value) else "is not a finite number in"
                raise ValueError(f"{where} ({name}) = {value!r} {what} its allowed range "
                                 f"[{lo}, {hi}] (problem 'grayscott')")
        return p

    def _check_field(self, a: Any, name: str) -> np.ndarray:
        x = np.asarray(a, dtype=np.float64)
        if x.ndim != 3 or x.shape[1:] != (self.n, self.n):
            raise ValueError(f"{name} must have shape (B, {self.n}, {self.n}), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name} must be finite, got NaN or inf")
        return x

    @staticmethod
    def _check_rates(a: Any, name: str, b: int) -> np.ndarray:
        x = np.broadcast_to(np.asarray(a, dtype=np.float64), (b,))
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name} must be finite, got {a!r}")
        return x
