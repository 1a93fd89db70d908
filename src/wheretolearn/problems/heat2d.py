"""2-D heat equation with Dirichlet walls: the Melissa / Breed use case (SPEC §5).

Equation (zero source)::

    dT/dt = D (T_xx + T_yy)     on the square (0, side)^2, t > 0
    T = T_left / T_right / T_bottom / T_top on the four walls,  T(t=0) = T_init inside

discretised like Melissa's heat example: an interior grid of ``n x n`` nodes at
``x_i = i h``, ``i = 1..n``, ``h = side / (n + 1)`` (the walls lie outside the grid), the
5-point Laplacian ``Lap_h`` and implicit Euler with step ``dt``::

    (I - dt D Lap_h) T^{k+1} = T^k + dt D b / h^2          (b = wall values next to the wall)

Field layout: ``field[i, j]`` is the node at ``y = (i + 1) h`` (row, bottom to top) and
``x = (j + 1) h`` (column, left to right); so column 0 touches the left wall and row
``n - 1`` the top wall.

Solver. ``-Lap_h`` is diagonalised by the 2-D type-I discrete sine transform (DST-I) with
eigenvalues ``lambda_kl = (4/h^2)(sin^2(k pi / (2(n+1))) + sin^2(l pi / (2(n+1))))``.
Writing ``T^k = T_init + S + V^k`` with ``S`` the discrete steady state of the shifted wall
data ``T_w - T_init`` (``-Lap_h S = b_shift / h^2``) leaves the homogeneous recursion
``V^{k+1} = (I + dt D (-Lap_h))^{-1} V^k``, ``V^0 = -S``, which in DST space is an
elementwise division by ``1 + dt D lambda_kl``. Each step is therefore one multiply and one
inverse DST, ``O(n^2 log n)``, and is algebraically the implicit-Euler step above (not an
exponential integrator). Shifting by ``T_init`` keeps a uniform state *exactly* uniform.
The steady states of the four unit walls are computed once per problem.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import scipy.fft
import torch

from .._validation import (as_tensor, check_finite, check_positive_float, check_positive_int,
                           resolve_dtype)
from .base import Problem, register_problem

__all__ = ["Heat2D", "PARAMETER_NAMES", "PARAMETER_BOUNDS"]

#: Names of the five inputs, in order (walls ordered left, right, bottom, top as in Melissa).
PARAMETER_NAMES = ["T_init", "T_left", "T_right", "T_bottom", "T_top"]
#: Nominal range of every input (SPEC §5: each U[100, 500]).
PARAMETER_BOUNDS = np.array([[100.0, 500.0]] * 5)
#: Samples per block in ``__call__`` ~ this many grid values, so a block stays in cache.
_BLOCK_VALUES = 2**16


def _fft_workers() -> int:
    # follow torch's thread setting: 1 inside Dask workers (no oversubscription)
    return max(1, torch.get_num_threads())


def _dst(x: np.ndarray) -> np.ndarray:
    """Orthonormal 2-D DST-I over the last two axes (its own inverse)."""
    return scipy.fft.dstn(x, type=1, axes=(-2, -1), norm="ortho", workers=_fft_workers())


def _idst(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_dst` (kept separate so tests can count solver steps)."""
    return scipy.fft.idstn(x, type=1, axes=(-2, -1), norm="ortho", workers=_fft_workers())


def laplacian_eigenvalues(n: int, h: float) -> np.ndarray:
    """Eigenvalues ``lambda_kl`` (n, n) of ``-Lap_h`` (5-point, Dirichlet), ``k`` along rows."""
    s = (4.0 / h**2) * np.sin(np.arange(1, n + 1) * np.pi / (2 * (n + 1))) ** 2
    return s[:, None] + s[None, :]


def _unit_wall_rhs(n: int, h: float) -> np.ndarray:
    """``b / h^2`` (4, n, n) for each wall at temperature 1 (left, right, bottom, top)."""
    b = np.zeros((4, n, n))
    b[0, :, 0] = 1.0
    b[1, :, -1] = 1.0
    b[2, 0, :] = 1.0
    b[3, -1, :] = 1.0
    return b / h**2


