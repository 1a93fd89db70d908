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
Batched: ``rfft`` over the last axis of a ``(B, n)`` array.

Two implementations of the same scheme (same tables, same operation order):

* :meth:`Burgers.solve` -- numpy / ``scipy.fft``, the labeller (no gradients);
* :meth:`Burgers.solve_torch` -- ``torch.fft``, differentiable: gradients flow from
  ``u(., t_final)`` back to ``u0`` (and through a reparametrised sample
  ``u0 = mean + Phi (sqrt(lambda(alpha, tau, sigma)) * xi)`` to the parameters of the input
  measure). Reverse mode is the scheme's exact discrete adjoint, written out by hand
  (not taped by autograd): the forward pass keeps the state every ``checkpoint_every``
  steps, the backward pass recomputes one segment at a time, so memory stays
  ``O(B n (n_steps / checkpoint_every + checkpoint_every))`` and a backward pass costs
  about two forward solves. Works on any device (float64 by default).

``__call__`` on a torch tensor that requires grad (or lives on a GPU) takes the torch path,
so ``differentiable = True``; everything else goes through numpy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.fft
import torch

from .._validation import as_tensor, check_positive_float, check_positive_int, resolve_dtype
from .base import Problem, register_problem

__all__ = ["Burgers"]


#: Rows per block in :meth:`Burgers.solve` ~ this many grid values, so the RK4 stages of a
#: block stay in cache (a whole (1000, 1024) batch at once was ~3x slower per sample).
_BLOCK_VALUES = 2**15
#: Rows per block in :meth:`Burgers.solve_torch` ~ this many grid values (torch pays a larger
#: fixed cost per operation than numpy, so its blocks are larger).
_TORCH_BLOCK_VALUES = 2**17


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
    differentiable = True

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
        self._torch_tables: dict[tuple, dict[str, torch.Tensor]] = {}

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
        if u.device.type != "cpu" or (u.requires_grad and torch.is_grad_enabled()):
            return self.solve_torch(u).to(self.dtype)
        u0 = u.detach().double().numpy()
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

    # ------------------------------------------------------------------ torch solver
    def solve_torch(self, u0: torch.Tensor, *, dtype: Any = "float64",
                    block_rows: int | None = None,
                    checkpoint_every: int | None = None) -> torch.Tensor:
        """Differentiable IF-RK4 solve through ``torch.fft``: ``u0`` (B, n) -> ``u(., t_final)`` (B, n).

        The same scheme, tables and operation order as :meth:`solve` (they agree to ~1e-14
        in float64), written with ``torch.fft.rfft`` / ``irfft``. Reverse mode is the exact
        discrete adjoint of the scheme (the gradient of the computed solution, not of the
        PDE), hand-written in :class:`_IFRK4Adjoint`: with ``F = rfft``, ``I = irfft`` and
        the nonlinear term ``f(w) = c * F(I(w)^2)``, ``c = -(i k / 2)``,

            Df(w)^T g = I^T( 2 I(w) * F^T(conj(c) g) ),
            F^T g = n I(g * h),  I^T a = d * F(a) / n,

        (``h`` = 1 at k = 0 and at Nyquist, 1/2 elsewhere; ``d = 1 / h``; real inner product
        ``Re sum conj(a) b`` on the half spectrum), chained backwards through the four RK4
        stages of each step. The forward pass keeps the state every ``checkpoint_every``
        steps; the backward pass recomputes one segment of one block at a time and keeps its
        four stage fields per step, so memory is about
        ``B n n_steps / checkpoint_every + 4 block_rows n checkpoint_every`` values and a
        backward pass costs about two forward solves. First-order only (no double backward,
        no forward-mode ``jvp``).

        Parameters
        ----------
        u0 : (B, n) or (n,) tensor
            Initial conditions on the grid ``2 pi j / n``; any device; may carry a graph
            (e.g. ``measure.from_coefficients(xi)`` with parameters that require grad).
            Never modified.
        dtype : "float64" (default) or "float32"
            Working and returned dtype (``u0`` is cast, differentiably).
        block_rows : int, optional
            Rows integrated together (default about ``2**17 / n``): larger blocks pay less
            per-operation overhead, smaller ones hold less memory.
        checkpoint_every : int, optional
            Steps per recomputed segment in reverse mode (default ``ceil(sqrt(n_steps))``).
            Ignored when no gradient is recorded.

        Returns
        -------
        (B, n) tensor of ``dtype`` on ``u0``'s device (``(n,)`` for a 1-D ``u0``).

        Raises
        ------
        ValueError
            ``u0`` not of shape (B, n) / (n,) or not finite.
        FloatingPointError
            The integration blew up (too few ``n_steps`` for the advective CFL).
        """
        if not isinstance(u0, torch.Tensor):
            u0 = as_tensor(u0, "u0")
        squeeze = u0.ndim == 1
        x = u0[None] if squeeze else u0
        if x.ndim != 2 or x.shape[1] != self.n:
            raise ValueError(f"u0 must have shape (B, {self.n}) or ({self.n},), "
                             f"got {tuple(u0.shape)}")
        if not bool(torch.isfinite(x.detach()).all()):
            raise ValueError("u0 must be finite (contains NaN or inf)")
        dt = resolve_dtype(dtype)
        rows = (max(1, _TORCH_BLOCK_VALUES // self.n) if block_rows is None
                else check_positive_int(block_rows, "block_rows"))
        seg = (max(1, math.ceil(math.sqrt(self.n_steps))) if checkpoint_every is None
               else check_positive_int(checkpoint_every, "checkpoint_every"))
        x = x.to(dt)
        if torch.is_grad_enabled() and x.requires_grad:
            blocks = [_IFRK4Adjoint.apply(x[i:i + rows], self, seg)
                      for i in range(0, x.shape[0], rows)]
        else:
            with torch.no_grad():
                blocks = [self._integrate_torch(x[i:i + rows]) for i in range(0, x.shape[0], rows)]
        out = torch.cat(blocks)
        if not bool(torch.isfinite(out.detach()).all()):
            raise FloatingPointError(f"Burgers solver diverged with n_steps={self.n_steps}; "
                                     "increase n_steps (advective CFL)")
        return out[0] if squeeze else out

    def _tables(self, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        """The solver's tables as tensors of ``dtype`` on ``device`` (cached)."""
        key = (dtype, str(device))
        if key not in self._torch_tables:
            cdt = torch.complex128 if dtype == torch.float64 else torch.complex64
            m = self.n // 2 + 1
            edge = torch.full((m,), 0.5, dtype=dtype, device=device)   # F^T weights h
            edge[0] = 1.0
            if self.n % 2 == 0:
                edge[-1] = 1.0

            def t(a: np.ndarray, d: torch.dtype = dtype) -> torch.Tensor:
                return torch.as_tensor(a, dtype=d, device=device)

            self._torch_tables[key] = {
                "keep": t(self._keep_state), "nl": t(self._nl_factor, cdt),
                "nl_conj": t(np.conj(self._nl_factor), cdt), "e": t(self._e), "e2": t(self._e2),
                "h": edge, "d": 1.0 / edge}
        return self._torch_tables[key]

    def _f(self, w: torch.Tensor, tab: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f(w), I(w))``: the nonlinear term and the grid values it squares."""
        u = torch.fft.irfft(w, n=self.n, dim=-1)
        return tab["nl"] * torch.fft.rfft(u * u, dim=-1), u

    def _f_adjoint(self, u: torch.Tensor, g: torch.Tensor,
                   tab: dict[str, torch.Tensor]) -> torch.Tensor:
        """``Df(w)^T g = I^T(2 u F^T(conj(c) g))`` with ``u = I(w)`` (the factors n cancel)."""
        a = torch.fft.irfft(tab["nl_conj"] * g * tab["h"], n=self.n, dim=-1)
        return tab["d"] * torch.fft.rfft(2.0 * u * a, dim=-1)

    def _step_torch(self, v: torch.Tensor, tab: dict[str, torch.Tensor],
                    stages: list | None = None) -> torch.Tensor:
        """One Lawson IF-RK4 step of ``v`` (B, n//2+1) complex, as :meth:`_rk4_step`.

        ``stages``: if a list, the grid values ``I(a_1..a_4)`` of the four stages are
        appended to it (what :meth:`_step_adjoint` needs)."""
        dt, e, e2 = self._dt, tab["e"], tab["e2"]
        k1, u1 = self._f(v, tab)
        k2, u2 = self._f(e2 * (v + 0.5 * dt * k1), tab)
        k3, u3 = self._f(e2 * v + 0.5 * dt * k2, tab)
        k4, u4 = self._f(e * v + dt * e2 * k3, tab)
        if stages is not None:
            stages.append((u1, u2, u3, u4))
        return e * v + (dt / 6.0) * (e * k1 + 2.0 * e2 * (k2 + k3) + k4)

    def _step_adjoint(self, stages: tuple[torch.Tensor, ...], g: torch.Tensor,
                      tab: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cotangent of the state before a step from the cotangent ``g`` after it.

        ``v' = e v + dt/6 (e k1 + 2 e2 (k2 + k3) + k4)`` with ``k_i = f(a_i)``,
        ``a1 = v, a2 = e2 (v + dt/2 k1), a3 = e2 v + dt/2 k2, a4 = e v + dt e2 k3``, run
        backwards; ``stages`` = ``I(a_1..a_4)`` recorded by :meth:`_step_torch`.
        """
        dt, e, e2 = self._dt, tab["e"], tab["e2"]
        u1, u2, u3, u4 = stages
        gk23 = (dt / 3.0) * e2 * g
        ga4 = self._f_adjoint(u4, (dt / 6.0) * g, tab)
        ga3 = self._f_adjoint(u3, gk23 + dt * e2 * ga4, tab)
        ga2 = self._f_adjoint(u2, gk23 + 0.5 * dt * ga3, tab)
        ga1 = self._f_adjoint(u1, (dt / 6.0) * e * g + 0.5 * dt * e2 * ga2, tab)
        return e * (g + ga4) + e2 * (ga3 + ga2) + ga1

    def _integrate_torch(self, u0: torch.Tensor) -> torch.Tensor:
        """Plain torch integration of a block (B, n) -> (B, n); autograd-traceable."""
        tab = self._tables(u0.dtype, u0.device)
        v = torch.fft.rfft(u0, dim=-1) * tab["keep"]
        for _ in range(self.n_steps):
            v = self._step_torch(v, tab)
        return torch.fft.irfft(v, n=self.n, dim=-1)


class _IFRK4Adjoint(torch.autograd.Function):
    """``u0 (b, n) -> u(t_final) (b, n)`` with the hand-written discrete adjoint as backward.

    Forward keeps ``rfft`` states at the start of each segment of ``seg`` steps; backward
    recomputes a segment, recording its stage values, then applies
    :meth:`Burgers._step_adjoint` in reverse.
    """

    @staticmethod
    def forward(ctx, u0: torch.Tensor, solver: Burgers, seg: int) -> torch.Tensor:
        tab = solver._tables(u0.dtype, u0.device)
        v = torch.fft.rfft(u0, dim=-1) * tab["keep"]
        starts = []
        for done in range(0, solver.n_steps, seg):
            starts.append(v)
            for _ in range(min(seg, solver.n_steps - done)):
                v = solver._step_torch(v, tab)
        ctx.solver, ctx.seg, ctx.starts = solver, seg, starts
        return torch.fft.irfft(v, n=solver.n, dim=-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        solver, seg, starts = ctx.solver, ctx.seg, ctx.starts
        tab = solver._tables(grad_out.dtype, grad_out.device)
        n = solver.n
        g = tab["d"] * torch.fft.rfft(grad_out, dim=-1) / n          # I^T
        for s in range(len(starts) - 1, -1, -1):
            v, stages = starts[s], []
            for _ in range(min(seg, solver.n_steps - s * seg)):
                v = solver._step_torch(v, tab, stages)
            while stages:
                g = solver._step_adjoint(stages.pop(), g, tab)
        ctx.starts = None
        grad_u0 = n * torch.fft.irfft(tab["keep"] * g * tab["h"], n=n, dim=-1)   # F^T
        return grad_u0, None, None
