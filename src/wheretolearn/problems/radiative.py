"""Steady radiative transport: scattering coefficient -> density (SPEC §4, paper SM F.5).

Equation on the unit square, velocity ``v = (cos theta, sin theta)`` on the unit circle::

    eps v . grad f(x, theta) + a(x) (f(x, theta) - <f>(x)) = 0 ,   <f> = angular average,
    f = f_in on the inflow boundary {x on the boundary, v . n(x) < 0}.

Discretisation (the scheme of the authors' code as SPEC §4 records it):

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

Solvers (option ``solver``), both for the same discrete equations:

* ``"gmres"`` (default): per angle the upwind transport operator is lower triangular in
  its sweep order (factored in one pass); the scattering is eliminated onto the angular
  average ``<f>`` and GMRES solves that ``n^2`` system (source iteration is its Richardson
  iteration): about 22 iterations at eps = 1/8 and 6 at eps = 8, 10-25 ms per sample at
  51 x 51 x 12. Falls back to the direct solver if GMRES stalls.
* ``"direct"``: SuperLU on the full ``(n^2 K) x (n^2 K)`` system (unknowns numbered in a
  nested-dissection order), about 0.3 s per sample; the reference.

Gradients w.r.t. ``a`` by the adjoint: ``A^T lambda = dJ/df`` (transposed sweeps + GMRES,
or SuperLU's transposed solve) and ``dJ/da_p = -sum_k lambda_pk (f_pk - <f>_p)`` over the
non-inflow rows at node p.

Output: ``rho = sum_k f_k dtheta`` (``= 2 pi <f>``), the quantity the SPEC names.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from .._validation import check_finite, check_positive_float, check_positive_int
from ._fd import LogNormalField, check_grid_size, dirichlet_field, grid_points, nested_dissection
from .base import Problem, register_problem

__all__ = ["RadiativeTransport", "paper_inflow", "isotropic_inflow"]


def paper_inflow(x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """SPEC §4 inflow: ``(1 + 0.5 sin(pi y)) max(cos theta, 0)`` on ``x = 0``, zero elsewhere."""
    return np.where(x == 0.0, (1.0 + 0.5 * np.sin(np.pi * y)) * np.maximum(np.cos(theta), 0.0), 0.0)


def isotropic_inflow(x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Inflow ``f_in = 1`` on every side and direction (exact solution ``f = 1``)."""
    return np.ones(np.broadcast(x, y, theta).shape)


_INFLOWS: dict[str, Callable[..., np.ndarray]] = {"paper": paper_inflow, "isotropic": isotropic_inflow}


def _geometry(n: int, K: int, eps: float, inflow: Callable[..., np.ndarray]) -> dict[str, Any]:
    """Node/angle classification and transport coefficients shared by both solvers.

    Arrays are (N, K) with ``N = n^2`` nodes in C order (first index = x): ``free`` (not an
    inflow pair), ``cx`` / ``cy`` (``eps |v_x| / h`` where the x / y upwind difference is
    used, else 0), ``up_x`` / ``up_y`` (upwind neighbour node), ``data`` (inflow values, 0 on
    free pairs), plus ``theta`` (K,).
    """
    h = 1.0 / (n - 1)
    theta = -math.pi + (np.arange(K) + 0.5) * 2.0 * math.pi / K
    c, s = np.cos(theta)[None, :], np.sin(theta)[None, :]
    I, J = (g.ravel()[:, None] for g in np.meshgrid(np.arange(n), np.arange(n), indexing="ij"))
    interior = (I > 0) & (I < n - 1) & (J > 0) & (J < n - 1)
    on_v, on_h = (I == 0) | (I == n - 1), (J == 0) | (J == n - 1)
    inflow_mask = (((I == 0) & (c > 0)) | ((I == n - 1) & (c < 0))
                   | ((J == 0) & (s > 0)) | ((J == n - 1) & (s < 0)))
    free = ~inflow_mask
    x, y = I * h + 0 * c, J * h + 0 * s
    data = np.zeros(free.shape)
    th = np.broadcast_to(theta[None, :], free.shape)
    data[inflow_mask] = inflow(x[inflow_mask], y[inflow_mask], th[inflow_mask])
    return {
        "theta": theta, "free": free, "data": data, "I": I, "J": J,
        "cx": np.where(free & (interior | on_v), eps * np.abs(c) / h, 0.0),
        "cy": np.where(free & (interior | on_h), eps * np.abs(s) / h, 0.0),
        # Upwind neighbours; only used where cx / cy > 0, and there they always exist.
        "up_x": np.clip(I - np.sign(c).astype(int), 0, n - 1) * n + J,
        "up_y": I * n + np.clip(J - np.sign(s).astype(int), 0, n - 1),
    }


