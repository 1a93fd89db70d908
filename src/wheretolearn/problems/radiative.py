"""Steady radiative transport: scattering coefficient -> density (SPEC §4, paper SM F.5).

Equation on the unit square, velocity ``v = (cos theta, sin theta)`` on the unit circle::

    eps v . grad f(x, theta) + a(x) (f(x, theta) - <f>(x)) = 0 ,   <f> = angular average,
    f = f_in on the inflow boundary {x on the boundary, v . n(x) < 0}.

Discretisation (the authors' scheme, assembled as one sparse matrix):

* ``n x n`` nodes including the boundary (default 51, ``h = 0.02``), ``K`` angles
  ``theta_k = -pi + (k + 1/2) 2 pi / K`` (default 12: ``-pi + (k + 1/2) pi/6``); none is
  parallel to an axis, so every boundary direction is strictly inflow or outflow.
* ``<f>_p = (1/K) sum_k f_pk`` (equal weights ``dtheta = 2 pi / K``).
* Interior nodes: first-order upwind differences in x and y.
* Inflow boundary pairs (node, direction): ``f = f_in``. A corner takes the inflow data
  whenever the direction enters through either adjacent side.
* Outflow boundary pairs: the transport term keeps only the difference along the inward
  normal (its upwind neighbour is the adjacent interior-side node): ``eps |v . n| (f_p -
  f_{p - h n}) / h + a (f - <f>) = 0``; at outflow corners both normal differences.

Every row has non-negative diagonal and non-positive off-diagonal entries with zero row
sum (inflow rows: identity), so the matrix is an M-matrix: the discrete solution obeys
``min f_in <= f <= max f_in`` (tested).

Solver: SuperLU on the full ``(n^2 K) x (n^2 K)`` system per sample (pattern built once,
entries for a whole batch in one vectorised expression). Gradients w.r.t. ``a`` by the
adjoint: ``A^T lambda = dJ/df`` (SuperLU transposed solve, factor recomputed in backward)
and ``dJ/da_p = -sum_k lambda_pk (f_pk - <f>_p)`` over the non-inflow rows at node p.

Output: ``rho = sum_k f_k dtheta`` (``= 2 pi <f>``), the quantity the SPEC names.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from .._validation import check_positive_float, check_positive_int
from ._fd import LogNormalField, check_grid_size, dirichlet_field, grid_points, nested_dissection
from .base import Problem, register_problem

__all__ = ["RadiativeTransport", "paper_inflow", "isotropic_inflow"]

# Unknowns are numbered in nested-dissection order, so SuperLU keeps it (fill ~30 % below COLAMD).
_SPLU_OPTIONS = {"permc_spec": "NATURAL"}


def paper_inflow(x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """SPEC §4 inflow: ``(1 + 0.5 sin(pi y)) max(cos theta, 0)`` on ``x = 0``, zero elsewhere."""
    return np.where(x == 0.0, (1.0 + 0.5 * np.sin(np.pi * y)) * np.maximum(np.cos(theta), 0.0), 0.0)


def isotropic_inflow(x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Inflow ``f_in = 1`` on every side and direction (exact solution ``f = 1``)."""
    return np.ones(np.broadcast(x, y, theta).shape)


_INFLOWS: dict[str, Callable[..., np.ndarray]] = {"paper": paper_inflow, "isotropic": isotropic_inflow}


