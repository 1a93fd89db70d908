"""Neumann-to-Dirichlet (NtD) map of ``-div(a grad u) = 0`` on the unit square (SPEC §4, paper SM F.3).

The map is linear, so it is assembled once as a dense ``(4n-4, 4n-4)`` matrix and applied
to a whole batch with one matmul.

Discretisation (vertex-centred finite volumes = 5-point finite differences with
half/quarter control cells on the boundary):

* ``n x n`` nodes including the boundary, ``h = 1/(n-1)``; face conductivities are the
  harmonic means of the nodal values ``a``.
* Control volume of node ``p``: the dual cell of side ``h`` clipped to the square (half
  cells on edges, quarter cells at corners). Flux balance::

      sum_{q ~ p} a_pq w_pq (u_p - u_q) = h g_p

  with ``w_pq = 1/2`` for faces that run along the boundary and 1 otherwise, and ``h g_p``
  the Neumann flux through the boundary part of the cell (length ``h`` at edge nodes and
  at corners, ``h/2`` on each side there: a corner's ``g`` is the average of the two
  one-sided normal fluxes). The boundary quadrature is therefore uniform, weight ``h``
  per boundary node, and "mean zero" means the plain average over boundary nodes.
* ``g`` is the current density ``a du/dn`` (outward normal).

Null space and compatibility, handled explicitly: eliminating the interior nodes (Schur
complement, interior block factored once with SuperLU) leaves the discrete
Dirichlet-to-Neumann matrix ``S`` (symmetric, positive semi-definite, kernel = constants
because the grid graph is connected). The NtD matrix is ``M = h S^+`` with the
pseudo-inverse computed as ``S^+ = (S + 11^T/m)^{-1} - 11^T/m`` (``m = 4n-4``; exact for a
kernel spanned by ``1``), then ``M <- P M P`` with ``P = I - 11^T/m``. So

* input that is not mean-zero is projected (its boundary mean is removed, i.e. the
  least-squares compatible datum is used; a constant input maps to 0), and
* the output is the mean-zero Dirichlet trace, and ``M`` is symmetric (self-adjoint for the
  uniform boundary quadrature).

Boundary ordering (``coordinates()["points"]``): clockwise from the top-left corner
``(0, 1)``: the top edge left to right (n nodes), the right edge top to bottom (n-1), the
bottom edge right to left (n-1), the left edge bottom to top, stopping below the
top-left corner (n-2).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from .._validation import check_finite, check_nonnegative_int
from ..measures.boundary import NtDInputMeasure  # re-exported: its old home
from ._fd import check_grid_size, dirichlet_field, harmonic_faces
from .base import Problem, register_problem

__all__ = ["NtD", "NtDInputMeasure", "boundary_indices", "ntd_matrix"]


def boundary_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid indices ``(i, j)`` of the ``4n-4`` boundary nodes, clockwise from the top-left corner.

    ``i`` indexes x and ``j`` indexes y (node ``(i h, j h)``). Returns two int arrays of
    length ``4n-4``.
    """
    r = np.arange(n)
    top = (r, np.full(n, n - 1))                          # (0,1) -> (1,1)
    right = (np.full(n - 1, n - 1), r[n - 2::-1])         # (1,1-h) -> (1,0)
    bottom = (r[n - 2::-1], np.zeros(n - 1, dtype=int))   # (1-h,0) -> (0,0)
    left = (np.zeros(n - 2, dtype=int), r[1:n - 1])       # (0,h) -> (0,1-h)
    i = np.concatenate([top[0], right[0], bottom[0], left[0]])
    j = np.concatenate([top[1], right[1], bottom[1], left[1]])
    return i, j


def _neumann_laplacian(a: np.ndarray) -> sp.csr_matrix:
    """Finite-volume matrix ``A`` (n^2, n^2) of ``-div(a grad u)`` with natural (Neumann) rows.

    ``(A u)_p = sum_{q~p} a_pq w_pq (u_p - u_q)``: a weighted graph Laplacian (symmetric,
    kernel = constants); nodes flattened in C order ``p = i n + j``.
    """
    n = a.shape[0]
    at = torch.as_tensor(a, dtype=torch.float64)[None]
    ax, ay = (f[0].numpy().copy() for f in harmonic_faces(at))
    ax[:, [0, n - 1]] *= 0.5   # x-faces on the bottom/top edges have half length
    ay[[0, n - 1], :] *= 0.5   # y-faces on the left/right edges
    idx = np.arange(n * n).reshape(n, n)
    p = np.concatenate([idx[:-1, :].ravel(), idx[:, :-1].ravel()])
    q = np.concatenate([idx[1:, :].ravel(), idx[:, 1:].ravel()])
    w = np.concatenate([ax.ravel(), ay.ravel()])
    off = sp.coo_matrix((np.concatenate([-w, -w]), (np.concatenate([p, q]), np.concatenate([q, p]))),
                        shape=(n * n, n * n))
    deg = -np.asarray(off.sum(axis=1)).ravel()
    return (off + sp.diags(deg)).tocsr()