@register_problem("heat2d")
class Heat2D(Problem):
    """Five temperatures -> heat-equation trajectory on an ``n x n`` interior grid.

    Parameters
    ----------
    n : int
        Interior nodes per side (default 64; the SC'23 study used 1000).
    n_steps : int
        Implicit-Euler steps (default 100).
    dt : float
        Time step (default 0.01).
    side : float
        Side length of the square (default 1; Melissa's example used 10, which only
        rescales time).
    diffusivity : float
        ``D`` (default 1).
    dtype : "float32" | "float64"
        Dtype of the returned fields (the solver itself works in float64).
    output_every : int
        ``__call__`` keeps every ``output_every``-th step (steps ``output_every``,
        ``2 output_every``, ..., ``n_steps``; default 1 = all), to keep stored data sets small.
        Must divide ``n_steps``. :meth:`simulate` always yields every step.

    Inputs ``(B, 5)`` = ``[T_init, T_left, T_right, T_bottom, T_top]``; outputs
    ``(B, n_steps // output_every, n, n)``: by default the solution after steps ``1..n_steps``.
    Values outside the nominal bounds are accepted (the bounds are what samplers should use).
    """

    name = "heat2d"
    differentiable = False

    def __init__(self, n: int = 64, *, n_steps: int = 100, dt: float = 0.01, side: float = 1.0,
                 diffusivity: float = 1.0, dtype: str = "float32", output_every: int = 1):
        self.n = check_positive_int(n, "n")
        self.n_steps = check_positive_int(n_steps, "n_steps")
        self.dt = check_positive_float(dt, "dt")
        self.side = check_positive_float(side, "side")
        self.diffusivity = check_positive_float(diffusivity, "diffusivity")
        self.dtype = resolve_dtype(dtype)
        self.output_every = check_positive_int(output_every, "output_every")
        if self.n_steps % self.output_every:
            raise ValueError(f"output_every must divide n_steps={self.n_steps}, "
                             f"got {output_every}")
        self.h = self.side / (self.n + 1)
        lam = laplacian_eigenvalues(self.n, self.h)
        #: Implicit-Euler amplification factor per DST mode, 1 / (1 + dt D lambda).
        self.gain = 1.0 / (1.0 + self.dt * self.diffusivity * lam)
        #: DST coefficients of the steady states of the four unit walls, (4, n, n).
        self._wall_hat = _dst(_unit_wall_rhs(self.n, self.h)) / lam
        self._wall_steady: np.ndarray | None = None

    # ------------------------------------------------------------------ interface
    @property
    def input_shape(self) -> tuple[int, ...]:
        return (5,)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.n_steps // self.output_every, self.n, self.n)

    @property
    def parameter_bounds(self) -> np.ndarray:
        """Nominal bounds (5, 2): ``[[100, 500]] * 5``."""
        return PARAMETER_BOUNDS.copy()

    def field_range(self, bounds: Any) -> tuple[float, float]:
        """Maximum principle: every temperature lies between the lowest and the highest
        initial or wall temperature, ``[min low, max high]`` of ``bounds`` (5, 2)."""
        b = np.asarray(bounds, dtype=np.float64)
        return float(b[:, 0].min()), float(b[:, 1].max())

    @property
    def parameter_names(self) -> list[str]:
        """``["T_init", "T_left", "T_right", "T_bottom", "T_top"]``."""
        return list(PARAMETER_NAMES)

    def coordinates(self) -> dict[str, np.ndarray]:
        """``x`` (n,), ``y`` (n,) node coordinates and ``t`` the times of ``__call__``'s outputs."""
        x = self.h * np.arange(1, self.n + 1)
        steps = np.arange(self.output_every, self.n_steps + 1, self.output_every)
        return {"x": x, "y": x.copy(), "t": self.dt * steps}

    def options(self) -> dict[str, Any]:
        return {"n": self.n, "n_steps": self.n_steps, "dt": self.dt, "side": self.side,
                "diffusivity": self.diffusivity, "dtype": str(self.dtype).replace("torch.", ""),
                "output_every": self.output_every}

    def default_input_measure(self) -> Any:
        """Uniform on the nominal bounds ``[100, 500]^5`` (SPEC §5)."""
        from ..measures import Uniform

        return Uniform(PARAMETER_BOUNDS[:, 0], PARAMETER_BOUNDS[:, 1])

    # ------------------------------------------------------------------ solver
    def steady_state(self, params: np.ndarray) -> np.ndarray:
        """Discrete steady state (B, n, n) for ``params`` (B, 5) (the ``t -> inf`` limit).

        Solves ``-Lap_h T = b / h^2``; ``T_init`` plays no role.
        """
        p = self._check_params(params, batched=True)
        return p[:, 0, None, None] + self._steady_shifted(p)

    def simulate(self, params: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Run one simulation, yielding ``(t, field)`` as each step is computed.

        Parameters
        ----------
        params : (5,) array-like
            ``[T_init, T_left, T_right, T_bottom, T_top]``.

        Yields
        ------
        t : int
            Step index ``0..n_steps-1``.
        field : (n, n) float32 (or the problem's dtype) ndarray
            The solution after ``t + 1`` implicit-Euler steps.
        """
        p = self._check_params(params, batched=False)[None]
        return self._steps(p, squeeze=True)

    def _evaluate(self, u: torch.Tensor) -> torch.Tensor:
        p = u.detach().cpu().double().numpy()
        out = np.empty((p.shape[0], *self.output_shape),
                       dtype=torch.empty((), dtype=self.dtype).numpy().dtype)
        rows = max(1, _BLOCK_VALUES // self.n**2)
        for lo in range(0, p.shape[0], rows):
            for t, fields in self._steps(p[lo:lo + rows], squeeze=False):
                if (t + 1) % self.output_every == 0:
                    out[lo:lo + rows, (t + 1) // self.output_every - 1] = fields
        return torch.from_numpy(out)

    def _steps(self, p: np.ndarray, *, squeeze: bool) -> Iterator[tuple[int, np.ndarray]]:
        """Generator behind :meth:`simulate` / ``__call__``: p (B, 5) -> (t, (B, n, n))."""
        np_dtype = torch.empty((), dtype=self.dtype).numpy().dtype
        w = p[:, 1:] - p[:, :1]                                   # wall data shifted by T_init
        base = p[:, 0, None, None] + self._steady_shifted(p)     # T_init + S
        v_hat = -np.einsum("bw,wkl->bkl", w, self._wall_hat)      # DST of V^0 = -S
        for t in range(self.n_steps):
            v_hat = v_hat * self.gain
            field = (base + _idst(v_hat)).astype(np_dtype)
            yield t, (field[0] if squeeze else field)

    def _steady_shifted(self, p: np.ndarray) -> np.ndarray:
        """Steady state ``S`` (B, n, n) of the wall data ``T_w - T_init``."""
        if self._wall_steady is None:
            self._wall_steady = _idst(self._wall_hat)
        return np.einsum("bw,wkl->bkl", p[:, 1:] - p[:, :1], self._wall_steady)

    def _check_params(self, params: Any, *, batched: bool) -> np.ndarray:
        """Validate ``params`` ((B, 5) or (5,)) and return a float64 copy."""
        t = as_tensor(params, "params")
        want = "(B, 5)" if batched else "(5,)"
        ok = (t.ndim == 2 and t.shape[1] == 5) if batched else tuple(t.shape) == (5,)
        if not ok:
            raise ValueError(f"params for problem 'heat2d' must have shape {want}, "
                             f"got {tuple(t.shape)}")
        check_finite(t, "params")
        return t.detach().cpu().double().numpy().copy()