class _System:
    """Pattern of the RTE matrix, entries as ``const + a[node] * coef``, and the inflow right-hand side.

    Unknown ``q = rank[p] K + k`` for node ``p = i n + j`` (C order, first index = x) and
    angle k, with ``rank`` the position of p in a nested-dissection ordering.
    """

    def __init__(self, n: int, n_angles: int, eps: float, inflow: Callable[..., np.ndarray]):
        self.n, self.K = n, n_angles
        h = 1.0 / (n - 1)
        K = n_angles
        theta = -math.pi + (np.arange(K) + 0.5) * 2.0 * math.pi / K
        self.theta = theta
        c, s = np.cos(theta)[None, :], np.sin(theta)[None, :]
        N = n * n
        I, J = (g.ravel()[:, None] for g in np.meshgrid(np.arange(n), np.arange(n), indexing="ij"))
        interior = (I > 0) & (I < n - 1) & (J > 0) & (J < n - 1)
        on_v, on_h = (I == 0) | (I == n - 1), (J == 0) | (J == n - 1)
        inflow_mask = (((I == 0) & (c > 0)) | ((I == n - 1) & (c < 0))
                       | ((J == 0) & (s > 0)) | ((J == n - 1) & (s < 0)))      # (N, K)
        self.free = ~inflow_mask
        self.rank = np.empty(N, dtype=np.int64)
        self.rank[nested_dissection(n)] = np.arange(N)
        q = self.rank[:, None] * K + np.arange(K)[None, :]                      # (N, K)
        node = np.broadcast_to(np.arange(N)[:, None], (N, K))
        cx = np.where(self.free & (interior | on_v), eps * np.abs(c) / h, 0.0)  # (N, K)
        cy = np.where(self.free & (interior | on_h), eps * np.abs(s) / h, 0.0)
        # Upwind neighbours (only used where cx / cy > 0, where they always exist).
        up_x = np.clip(I - np.sign(c).astype(int), 0, n - 1) * n + J
        up_y = I * n + np.clip(J - np.sign(s).astype(int), 0, n - 1)
        rows, cols, const, coef, nodes = [], [], [], [], []

        def add(mask, r, cc, k0, k1):
            rows.append(r[mask]); cols.append(cc[mask]); const.append(k0[mask])
            coef.append(np.broadcast_to(k1, mask.shape)[mask]); nodes.append(node[mask])

        free = self.free
        add(np.ones_like(free), q, q, np.where(free, cx + cy, 1.0),
            np.where(free, 1.0 - 1.0 / K, 0.0))
        add(cx > 0, q, self.rank[up_x] * K + np.arange(K)[None, :], -cx, np.zeros((N, K)))
        add(cy > 0, q, self.rank[up_y] * K + np.arange(K)[None, :], -cy, np.zeros((N, K)))
        # Angular coupling -a/K between (p, k) and (p, l), l != k, on non-inflow rows.
        k_idx, l_idx = np.nonzero(~np.eye(K, dtype=bool))
        fr = free[:, k_idx]                                                      # (N, K(K-1))
        qa, qb = q[:, k_idx], q[:, l_idx]
        rows.append(qa[fr]); cols.append(qb[fr]); const.append(np.zeros(fr.sum()))
        coef.append(np.full(fr.sum(), -1.0 / K)); nodes.append(np.broadcast_to(
            np.arange(N)[:, None], fr.shape)[fr])
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        const, coef, nodes = np.concatenate(const), np.concatenate(coef), np.concatenate(nodes)
        size = N * K
        pattern = sp.coo_matrix((np.arange(1, rows.size + 1, dtype=float), (rows, cols)),
                                shape=(size, size)).tocsc()
        perm = pattern.data.astype(np.int64) - 1
        self.const, self.coef, self.nodes = const[perm], coef[perm], nodes[perm]
        self.indices, self.indptr, self.size = pattern.indices.copy(), pattern.indptr.copy(), size
        x = I * h + 0 * c
        y = J * h + 0 * s
        th = np.broadcast_to(theta[None, :], (N, K))
        rhs = np.zeros((N, K))
        rhs[inflow_mask] = inflow(x[inflow_mask], y[inflow_mask], th[inflow_mask])
        self.rhs = self.to_unknowns(rhs)

    def to_unknowns(self, v: np.ndarray) -> np.ndarray:
        """Node-angle array (N, K) -> unknown vector (N K,) in solver numbering."""
        out = np.empty_like(v)
        out[self.rank] = v
        return out.ravel()

    def from_unknowns(self, x: np.ndarray) -> np.ndarray:
        """Unknown vector (N K,) -> node-angle array (N, K)."""
        return x.reshape(-1, self.K)[self.rank]

    def factor(self, a: np.ndarray) -> spla.SuperLU:
        """SuperLU factor of the matrix for nodal scattering ``a`` (n^2,)."""
        data = self.const + a[self.nodes] * self.coef
        A = sp.csc_matrix((data, self.indices, self.indptr), shape=(self.size, self.size))
        return spla.splu(A, **_SPLU_OPTIONS)

    def solve(self, a: np.ndarray) -> np.ndarray:
        """Angular fluxes ``f`` (B, n^2, K) for scattering ``a`` (B, n^2)."""
        out = np.empty((a.shape[0], self.n * self.n, self.K))
        for b in range(a.shape[0]):  # one factorisation per sample: matrices differ
            out[b] = self.from_unknowns(self.factor(a[b]).solve(self.rhs))
        return out


