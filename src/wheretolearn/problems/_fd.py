"""Shared helpers for the grid-based PDE problems (``ntd``, ``darcy``, ``radiative``).

Conventions used by every grid problem here: the unit square carries ``n x n`` nodes
*including* the boundary, ``h = 1 / (n - 1)``, and a nodal field ``v`` of shape ``(n, n)``
is indexed ``v[i, j] = v(x_i, y_j)`` with ``x_i = i h`` (first index = x) and
``y_j = j h``. Flattening is C order, so ``v.reshape(-1)[i * n + j]``.

Also here: a small Karhunen-Loeve (KLE) sampler for Gaussian random fields with the
Dirichlet sine basis (SPEC §2), used as the default input measure of ``darcy`` and
``radiative`` and for the optional random conductivity of ``ntd``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._validation import (check_positive_float, check_positive_int, resolve_dtype,
                           torch_generator)
from ..measures.base import Measure, check_n_samples

__all__ = [
    "check_grid_size",
    "grid_points",
    "harmonic_faces",
    "nested_dissection",
    "sine_basis",
    "matern_eigenvalues",
    "DirichletKLE",
]


def check_grid_size(n: Any, name: str = "n") -> int:
    """Return ``n`` as ``int`` if it is an integer >= 3 (one interior node at least)."""
    n = check_positive_int(n, name)
    if n < 3:
        raise ValueError(f"{name} (nodes per side including the boundary) must be >= 3, got {n}")
    return n


def grid_points(n: int) -> dict[str, np.ndarray]:
    """Coordinates of the ``n x n`` node grid on the unit square.

    Returns ``{"x": (n,), "y": (n,), "points": (n*n, 2)}``; ``points`` lists ``(x, y)`` in
    the C order used to flatten a nodal field (first index = x).
    """
    x = np.linspace(0.0, 1.0, n)
    xx, yy = np.meshgrid(x, x, indexing="ij")
    return {"x": x, "y": x.copy(), "points": np.stack([xx.ravel(), yy.ravel()], axis=1)}


def harmonic_faces(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Harmonic-mean face conductivities of a nodal field.

    ``a_face = 2 a_p a_q / (a_p + a_q)`` for each pair of neighbouring nodes ``p, q``.

    Parameters
    ----------
    a : (B, n, n) tensor, positive

    Returns
    -------
    ax : (B, n-1, n) tensor -- faces between ``(i, j)`` and ``(i+1, j)``
    ay : (B, n, n-1) tensor -- faces between ``(i, j)`` and ``(i, j+1)``
    """
    ax = 2.0 * a[:, :-1, :] * a[:, 1:, :] / (a[:, :-1, :] + a[:, 1:, :])
    ay = 2.0 * a[:, :, :-1] * a[:, :, 1:] / (a[:, :, :-1] + a[:, :, 1:])
    return ax, ay


def nested_dissection(n: int, *, leaf: int = 16) -> np.ndarray:
    """Geometric nested-dissection ordering of the ``n x n`` grid nodes (C-order indices).

    Recursively splits the longer side of a node box by a one-node-wide separator that is
    numbered after both halves; boxes with at most ``leaf`` nodes keep C order. Passing a
    matrix permuted this way to SuperLU with ``permc_spec="NATURAL"`` cuts its fill for
    5-point-type stencils (with any per-node block size) below COLAMD's.

    Returns an int array of length ``n*n``: ``order[r]`` is the node numbered ``r``.
    """
    idx = np.arange(n * n).reshape(n, n)
    parts: list[np.ndarray] = []

    def split(box: np.ndarray) -> None:
        if box.size <= leaf or min(box.shape) < 3:
            parts.append(box.ravel())
            return
        if box.shape[0] >= box.shape[1]:
            m = box.shape[0] // 2
            split(box[:m]); split(box[m + 1:]); parts.append(box[m])
        else:
            m = box.shape[1] // 2
            split(box[:, :m]); split(box[:, m + 1:]); parts.append(box[:, m])

    split(idx)
    return np.concatenate(parts)


def sine_basis(n_points: int, n_modes: int) -> np.ndarray:
    """1-D Dirichlet Laplacian eigenfunctions ``sqrt(2) sin(pi k s)`` at ``s = linspace(0, 1, n_points)``.

    Returns an ``(n_points, n_modes)`` array, ``k = 1..n_modes``; orthonormal in L2(0, 1).
    """
    s = np.linspace(0.0, 1.0, n_points)
    k = np.arange(1, n_modes + 1)
    phi = math.sqrt(2.0) * np.sin(math.pi * np.outer(s, k))
    phi[[0, -1], :] = 0.0  # exact zeros at s = 0, 1 (sin(pi k) is ~1e-16 in floating point)
    return phi


