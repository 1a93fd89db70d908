"""Shared helpers for the grid-based PDE problems (``ntd``, ``darcy``, ``radiative``).

Conventions used by every grid problem here: the unit square carries ``n x n`` nodes
*including* the boundary, ``h = 1 / (n - 1)``, and a nodal field ``v`` of shape ``(n, n)``
is indexed ``v[i, j] = v(x_i, y_j)`` with ``x_i = i h`` (first index = x) and
``y_j = j h``. Flattening is C order, so ``v.reshape(-1)[i * n + j]``.

Also here: the Dirichlet-basis Gaussian random fields (SPEC §2, built on
:mod:`wheretolearn.measures.fields`) and their log-normal push-forward, used as default
input measures of ``darcy`` / ``radiative`` and for the optional random conductivity of ``ntd``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._validation import check_positive_int
from ..measures.fields import GaussianRandomField, SineBasis2D
from ..measures.lognormal import LogNormalField  # re-exported: its old home

__all__ = [
    "check_grid_size",
    "grid_points",
    "harmonic_faces",
    "nested_dissection",
    "LogNormalField",
    "dirichlet_field",
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


def dirichlet_field(n: int, *, alpha: float, tau: float, sigma: float, mean: float = 0.0,
                    n_modes: int | None = None, dtype: Any = None) -> GaussianRandomField:
    """Gaussian random field on the ``n x n`` grid with the Dirichlet sine basis (SPEC §2).

    ``n_modes`` per side defaults to ``min(n - 2, 32)``: eigenvalues decay like
    ``k^(-2 alpha)``, so higher modes carry no visible variance.
    """
    k = min(n - 2, 32) if n_modes is None else check_positive_int(n_modes, "n_modes")
    return GaussianRandomField(SineBasis2D(n, k), alpha=alpha, tau=tau, sigma=sigma, mean=mean,
                               dtype=dtype)