class _RTESolve(torch.autograd.Function):
    """Scattering ``a`` (B, n^2) -> density ``rho`` (B, n^2); adjoint backward."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, system: _System) -> torch.Tensor:
        a64 = a.detach().cpu().double().numpy()
        f = system.solve(a64)
        ctx.system, ctx.f = system, f
        ctx.save_for_backward(a)
        rho = f.sum(axis=2) * (2.0 * math.pi / system.K)
        return torch.as_tensor(rho, dtype=a.dtype, device=a.device)

    @staticmethod
    def backward(ctx, grad_rho: torch.Tensor):
        (a,) = ctx.saved_tensors
        system: _System = ctx.system
        a64 = a.detach().cpu().double().numpy()
        g = grad_rho.detach().cpu().double().numpy() * (2.0 * math.pi / system.K)
        grad_a = np.empty_like(a64)
        for b in range(a64.shape[0]):
            rhs = system.to_unknowns(np.repeat(g[b][:, None], system.K, axis=1))
            lam = system.from_unknowns(system.factor(a64[b]).solve(rhs, trans="T"))
            f = ctx.f[b]
            dev = (f - f.mean(axis=1, keepdims=True)) * system.free
            grad_a[b] = -(lam * dev).sum(axis=1)
        return torch.as_tensor(grad_a, dtype=a.dtype, device=a.device), None


@register_problem("radiative")
class RadiativeTransport(Problem):
    """Scattering coefficient ``a`` -> density ``rho = sum_k f_k dtheta`` (SPEC §4, paper SM F.5).

    Parameters
    ----------
    n : int
        Nodes per side including the boundary (default 51, ``h = 0.02``).
    n_angles : int
        Number of velocity directions K (default 12); must be even and >= 4 so that no
        direction is parallel to a side.
    knudsen : float
        ``eps`` > 0; the paper uses 1/8 (default), 2 and 8.
    inflow : "paper" | "isotropic" | callable
        Boundary data ``f_in(x, y, theta)`` evaluated at inflow (node, direction) pairs
        (arrays in, array out). ``"paper"``: ``(1 + 0.5 sin(pi y)) max(cos theta, 0)`` on
        ``x = 0`` (its corners included), 0 elsewhere; ``"isotropic"``: 1 everywhere.

    Input ``a`` (B, n, n), positive and finite; output ``rho`` (B, n, n) in the input dtype.
    Differentiable w.r.t. torch inputs (adjoint method).
    """

    name = "radiative"
    differentiable = True

    def __init__(self, n: int = 51, *, n_angles: int = 12, knudsen: float = 1.0 / 8.0,
                 inflow: Any = "paper"):
        self.n = check_grid_size(n)
        self.n_angles = check_positive_int(n_angles, "n_angles")
        if self.n_angles < 4 or self.n_angles % 2:
            raise ValueError(f"n_angles must be an even integer >= 4 (no direction parallel to a "
                             f"side), got {n_angles}")
        self.knudsen = check_positive_float(knudsen, "knudsen")
        if callable(inflow):
            self._inflow_name, fn = "custom", inflow
        elif isinstance(inflow, str) and inflow in _INFLOWS:
            self._inflow_name, fn = inflow, _INFLOWS[inflow]
        else:
            raise ValueError(f"inflow must be 'paper', 'isotropic' or a callable f(x, y, theta), "
                             f"got {inflow!r}")
        self._system = _System(self.n, self.n_angles, self.knudsen, fn)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.n, self.n)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.n, self.n)

    @property
    def angles(self) -> np.ndarray:
        """Velocity angles ``theta_k`` (K,)."""
        return self._system.theta.copy()

    def coordinates(self) -> dict[str, np.ndarray]:
        """``x``, ``y`` (n,), ``points`` (n*n, 2) in C order, and ``theta`` (K,)."""
        return {**grid_points(self.n), "theta": self.angles}

    def options(self) -> dict[str, Any]:
        return {"n": self.n, "n_angles": self.n_angles, "knudsen": self.knudsen,
                "inflow": self._inflow_name}

    def default_input_measure(self) -> LogNormalField:
        """``a = exp(v)``, ``v`` a Dirichlet sine KLE with alpha = 2, tau = 1, sigma = 1 and
        20 x 20 modes (fewer on grids below 22), the paper code's particle basis (SPEC §4)."""
        return LogNormalField(dirichlet_field(self.n, alpha=2.0, tau=1.0, sigma=1.0,
                                              n_modes=min(self.n - 2, 20)))

    def check_input(self, u: torch.Tensor) -> None:
        """Shape and finiteness (base class), plus ``a > 0`` everywhere."""
        super().check_input(u)
        if not bool((u.detach() > 0).all()):
            raise ValueError(f"scattering coefficient a must be positive everywhere, got minimum "
                             f"{float(u.detach().min()):.3g}")

    def _evaluate(self, u: torch.Tensor) -> torch.Tensor:
        B = u.shape[0]
        rho = _RTESolve.apply(u.reshape(B, -1), self._system)
        return rho.reshape(B, self.n, self.n)

    def solve_distribution(self, a: Any) -> np.ndarray:
        """Angular flux ``f`` (B, n, n, K) float64 for scattering ``a`` (B, n, n) (no gradient)."""
        t = torch.as_tensor(np.asarray(a, dtype=np.float64)) if not isinstance(a, torch.Tensor) \
            else a.detach().double()
        self.check_input(t)
        f = self._system.solve(t.reshape(t.shape[0], -1).numpy())
        return f.reshape(t.shape[0], self.n, self.n, self.n_angles)
