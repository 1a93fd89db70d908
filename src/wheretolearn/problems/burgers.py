"""Viscous Burgers equation on the periodic interval: initial condition -> solution at t = T.

Paper SM F.6 / SPEC §4::

    u_t + u u_x = nu u_xx,   x in [0, 2 pi) periodic,   nu = 0.1,   u(., 0) = u0  ->  u(., T), T = 1

Pseudo-spectral in space on ``n`` equispaced points ``x_j = 2 pi j / n``; in Fourier space
``d/dt u_hat = -nu k^2 u_hat + N(u_hat)`` with ``N(u_hat) = -(i k / 2) FFT(u^2)``. Time
stepping: integrating-factor (Lawson) RK4, i.e. classical RK4 for
``v = exp(nu k^2 t) u_hat``, so the stiff diffusion is integrated exactly and only the
advection limits the step. As in the authors' solver the Nyquist mode (n even) is kept at
zero (it is dropped from the initial condition and from every derivative) and no
dealiasing is applied by default; ``dealias=True`` applies the 2/3 rule to ``N``.
Batched: ``rfft`` over the last axis of a ``(B, n)`` array. Not differentiable.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.fft
import torch

from .._validation import check_positive_float, check_positive_int, resolve_dtype
from .base import Problem, register_problem

__all__ = ["Burgers"]


#: Rows per block in :meth:`Burgers.solve` ~ this many grid values, so the RK4 stages of a
#: block stay in cache (a whole (1000, 1024) batch at once was ~3x slower per sample).
_BLOCK_VALUES = 2**15


def _fft_workers() -> int:
    # follow torch's thread setting: 1 inside Dask workers, so K workers do not each spawn
    # one FFT thread per core
    return max(1, torch.get_num_threads())


def _rfft(u: np.ndarray) -> np.ndarray:
    return scipy.fft.rfft(u, axis=-1, workers=_fft_workers())


def _irfft(u_hat: np.ndarray, n: int) -> np.ndarray:
    return scipy.fft.irfft(u_hat, n=n, axis=-1, workers=_fft_workers())


@register_problem("burgers")
class Burgers(Problem):
    """Burgers solution operator ``u0 (B, n) -> u(., t_final) (B, n)``.

    Parameters
    ----------
    n : int
        Grid points (default 1024; the paper used 8192). At least 4.
    n_steps : int
        Integrating-factor RK4 steps over ``[0, t_final]`` (default 500; the paper used
        2000 at n = 8192). With the integrating factor only the weakly damped modes
        (``nu k^2 dt < 1``) limit the step; for the default input measure 500 steps differ
        from a 4000-step reference by < 1e-8 (max abs, float64), below float32 resolution.
        Rougher or larger inputs need more steps; a blow-up raises ``FloatingPointError``.
    nu : float
        Viscosity (default 0.1).
    t_final : float
        Final time (default 1).
    dealias : bool
        Apply the 2/3 rule to the nonlinear term (default False, as in the paper).
    dtype : "float32" | "float64"
        Dtype of the returned solution (the solver works in float64).
    n_modes : int, optional
        Sine/cosine frequencies of the default input measure (default ``n // 2 - 1``, the
        largest below Nyquist).
    """

    name = "burgers"
    differentiable = False

    def __init__(self, n: int = 1024, *, n_steps: int = 500, nu: float = 0.1,
                 t_final: float = 1.0, dealias: bool = False, dtype: str = "float32",
                 n_modes: int | None = None):
        self.n = check_positive_int(n, "n")
        if self.n < 4:
            raise ValueError(f"n must be at least 4 grid points, got {n}")
        self.n_steps = check_positive_int(n_steps, "n_steps")
        self.nu = check_positive_float(nu, "nu")
        self.t_final = check_positive_float(t_final, "t_final")
        if not isinstance(dealias, bool):
            raise TypeError(f"dealias must be True or False, got {dealias!r}")
        self.dealias = dealias
        self.dtype = resolve_dtype(dtype)
        max_modes = (self.n - 1) // 2
        self.n_modes = max_modes if n_modes is None else check_positive_int(n_modes, "n_modes")
        if self.n_modes > max_modes:
            raise ValueError(f"n_modes must be at most {max_modes} (below Nyquist for n={self.n}), "
                             f"got {n_modes}")
        self._setup()

    def _setup(self) -> None:
        k = np.arange(self.n // 2 + 1, dtype=np.float64)
        keep = np.ones_like(k)
        if self.n % 2 == 0:
            keep[-1] = 0.0                      # Nyquist mode held at zero
        if self.dealias:
            keep[k > self.n / 3] = 0.0
        self._keep_state = np.ones_like(k)
        if self.n % 2 == 0:
            self._keep_state[-1] = 0.0
        #: -(i k / 2), with the modes dropped from the nonlinear term set to zero
        self._nl_factor = -0.5j * k * keep
        dt = self.t_final / self.n_steps
        self._dt = dt
        self._e = np.exp(-self.nu * k**2 * dt)
        self._e2 = np.exp(-self.nu * k**2 * dt / 2)

    # ------------------------------------------------------------------ interface
    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.n,)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.n,)

    def coordinates(self) -> dict[str, np.ndarray]:
        """Grid ``x`` (n,) = ``2 pi j / n``."""
        return {"x": 2 * math.pi * np.arange(self.n) / self.n}

    def options(self) -> dict[str, Any]:
        return {"n": self.n, "n_steps": self.n_steps, "nu": self.nu, "t_final": self.t_final,
                "dealias": self.dealias, "dtype": str(self.dtype).replace("torch.", ""),
                "n_modes": self.n_modes}

    def default_input_measure(self) -> Any:
        """Periodic KLE on [0, 2 pi) (SPEC §4): ``alpha = 3, tau = 1.4, sigma = 5``,
        ``n_modes`` sine/cosine frequencies, no constant mode."""
        from ..measures import FourierBasis1D, GaussianRandomField

        basis = FourierBasis1D(self.n, self.n_modes, period=2 * math.pi)
        return GaussianRandomField(basis, alpha=3.0, tau=1.4, sigma=5.0)

    # ------------------------------------------------------------------ solver
    def _evaluate(self, u: torch.Tensor) -> torch.Tensor:
        u0 = u.detach().cpu().double().numpy()
        out = self.solve(u0)
        return torch.from_numpy(out).to(self.dtype)

    def solve(self, u0: np.ndarray) -> np.ndarray:
        """Integrate ``u0`` (B, n) float64 to ``t_final``; returns float64 (B, n).

        Does not validate (use ``__call__`` for checked input); never modifies ``u0``.
        Rows are integrated in blocks of about ``_BLOCK_VALUES / n`` samples.
        """
        u0 = np.atleast_2d(u0)
        rows = max(1, _BLOCK_VALUES // self.n)
        return np.concatenate([self._solve_block(u0[i:i + rows])
                               for i in range(0, u0.shape[0], rows)])

    def _solve_block(self, u0: np.ndarray) -> np.ndarray:
        v = _rfft(u0) * self._keep_state
        with np.errstate(over="ignore", invalid="ignore"):   # divergence is reported below
            for _ in range(self.n_steps):
                v = self._rk4_step(v)
            out = _irfft(v, self.n)
        if not np.all(np.isfinite(out)):
            raise FloatingPointError(f"Burgers solver diverged with n_steps={self.n_steps}; "
                                     "increase n_steps (advective CFL)")
        return out

    def _nonlinear(self, v: np.ndarray) -> np.ndarray:
        """``N(u_hat) = -(i k / 2) FFT(u^2)`` for ``v`` (B, n//2+1)."""
        u = _irfft(v, self.n)
        return self._nl_factor * _rfft(u * u)

    def _rk4_step(self, v: np.ndarray) -> np.ndarray:
        """One Lawson integrating-factor RK4 step of size ``dt``."""
        dt, e, e2, f = self._dt, self._e, self._e2, self._nonlinear
        k1 = f(v)
        k2 = f(e2 * (v + 0.5 * dt * k1))
        k3 = f(e2 * v + 0.5 * dt * k2)
        k4 = f(e * v + dt * e2 * k3)
        return e * v + (dt / 6.0) * (e * k1 + 2.0 * e2 * (k2 + k3) + k4)