def ntd_matrix(a: np.ndarray) -> np.ndarray:
    """Dense NtD matrix ``M`` (4n-4, 4n-4) for nodal conductivity ``a`` (n, n), float64.

    ``u_boundary = M g`` for boundary current ``g`` (clockwise ordering, module docstring).
    """
    n = a.shape[0]
    h = 1.0 / (n - 1)
    A = _neumann_laplacian(a)
    bi, bj = boundary_indices(n)
    b = bi * n + bj
    mask = np.ones(n * n, dtype=bool)
    mask[b] = False
    inner = np.flatnonzero(mask)
    A_ii = A[inner][:, inner].tocsc()
    A_ib = A[inner][:, b]
    # Interior block is SPD (it couples to the boundary), factor it once and eliminate.
    lu = spla.splu(A_ii, permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True})
    cols = np.flatnonzero(np.asarray(abs(A_ib).sum(axis=0)).ravel())  # corners touch no interior node
    R = A_ib[:, cols].toarray()
    # One right-hand side per call: SuperLU's multi-RHS solve goes through threaded BLAS,
    # which was 5x slower in CPU time on a loaded 2-core machine.
    X = np.column_stack([lu.solve(R[:, c]) for c in range(R.shape[1])])
    S = A[b][:, b].toarray()
    S[:, cols] -= A_ib.T @ X
    S = 0.5 * (S + S.T)
    m = b.size
    ones = np.full((m, m), 1.0 / m)
    S_pinv = np.linalg.inv(S + ones) - ones
    P = np.eye(m) - ones
    M = h * (P @ S_pinv @ P)
    return 0.5 * (M + M.T)


@register_problem("ntd")
class NtD(Problem):
    """Neumann-to-Dirichlet map: boundary current ``g`` (mean zero) -> boundary voltage (mean zero).

    PDE ``-div(a grad u) = 0`` in the unit square, ``a du/dn = g`` on the boundary
    (SPEC §4, paper SM F.3). Discretisation, null-space handling and boundary ordering:
    module docstring.

    Parameters
    ----------
    n : int
        Nodes per side including the boundary (default 128, ``h = 1/127``; 508 boundary nodes).
    conductivity : None | "constant" | "kle" | (n, n) array
        ``None`` or ``"constant"``: ``a = 1``. ``"kle"``: ``a = exp(v)``, ``v`` a seeded Dirichlet KLE field
        (alpha = 2, tau = 3, sigma = 3, 32 x 32 modes; ``a = 1`` on the boundary). An array:
        positive nodal conductivity.
    seed : int
        Seed of the ``"kle"`` conductivity.

    Input ``(B, 4n-4)``, output ``(B, 4n-4)``; output dtype follows the input. Linear, and
    differentiable (a matmul).
    """

    name = "ntd"
    differentiable = True

    def __init__(self, n: int = 128, *, conductivity: Any = None, seed: int = 0):
        self.n = check_grid_size(n)
        self.seed = check_nonnegative_int(seed, "seed")
        self._kind, a = self._conductivity(conductivity)
        self.conductivity = a
        self._matrix = ntd_matrix(a)
        self._cache: dict[tuple, torch.Tensor] = {}

    def _conductivity(self, conductivity: Any) -> tuple[str, np.ndarray]:
        n = self.n
        if conductivity is None or (isinstance(conductivity, str) and conductivity == "constant"):
            return "constant", np.ones((n, n))
        if isinstance(conductivity, str):
            if conductivity != "kle":
                raise ValueError(f"conductivity must be None, 'constant', 'kle' or an (n, n) array of positive "
                                 f"values, got {conductivity!r}")
            field = dirichlet_field(n, alpha=2.0, tau=3.0, sigma=3.0, dtype="float64")
            return "kle", torch.exp(field.sample(1, generator=self.seed)[0]).numpy()
        a = np.array(conductivity, dtype=np.float64)  # a copy: never keep the caller's array
        if a.shape != (n, n):
            raise ValueError(f"conductivity array must have shape ({n}, {n}), got {a.shape}")
        check_finite(a, "conductivity")
        if not (a > 0).all():
            raise ValueError(f"conductivity must be positive everywhere, got minimum {a.min():.3g}")
        return "array", a

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (4 * self.n - 4,)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (4 * self.n - 4,)

    @property
    def matrix(self) -> np.ndarray:
        """The NtD matrix ``M`` (4n-4, 4n-4), float64 copy: ``output = M @ g``."""
        return self._matrix.copy()

    def coordinates(self) -> dict[str, np.ndarray]:
        """``points`` (4n-4, 2): boundary node coordinates in the clockwise input/output order;
        ``s`` (4n-4,): the parameter ``linspace(0, 1, 4n-4)`` the input measure uses."""
        bi, bj = boundary_indices(self.n)
        h = 1.0 / (self.n - 1)
        return {"points": np.stack([bi * h, bj * h], axis=1),
                "s": np.linspace(0.0, 1.0, 4 * self.n - 4)}

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"n": self.n, "conductivity": self._kind}
        if self._kind == "kle":
            opts["seed"] = self.seed
        if self._kind == "array":
            opts["conductivity_sha1"] = hashlib.sha1(self.conductivity.tobytes()).hexdigest()
        return opts

    def default_input_measure(self) -> "NtDInputMeasure":
        """The paper's initial training distribution: ``omega = 4 pi`` (SPEC §4)."""
        return NtDInputMeasure(4.0 * math.pi, n_boundary=4 * self.n - 4)

    def _evaluate(self, u: torch.Tensor) -> torch.Tensor:
        key = (u.dtype, u.device)
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(self._matrix, dtype=u.dtype, device=u.device)
        return u @ self._cache[key]  # M is symmetric: (M g)^T = g^T M