def matern_eigenvalues(n_modes: int, *, alpha: float, tau: float, sigma: float,
                       dim: int) -> np.ndarray:
    """KLE eigenvalues ``sigma^2 (mu + tau^2)^(-alpha)`` for the Dirichlet Laplacian (SPEC §2).

    ``mu_k = pi^2 k^2`` in 1-D (shape ``(n_modes,)``), ``mu_kl = pi^2 (k^2 + l^2)`` in 2-D
    (shape ``(n_modes, n_modes)``).
    """
    k = np.arange(1, n_modes + 1, dtype=float)
    mu = math.pi ** 2 * (k ** 2 if dim == 1 else k[:, None] ** 2 + k[None, :] ** 2)
    return sigma ** 2 * (mu + tau ** 2) ** (-alpha)


class DirichletKLE(Measure):
    """Gaussian random field on the ``n x n`` unit-square grid by truncated KLE (SPEC §2).

    ``v(x, y) = mean + sum_{k,l <= n_modes} sqrt(lambda_kl) xi_kl 2 sin(pi k x) sin(pi l y)``,
    ``lambda_kl = sigma^2 (pi^2 (k^2 + l^2) + tau^2)^(-alpha)``, ``xi ~ N(0, 1)`` i.i.d.
    The sine basis vanishes on the boundary, so ``v = mean`` there.

    Parameters
    ----------
    n : int
        Nodes per side including the boundary.
    mean, alpha, tau, sigma : float
        Constant mean and Matern-like covariance parameters (``sigma`` defaults to
        ``tau^(alpha - 1)``, the authors' scale for d = 2).
    n_modes : int, optional
        Modes per direction (default ``min(n - 2, 32)``: eigenvalues decay like
        ``k^(-2 alpha)``, so higher modes carry no visible variance).
    exponentiate : bool
        If True samples are ``exp(v)`` (a log-normal field, e.g. a conductivity).
    dtype : "float32" | "float64"
    """

    def __init__(self, n: int, *, mean: float = 0.0, alpha: float = 2.0, tau: float = 3.0,
                 sigma: float | None = None, n_modes: int | None = None,
                 exponentiate: bool = False, dtype: Any = None):
        self.n = check_grid_size(n)
        self.alpha = check_positive_float(alpha, "alpha")
        self.tau = check_positive_float(tau, "tau", allow_zero=True)
        self.sigma = (self.tau ** (self.alpha - 1.0) if sigma is None
                      else check_positive_float(sigma, "sigma", allow_zero=True))
        self.mean = float(mean)
        if not math.isfinite(self.mean):
            raise ValueError(f"mean must be finite, got {mean}")
        self.n_modes = min(self.n - 2, 32) if n_modes is None else check_positive_int(n_modes, "n_modes")
        self.exponentiate = bool(exponentiate)
        self._dtype = resolve_dtype(dtype)
        phi = sine_basis(self.n, self.n_modes)
        lam = matern_eigenvalues(self.n_modes, alpha=self.alpha, tau=self.tau, sigma=self.sigma, dim=2)
        self._phi = torch.as_tensor(phi, dtype=self._dtype)
        self._sqrt_lam = torch.as_tensor(np.sqrt(lam), dtype=self._dtype)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.n, self.n)

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def sample_latent(self, n: int, *, generator=None) -> torch.Tensor:
        """Standard normal KLE coefficients ``xi``, shape ``(n, n_modes, n_modes)``."""
        n = check_n_samples(n)
        g = torch_generator(generator)
        return torch.randn(n, self.n_modes, self.n_modes, generator=g, dtype=self._dtype)

    def transform(self, xi: torch.Tensor) -> torch.Tensor:
        """Map coefficients ``xi`` (B, K, K) to fields (B, n, n): ``Phi (sqrt(lam) * xi) Phi^T``."""
        v = self.mean + self._phi @ (self._sqrt_lam * xi) @ self._phi.T
        return torch.exp(v) if self.exponentiate else v

    def sample(self, n: int, *, generator: int | torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` fields, shape ``(n, n_grid, n_grid)``."""
        return self.transform(self.sample_latent(n, generator=generator))

    def second_moment(self) -> torch.Tensor:
        """``E ||v||^2`` in the L2(unit square) norm of the (log-)field, before exponentiation.

        ``mean^2 + sum_kl lambda_kl`` (the sine basis is L2-orthonormal). For
        ``exponentiate=True`` this is still the moment of the Gaussian log-field, which is
        the space the AMA bound works in (SPEC §4).
        """
        return torch.as_tensor(self.mean ** 2, dtype=self._dtype) + (self._sqrt_lam ** 2).sum()

    def to_dict(self) -> dict:
        """JSON-serialisable description."""
        return {"kind": "dirichlet_kle", "n": self.n, "mean": self.mean, "alpha": self.alpha,
                "tau": self.tau, "sigma": self.sigma, "n_modes": self.n_modes,
                "exponentiate": self.exponentiate}

    def __repr__(self) -> str:
        return (f"DirichletKLE(n={self.n}, mean={self.mean}, alpha={self.alpha}, tau={self.tau}, "
                f"sigma={self.sigma}, n_modes={self.n_modes}, exponentiate={self.exponentiate})")
