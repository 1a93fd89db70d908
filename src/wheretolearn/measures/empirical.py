"""Empirical measures ``sum_i w_i delta_{x_i}`` (particles; SPEC §2, §4 nonparametric AMA)."""

from __future__ import annotations

import hashlib

import torch

from .._validation import as_tensor, check_finite, resolve_dtype, torch_generator
from .base import Measure, check_n_samples, normalized_weights

__all__ = ["Empirical"]


class Empirical(Measure):
    """Weighted empirical measure of ``M`` points.

    Parameters
    ----------
    points : (M, *event_shape) array-like
        Kept as given when a tensor (so particles that require grad stay differentiable);
        never modified.
    weights : (M,) array-like, optional
        Non-negative, normalised to sum to 1; uniform ``1/M`` by default.
    quadrature_weights : event_shape array-like, optional
        Positive weights ``q`` of the squared norm ``||x||^2 = sum q x^2`` used by
        ``second_moment`` and by ``wasserstein2`` (e.g. trapezoid weights when the points
        are fields on a grid). Euclidean (all ones) by default.
    dtype : optional
        Defaults to the dtype of floating tensor ``points``, else float32.
    """

    def __init__(self, points, weights=None, *, quadrature_weights=None, dtype=None):
        if dtype is None and isinstance(points, torch.Tensor) and points.is_floating_point():
            dtype = points.dtype
        dt = resolve_dtype(dtype)
        x = as_tensor(points, "points", dtype=dt)
        if x.ndim < 1 or x.shape[0] < 1:
            raise ValueError(f"points must have shape (M, *event_shape) with M >= 1, "
                             f"got {tuple(x.shape)}")
        if x.ndim == 1:
            raise ValueError(f"points must have shape (M, *event_shape), got a 1-D array of "
                             f"shape {tuple(x.shape)}; use points[:, None] for 1-D data")
        check_finite(x.detach(), "points")
        self._points = x
        m = x.shape[0]
        self._weights = normalized_weights(weights, m, dtype=dt, device=x.device)
        self._quad = None
        if quadrature_weights is not None:
            q = as_tensor(quadrature_weights, "quadrature_weights", dtype=dt, device=x.device)
            if tuple(q.shape) != self.event_shape:
                raise ValueError(f"quadrature_weights must have shape {self.event_shape}, "
                                 f"got {tuple(q.shape)}")
            check_finite(q, "quadrature_weights")
            if bool((q <= 0).any()):
                raise ValueError("quadrature_weights must be > 0, got smallest "
                                 f"{float(q.min()):.3g}")
            self._quad = q.detach()

    @property
    def points(self) -> torch.Tensor:
        """(M, *event_shape) support points."""
        return self._points

    @property
    def weights(self) -> torch.Tensor:
        """(M,) probabilities summing to 1."""
        return self._weights

    @property
    def quadrature_weights(self) -> torch.Tensor | None:
        """event_shape weights of the squared norm, or None for Euclidean."""
        return self._quad

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self._points.shape[1:])

    @property
    def dtype(self) -> torch.dtype:
        return self._points.dtype

    @property
    def mean(self) -> torch.Tensor:
        """``sum_i w_i x_i``, shape event_shape."""
        return torch.tensordot(self._weights, self._points, dims=1)

    def _sq_norms(self) -> torch.Tensor:
        sq = self._points ** 2
        if self._quad is not None:
            sq = sq * self._quad
        return sq.flatten(1).sum(1)

    def second_moment(self) -> torch.Tensor:
        """``sum_i w_i ||x_i||^2`` (quadrature-weighted if set)."""
        return self._weights @ self._sq_norms()

    def sample(self, n: int, *, generator=None) -> torch.Tensor:
        """Resample ``n`` points with replacement according to ``weights``; (n, *event_shape)."""
        n = check_n_samples(n)
        g = torch_generator(generator)
        idx = torch.multinomial(self._weights.detach().cpu().double(), n, replacement=True,
                                generator=g)
        return self._points[idx.to(self._points.device)]

    def to_dict(self) -> dict:
        """JSON-serialisable summary: ``M``, ``event_shape`` and a sha256 of the points, weights
        and quadrature weights (in float64), which identifies the measure without storing it."""
        h = hashlib.sha256()
        for t in (self._points, self._weights, self._quad):
            if t is not None:
                h.update(t.detach().cpu().double().contiguous().numpy().tobytes())
        return {"M": len(self), "event_shape": list(self.event_shape), "sha256": h.hexdigest()}

    def __len__(self) -> int:
        return int(self._points.shape[0])

    def __repr__(self) -> str:
        return f"Empirical(M={len(self)}, event_shape={self.event_shape}, dtype={self.dtype})"
