"""Darcy flow: log-conductivity -> pressure, ``-div(a grad u) = 1``, ``u = 0`` on the boundary
(SPEC §4, paper SM F.4).

Discretisation: ``n x n`` nodes including the boundary (default 64, ``h = 1/63``), unknowns
at the ``(n-2)^2`` interior nodes, 5-point finite differences with harmonic-mean face
conductivities::

    (1/h^2) sum_{q ~ p} a_pq (u_p - u_q) = f_p ,   u_q = 0 for boundary nodes q.

Batching: the sparsity pattern is built once; the matrix entries of a whole batch are one
sparse-dense product ``faces (B, n_faces) -> data (B, nnz)``; each sample is then factored
with SuperLU (``MMD_AT_PLUS_A`` ordering, symmetric mode) and solved. The matrices differ
per sample, so one factorisation per sample is unavoidable for a direct solver (about
4 ms at n = 64).

Gradients: :class:`_DarcySolve` is a ``torch.autograd.Function`` whose backward uses the
adjoint. For ``J(u)`` with ``w = dJ/du`` the adjoint solves ``A lambda = w`` (``A`` is
symmetric) and ``dJ/da_face = -(u_p - u_q)(lambda_p - lambda_q) / h^2`` for the face
between ``p`` and ``q`` (boundary values 0). The chain to the nodal ``log a`` (harmonic
mean, ``exp``) is left to torch autograd. The forward keeps each sample's LU factor for the
backward when the input requires grad (one factorisation per sample for forward + adjoint;
memory: B factors, about 1-2 MB each at n = 64).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from .._validation import as_tensor, check_finite
from ..measures.fields import GaussianRandomField
from ._fd import check_grid_size, dirichlet_field, grid_points, harmonic_faces
from .base import Problem, register_problem

__all__ = ["Darcy"]

_SPLU_OPTIONS = {"permc_spec": "MMD_AT_PLUS_A", "options": {"SymmetricMode": True}}


class _Operator:
    """Sparsity pattern of the interior Dirichlet operator and the map faces -> matrix entries.

    Faces are ordered ``[ax.ravel(), ay.ravel()]`` with ``ax`` (n-1, n) and ``ay`` (n, n-1)
    as returned by :func:`harmonic_faces`.
    """

    def __init__(self, n: int):
        self.n = n
        self.h = 1.0 / (n - 1)
        m = n - 2
        self.m = m
        n_ax = (n - 1) * n
        ax_id = np.arange(n_ax).reshape(n - 1, n)
        ay_id = n_ax + np.arange(n * (n - 1)).reshape(n, n - 1)
        self.n_faces = n_ax + n * (n - 1)
        I, J = np.meshgrid(np.arange(1, n - 1), np.arange(1, n - 1), indexing="ij")
        r = ((I - 1) * m + (J - 1)).ravel()
        I, J = I.ravel(), J.ravel()
        # Each face touching interior node p adds a/h^2 to A_pp; each interior-interior face
        # also adds -a/h^2 to A_pq and A_qp.
        diag_faces = [ax_id[I - 1, J], ax_id[I, J], ay_id[I, J - 1], ay_id[I, J]]
        ent_rows, ent_cols, f_ent, f_face, f_val = [r], [r], [], [], []
        for fa in diag_faces:
            f_ent.append(r)
            f_face.append(fa)
            f_val.append(np.ones(r.size))
        n_ent = r.size
        for di, dj, fa in [(1, 0, ax_id[I, J]), (-1, 0, ax_id[I - 1, J]),
                           (0, 1, ay_id[I, J]), (0, -1, ay_id[I, J - 1])]:
            inside = (I + di >= 1) & (I + di <= n - 2) & (J + dj >= 1) & (J + dj <= n - 2)
            rows = r[inside]
            cols = ((I[inside] + di - 1) * m + (J[inside] + dj - 1))
            ids = n_ent + np.arange(rows.size)
            n_ent += rows.size
            ent_rows.append(rows)
            ent_cols.append(cols)
            f_ent.append(ids)
            f_face.append(fa[inside])
            f_val.append(-np.ones(rows.size))
        rows, cols = np.concatenate(ent_rows), np.concatenate(ent_cols)
        scale = 1.0 / self.h ** 2
        # F (n_faces, nnz): data = faces @ F, in CSC order of the assembled matrix.
        F = sp.coo_matrix((np.concatenate(f_val) * scale,
                           (np.concatenate(f_face), np.concatenate(f_ent))),
                          shape=(self.n_faces, n_ent)).tocsr()
        pattern = sp.coo_matrix((np.arange(1, n_ent + 1, dtype=float), (rows, cols)),
                                shape=(m * m, m * m)).tocsc()
        perm = pattern.data.astype(np.int64) - 1
        self.F = F[:, perm].tocsr()
        self.indices = pattern.indices.copy()
        self.indptr = pattern.indptr.copy()

    def entries(self, faces: np.ndarray) -> np.ndarray:
        """Matrix entries in CSC order for a batch of faces (B, n_faces) -> (B, nnz)."""
        return np.ascontiguousarray((self.F.T @ faces.T).T)

    def matrix(self, data: np.ndarray) -> sp.csc_matrix:
        """One (m^2, m^2) CSC matrix from its entries (nnz,)."""
        k = self.m * self.m
        return sp.csc_matrix((data, self.indices, self.indptr), shape=(k, k))

    def factor(self, faces: np.ndarray) -> list:
        """SuperLU factors of ``A(faces_b)`` for each sample (B of them)."""
        data = self.entries(faces)
        return [spla.splu(self.matrix(data[b]), **_SPLU_OPTIONS) for b in range(faces.shape[0])]

    def solve(self, faces: np.ndarray, rhs: np.ndarray, factors: list | None = None
              ) -> np.ndarray:
        """Solve ``A(faces_b) x_b = rhs_b`` for each sample; faces (B, n_faces), rhs (B, m^2).

        ``factors`` (from :meth:`factor`) are reused when given; else each sample is factored
        (one factorisation per sample: the matrices differ)."""
        if factors is None:
            data = self.entries(faces)
            out = np.empty_like(rhs)
            for b in range(faces.shape[0]):
                out[b] = spla.splu(self.matrix(data[b]), **_SPLU_OPTIONS).solve(rhs[b])
            return out
        return np.stack([lu.solve(np.ascontiguousarray(rhs[b])) for b, lu in enumerate(factors)])

    def pad(self, x: np.ndarray) -> np.ndarray:
        """Interior vectors (B, m^2) -> nodal arrays (B, n, n) with zero boundary."""
        full = np.zeros((x.shape[0], self.n, self.n))
        full[:, 1:-1, 1:-1] = x.reshape(-1, self.m, self.m)
        return full

    def face_gradient(self, u: np.ndarray, lam: np.ndarray) -> np.ndarray:
        """``dJ/dfaces = -(du)(dlambda)/h^2`` per face, for interior solutions (B, m^2) -> (B, n_faces)."""
        U, L = self.pad(u), self.pad(lam)
        gx = (U[:, 1:, :] - U[:, :-1, :]) * (L[:, 1:, :] - L[:, :-1, :])
        gy = (U[:, :, 1:] - U[:, :, :-1]) * (L[:, :, 1:] - L[:, :, :-1])
        B = u.shape[0]
        return -np.concatenate([gx.reshape(B, -1), gy.reshape(B, -1)], axis=1) / self.h ** 2


class _DarcySolve(torch.autograd.Function):
    """faces (B, n_faces) -> interior solution (B, m^2) of ``A(faces) u = f``; adjoint backward."""

    @staticmethod
    def forward(ctx, faces: torch.Tensor, op: _Operator, rhs: np.ndarray) -> torch.Tensor:
        f64 = faces.detach().cpu().double().numpy()
        factors = op.factor(f64) if ctx.needs_input_grad[0] else None
        u = op.solve(f64, rhs, factors)
        ctx.op = op
        ctx.save_for_backward(faces)
        ctx.u, ctx.factors = u, factors
        return torch.as_tensor(u, dtype=faces.dtype, device=faces.device)

    @staticmethod
    def backward(ctx, grad_u: torch.Tensor):
        (faces,) = ctx.saved_tensors
        op: _Operator = ctx.op
        f64 = faces.detach().cpu().double().numpy()
        lam = op.solve(f64, grad_u.detach().cpu().double().numpy(),  # A symmetric: A^T = A
                       ctx.factors)
        ctx.factors = None
        g = op.face_gradient(ctx.u, lam)
        return torch.as_tensor(g, dtype=faces.dtype, device=faces.device), None, None


@register_problem("darcy")
class Darcy(Problem):
    """Darcy parameter-to-solution map ``log a -> u`` (SPEC §4, paper SM F.4).

    ``-div(a grad u) = source`` in the unit square, ``u = 0`` on the boundary; discretisation
    and solver in the module docstring.

    Parameters
    ----------
    n : int
        Nodes per side including the boundary (default 64, ``h = 1/63``).
    source : float
        Constant right-hand side (default 1).

    Input ``log a`` (B, n, n); output ``u`` (B, n, n), zero on the boundary, in the input's
    dtype. Differentiable with respect to torch inputs (adjoint method). Nodal layout:
    ``coordinates()``; first index = x.
    """

    name = "darcy"
    differentiable = True

    def __init__(self, n: int = 64, *, source: float = 1.0):
        self.n = check_grid_size(n)
        if isinstance(source, bool) or not isinstance(source, (int, float)) or not np.isfinite(source):
            raise ValueError(f"source must be a finite number, got {source!r}")
        self.source = float(source)
        self._op = _Operator(self.n)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.n, self.n)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.n, self.n)

    def coordinates(self) -> dict[str, np.ndarray]:
        """``x``, ``y`` (n,) and ``points`` (n*n, 2) in the C order of a flattened field."""
        return grid_points(self.n)

    def options(self) -> dict[str, Any]:
        return {"n": self.n, "source": self.source}

    def default_input_measure(self) -> GaussianRandomField:
        """``log a = m + KLE``: Dirichlet sine basis (32 x 32 modes, fewer on grids below 34),
        alpha = 2, tau = 3, sigma = 3, m = 0 (SPEC §4)."""
        return dirichlet_field(self.n, alpha=2.0, tau=3.0, sigma=3.0, mean=0.0)

    def _faces(self, u: torch.Tensor) -> torch.Tensor:
        """Face conductivities (B, n_faces) of log-conductivities u (B, n, n)."""
        ax, ay = harmonic_faces(torch.exp(u))
        return torch.cat([ax.reshape(u.shape[0], -1), ay.reshape(u.shape[0], -1)], dim=1)

    def linearise(self, u: torch.Tensor) -> tuple:
        """The Jacobian of ``log a -> u`` at samples u (B, n, n), each matrix factored ONCE.

        Returns ``(jvp, vjp)``: ``jvp(v) = J v`` by ``A du = -dA[dfaces] u`` and
        ``vjp(w) = J^T w`` by the adjoint ``A lam = w`` (``A`` symmetric); both reuse the
        forward LU factors (for power iterations: one factorisation per sample in all).
        Inputs and outputs (B, n, n) float64 tensors.
        """
        op, m = self._op, self._op.m
        x = torch.as_tensor(u, dtype=torch.float64).detach()
        faces = self._faces(x).numpy()
        factors = op.factor(faces)
        rhs = np.full((x.shape[0], m * m), self.source)
        sol = op.solve(faces, rhs, factors)

        def jvp(v: torch.Tensor) -> torch.Tensor:
            _, dfaces = torch.func.jvp(self._faces, (x,), (v.double(),))
            data = op.entries(dfaces.numpy())
            r = np.stack([op.matrix(data[b]) @ sol[b] for b in range(x.shape[0])])
            du = -op.solve(faces, r, factors)
            return torch.as_tensor(op.pad(du))

        def vjp(w: torch.Tensor) -> torch.Tensor:
            wi = w.double()[:, 1:-1, 1:-1].reshape(x.shape[0], -1).numpy()
            lam = op.solve(faces, wi, factors)
            gf = torch.as_tensor(op.face_gradient(sol, lam))
            _, back = torch.func.vjp(self._faces, x)
            return back(gf)[0]

        return jvp, vjp

    def _evaluate(self, u: torch.Tensor) -> torch.Tensor:
        a = torch.exp(u)
        check_finite(a.detach(), "conductivity exp(u) (input u is log a; overflow)")
        return self._solve_faces(a, np.full((u.shape[0], self._op.m ** 2), self.source))

    def _solve_faces(self, a: torch.Tensor, rhs: np.ndarray) -> torch.Tensor:
        ax, ay = harmonic_faces(a)
        B = a.shape[0]
        faces = torch.cat([ax.reshape(B, -1), ay.reshape(B, -1)], dim=1)
        x = _DarcySolve.apply(faces, self._op, rhs)
        return torch.nn.functional.pad(x.reshape(B, self.n - 2, self.n - 2), (1, 1, 1, 1))

    def solve(self, a: Any, f: Any = None) -> np.ndarray:
        """Solve ``-div(a grad u) = f``, ``u = 0`` on the boundary, for a given conductivity.

        Parameters
        ----------
        a : (B, n, n) or (n, n) array-like, positive nodal conductivity (not its log)
        f : (B, n, n) or (n, n) array-like or None
            Nodal source (boundary values unused); ``None`` means the constant ``source``.

        Returns
        -------
        (B, n, n) float64 numpy array (zero on the boundary).
        """
        at = as_tensor(a, "a", dtype=torch.float64)
        if at.ndim == 2:
            at = at[None]
        if tuple(at.shape[1:]) != (self.n, self.n):
            raise ValueError(f"a must have shape (B, {self.n}, {self.n}), got {tuple(at.shape)}")
        check_finite(at, "a")
        if not bool((at > 0).all()):
            raise ValueError(f"a must be positive everywhere, got minimum {float(at.min()):.3g}")
        B = at.shape[0]
        if f is None:
            rhs = np.full((B, self._op.m ** 2), self.source)
        else:
            ft = as_tensor(f, "f", dtype=torch.float64)
            ft = ft.expand(B, self.n, self.n) if ft.ndim == 2 else ft
            if tuple(ft.shape) != (B, self.n, self.n):
                raise ValueError(f"f must have shape ({B}, {self.n}, {self.n}) or "
                                 f"({self.n}, {self.n}), got {tuple(ft.shape)}")
            check_finite(ft, "f")
            rhs = ft[:, 1:-1, 1:-1].reshape(B, -1).numpy().copy()
        with torch.no_grad():
            return self._solve_faces(at, rhs).numpy()