def _csc_pattern(rows: np.ndarray, cols: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """CSC ``indices, indptr`` of the (duplicate-free) pattern and the permutation that puts
    entries listed in ``rows, cols`` order into CSC order."""
    pattern = sp.coo_matrix((np.arange(1, rows.size + 1, dtype=float), (rows, cols)),
                            shape=(size, size)).tocsc()
    return pattern.indices.copy(), pattern.indptr.copy(), pattern.data.astype(np.int64) - 1


class _DirectSystem:
    """The full ``(N K) x (N K)`` matrix, entries ``const + a[node] * coef``, factored by SuperLU.

    Unknown ``q = rank[p] K + k`` for node p and angle k, with ``rank`` the position of p in
    a nested-dissection ordering (so SuperLU can keep the natural order).
    """

    def __init__(self, geo: dict[str, Any]):
        free, cx, cy = geo["free"], geo["cx"], geo["cy"]
        N, K = free.shape
        self.K, self.free = K, free
        self.rank = np.empty(N, dtype=np.int64)
        self.rank[nested_dissection(int(round(math.sqrt(N))))] = np.arange(N)
        q = self.rank[:, None] * K + np.arange(K)[None, :]
        node = np.broadcast_to(np.arange(N)[:, None], (N, K))
        rows, cols, const, coef, nodes = [], [], [], [], []

        def add(mask, r, cc, k0, k1):
            rows.append(r[mask]); cols.append(cc[mask]); const.append(k0[mask])
            coef.append(k1[mask]); nodes.append(np.broadcast_to(node[:, :1], mask.shape)[mask])

        add(np.ones_like(free), q, q, np.where(free, cx + cy, 1.0), np.where(free, 1.0 - 1.0 / K, 0.0))
        add(cx > 0, q, self.rank[geo["up_x"]] * K + np.arange(K)[None, :], -cx, np.zeros((N, K)))
        add(cy > 0, q, self.rank[geo["up_y"]] * K + np.arange(K)[None, :], -cy, np.zeros((N, K)))
        # Angular coupling -a/K between (p, k) and (p, l), l != k, on non-inflow rows.
        k_idx, l_idx = np.nonzero(~np.eye(K, dtype=bool))
        fr = free[:, k_idx]
        add(fr, q[:, k_idx], q[:, l_idx], np.zeros(fr.shape), np.full(fr.shape, -1.0 / K))
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        self.size = N * K
        self.indices, self.indptr, perm = _csc_pattern(rows, cols, self.size)
        self.const = np.concatenate(const)[perm]
        self.coef = np.concatenate(coef)[perm]
        self.nodes = np.concatenate(nodes)[perm]
        self.rhs = self.to_unknowns(geo["data"])

    def to_unknowns(self, v: np.ndarray) -> np.ndarray:
        """Node-angle array (N, K) -> unknown vector (N K,) in solver numbering."""
        out = np.empty_like(v)
        out[self.rank] = v
        return out.ravel()

    def from_unknowns(self, x: np.ndarray) -> np.ndarray:
        """Unknown vector (N K,) -> node-angle array (N, K)."""
        return x.reshape(-1, self.K)[self.rank]

    def factor(self, a: np.ndarray) -> spla.SuperLU:
        """SuperLU factor of the matrix for nodal scattering ``a`` (N,)."""
        data = self.const + a[self.nodes] * self.coef
        A = sp.csc_matrix((data, self.indices, self.indptr), shape=(self.size, self.size))
        return spla.splu(A, permc_spec="NATURAL")

    def factors(self, a: np.ndarray) -> spla.SuperLU:
        """The factorisation :meth:`solve` and :meth:`adjoint` reuse for one field ``a``."""
        return self.factor(a)

    def solve(self, a: np.ndarray, source: np.ndarray | None = None, *,
              factors: spla.SuperLU | None = None) -> np.ndarray:
        """Angular flux ``f`` (N, K) for scattering ``a`` (N,) and an optional interior
        source ``S`` (N, K) on the right-hand side of the non-inflow rows (``factors``:
        :meth:`factors` of ``a``, computed here when None)."""
        rhs = self.rhs if source is None else self.rhs + self.to_unknowns(source * self.free)
        lu = self.factor(a) if factors is None else factors
        return self.from_unknowns(lu.solve(rhs))

    def adjoint(self, a: np.ndarray, g: np.ndarray, *,
                factors: spla.SuperLU | None = None) -> np.ndarray:
        """``lambda`` (N, K) with ``A^T lambda = g`` for ``g`` (N, K)."""
        lu = self.factor(a) if factors is None else factors
        return self.from_unknowns(lu.solve(self.to_unknowns(g), trans="T"))


class _SweepSystem:
    """Transport sweeps + GMRES on the angular average (Schur complement of the scattering).

    With ``T_k`` the upwind transport operator of angle k plus ``diag(a)`` on free rows
    (identity on inflow rows; lower triangular in the sweep order of its quadrant, so its
    SuperLU factor in natural order costs about one pass) and ``D_k = diag(a * free_k)``,
    the RTE is ``T_k f_k = D_k phi + d_k``, ``phi = (1/K) sum_k f_k``. Eliminating ``f_k``:

        (I - (1/K) sum_k T_k^{-1} D_k) phi = (1/K) sum_k T_k^{-1} d_k,

    solved by GMRES (source iteration is its Richardson iteration). The adjoint
    ``A^T lambda = g`` reduces the same way to ``(I - (1/K) sum_k D_k T_k^{-T}) mu =
    (1/K) sum_k D_k T_k^{-T} g_k``, ``lambda_k = T_k^{-T} (g_k + mu)``. If GMRES does not
    reach ``rtol`` the sample is re-solved with the direct solver.
    """

    rtol = 1e-11
    restart = 100
    maxiter = 20

    def __init__(self, geo: dict[str, Any]):
        free, cx, cy = geo["free"], geo["cx"], geo["cy"]
        N, K = free.shape
        self.N, self.K, self.free = N, K, free
        self._geo = geo
        self._direct_system: _DirectSystem | None = None
        self.last_iterations: deque[int] = deque(maxlen=1024)  # GMRES iterations, recent solves
        self.angles = []
        for k in range(K):
            # Sweep order: x-upwind first, then y-upwind; every upwind neighbour precedes.
            th = geo["theta"][k]
            order = np.lexsort((geo["J"][:, 0] * np.sign(np.sin(th)),
                                geo["I"][:, 0] * np.sign(np.cos(th))))
            pos = np.empty(N, dtype=np.int64)
            pos[order] = np.arange(N)
            mx, my = cx[:, k] > 0, cy[:, k] > 0
            rows = np.concatenate([pos, pos[mx], pos[my]])
            cols = np.concatenate([pos, pos[geo["up_x"][mx, k]], pos[geo["up_y"][my, k]]])
            const = np.concatenate([np.where(free[:, k], cx[:, k] + cy[:, k], 1.0),
                                    -cx[mx, k], -cy[my, k]])
            coef = np.concatenate([free[:, k].astype(float), np.zeros(mx.sum() + my.sum())])
            nodes = np.concatenate([np.arange(N), np.zeros(mx.sum() + my.sum(), dtype=np.int64)])
            indices, indptr, perm = _csc_pattern(rows, cols, N)
            self.angles.append({"order": order, "indices": indices, "indptr": indptr,
                                "const": const[perm], "coef": coef[perm], "nodes": nodes[perm],
                                "data": geo["data"][order, k], "free": free[order, k]})

    def _direct(self) -> _DirectSystem:
        """The full-system solver, built on first use (fallback when GMRES stalls)."""
        if self._direct_system is None:
            self._direct_system = _DirectSystem(self._geo)
        return self._direct_system

    def factors(self, a: np.ndarray) -> list[spla.SuperLU]:
        """The per-angle sweep factors of one field ``a`` (:meth:`solve` and :meth:`adjoint`
        reuse them: the autograd backward does not factor again)."""
        return self._factors(a)

    def _factors(self, a: np.ndarray) -> list[spla.SuperLU]:
        lus = []
        for ang in self.angles:
            data = ang["const"] + a[ang["nodes"]] * ang["coef"]
            T = sp.csc_matrix((data, ang["indices"], ang["indptr"]), shape=(self.N, self.N))
            # Lower triangular in sweep order: no pivoting needed (positive diagonal).
            lus.append(spla.splu(T, permc_spec="NATURAL", diag_pivot_thresh=0.0))
        return lus

    def _gmres(self, matvec: Callable[[np.ndarray], np.ndarray], rhs: np.ndarray):
        count = [0]

        def cb(_):
            count[0] += 1

        op = spla.LinearOperator((self.N, self.N), matvec=matvec, dtype=float)
        x, info = spla.gmres(op, rhs, rtol=self.rtol, atol=0.0, restart=self.restart,
                             maxiter=self.maxiter, callback=cb, callback_type="pr_norm")
        self.last_iterations.append(count[0])
        return x, info == 0

    def solve(self, a: np.ndarray, source: np.ndarray | None = None, *,
              factors: list[spla.SuperLU] | None = None) -> np.ndarray:
        """Angular flux ``f`` (N, K) for scattering ``a`` (N,) and an optional interior
        source ``S`` (N, K) on the right-hand side of the non-inflow rows (``factors``:
        :meth:`factors` of ``a``, computed here when None)."""
        lus = self._factors(a) if factors is None else factors
        angles = self.angles
        fixed = [ang["data"] if source is None else ang["data"] + source[ang["order"], k] * ang["free"]
                 for k, ang in enumerate(angles)]

        def transport(phi: np.ndarray, with_data: bool) -> np.ndarray:
            f = np.empty((self.N, self.K))
            for k, ang in enumerate(angles):
                src = a[ang["order"]] * phi[ang["order"]] * ang["free"]
                if with_data:
                    src = src + fixed[k]
                f[ang["order"], k] = lus[k].solve(src)
            return f

        rhs = transport(np.zeros(self.N), True).mean(axis=1)
        phi, ok = self._gmres(lambda v: v - transport(v, False).mean(axis=1), rhs)
        if not ok:
            return self._direct().solve(a, source)
        return transport(phi, True)

    def adjoint(self, a: np.ndarray, g: np.ndarray, *,
                factors: list[spla.SuperLU] | None = None) -> np.ndarray:
        """``lambda`` (N, K) with ``A^T lambda = g`` for ``g`` (N, K)."""
        lus = self._factors(a) if factors is None else factors

        def back(src: np.ndarray) -> np.ndarray:   # (N, K) -> T_k^{-T} src_k for every k
            out = np.empty((self.N, self.K))
            for k, ang in enumerate(self.angles):
                out[ang["order"], k] = lus[k].solve(np.ascontiguousarray(src[ang["order"], k]),
                                                    trans="T")
            return out

        w = a[:, None] * self.free / self.K
        rhs = (w * back(g)).sum(axis=1)
        mu, ok = self._gmres(lambda v: v - (w * back(np.repeat(v[:, None], self.K, 1))).sum(1), rhs)
        if not ok:
            return self._direct().adjoint(a, g)
        return back(g + mu[:, None])


class _RTESolve(torch.autograd.Function):
    """Scattering ``a`` (B, N) -> density ``rho`` (B, N); adjoint backward. Each field is
    factored once: the backward's adjoint solves reuse the forward's factors (kept only
    when a gradient is needed)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, system) -> torch.Tensor:
        a64 = a.detach().cpu().double().numpy()
        facs = [system.factors(a64[b]) for b in range(a64.shape[0])]     # matrices differ
        f = np.stack([system.solve(a64[b], factors=facs[b]) for b in range(a64.shape[0])])
        ctx.system, ctx.f = system, f
        ctx.factors = facs if ctx.needs_input_grad[0] else None
        ctx.save_for_backward(a)
        rho = f.sum(axis=2) * (2.0 * math.pi / f.shape[2])
        return torch.as_tensor(rho, dtype=a.dtype, device=a.device)

    @staticmethod
    def backward(ctx, grad_rho: torch.Tensor):
        (a,) = ctx.saved_tensors
        system = ctx.system
        a64 = a.detach().cpu().double().numpy()
        K = ctx.f.shape[2]
        g = grad_rho.detach().cpu().double().numpy() * (2.0 * math.pi / K)
        grad_a = np.empty_like(a64)
        for b in range(a64.shape[0]):
            lam = system.adjoint(a64[b], np.repeat(g[b][:, None], K, axis=1),
                                 factors=None if ctx.factors is None else ctx.factors[b])
            f = ctx.f[b]
            grad_a[b] = -(lam * (f - f.mean(axis=1, keepdims=True)) * system.free).sum(axis=1)
        return torch.as_tensor(grad_a, dtype=a.dtype, device=a.device), None


@register_problem("radiative")
class RadiativeTransport(Problem):
    """Scattering coefficient ``a`` -> density ``rho = sum_k f_k dtheta`` (SPEC §4, paper SM F.5).

    Parameters
    ----------
    n : int
        Nodes per side including the boundary (default 51, ``h = 0.02``).
    n_angles : int
        Number of velocity directions K (default 12); a multiple of 4, the condition for no
        ``theta_k`` to be parallel to a side.
    knudsen : float
        ``eps`` > 0; the paper uses 1/8 (default), 2 and 8.
    inflow : "paper" | "isotropic" | callable
        Boundary data ``f_in(x, y, theta)`` evaluated at inflow (node, direction) pairs
        (arrays in, array out). ``"paper"``: ``(1 + 0.5 sin(pi y)) max(cos theta, 0)`` on
        ``x = 0`` (its corners included), 0 elsewhere; ``"isotropic"``: 1 everywhere.
    solver : "gmres" | "direct"
        ``"gmres"`` (default): transport sweeps + GMRES on the angular average (relative
        residual 1e-11, falls back to the direct solver if it does not converge);
        ``"direct"``: SuperLU on the full system. Both solve the same discrete equations.

    Input ``a`` (B, n, n), positive and finite; output ``rho`` (B, n, n) in the input dtype.
    Differentiable w.r.t. torch inputs (adjoint method).
    """

    name = "radiative"
    differentiable = True

    def __init__(self, n: int = 51, *, n_angles: int = 12, knudsen: float = 1.0 / 8.0,
                 inflow: Any = "paper", solver: str = "gmres"):
        self.n = check_grid_size(n)
        self.n_angles = check_positive_int(n_angles, "n_angles")
        if self.n_angles % 4:
            raise ValueError(f"n_angles must be a multiple of 4 (otherwise some theta_k is "
                             f"parallel to a side), got {n_angles}")
        self.knudsen = check_positive_float(knudsen, "knudsen")
        if callable(inflow):
            self._inflow_name, fn = "custom", inflow
        elif isinstance(inflow, str) and inflow in _INFLOWS:
            self._inflow_name, fn = inflow, _INFLOWS[inflow]
        else:
            raise ValueError(f"inflow must be 'paper', 'isotropic' or a callable f(x, y, theta), "
                             f"got {inflow!r}")
        if solver not in ("gmres", "direct"):
            raise ValueError(f"solver must be 'gmres' or 'direct', got {solver!r}")
        self.solver = solver
        geo = _geometry(self.n, self.n_angles, self.knudsen, fn)
        self._theta = geo["theta"]
        self._system = _DirectSystem(geo) if solver == "direct" else _SweepSystem(geo)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.n, self.n)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.n, self.n)

    @property
    def angles(self) -> np.ndarray:
        """Velocity angles ``theta_k`` (K,)."""
        return self._theta.copy()

    def coordinates(self) -> dict[str, np.ndarray]:
        """``x``, ``y`` (n,), ``points`` (n*n, 2) in C order, and ``theta`` (K,)."""
        return {**grid_points(self.n), "theta": self.angles}

    def options(self) -> dict[str, Any]:
        return {"n": self.n, "n_angles": self.n_angles, "knudsen": self.knudsen,
                "inflow": self._inflow_name, "solver": self.solver}

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

    def solve_distribution(self, a: Any, source: Any = None) -> np.ndarray:
        """Angular flux ``f`` (B, n, n, K), float64, for scattering ``a`` (B, n, n) (no gradient).

        ``source`` (n, n, K), optional: adds ``S`` to the right-hand side,
        ``eps v . grad f + a (f - <f>) = S`` (for manufactured-solution checks); the inflow
        data stay those of the ``inflow`` option.
        """
        t = torch.as_tensor(np.asarray(a, dtype=np.float64)) if not isinstance(a, torch.Tensor) \
            else a.detach().double()
        self.check_input(t)
        src = None
        if source is not None:
            src = np.array(source, dtype=np.float64)
            if src.shape != (self.n, self.n, self.n_angles):
                raise ValueError(f"source must have shape ({self.n}, {self.n}, {self.n_angles}), "
                                 f"got {src.shape}")
            check_finite(src, "source")
            src = src.reshape(-1, self.n_angles)
        a64 = t.reshape(t.shape[0], -1).numpy()
        f = np.stack([self._system.solve(a64[b], src) for b in range(a64.shape[0])])
        return f.reshape(t.shape[0], self.n, self.n, self.n_angles)
