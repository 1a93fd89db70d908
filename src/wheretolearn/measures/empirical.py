"""Empirical measures ``sum_i w_i delta_{x_i}`` (particles; SPEC §2, §4 nonparametric AMA) and
the smoothed particle measure the bilevel descent moves (:class:`ParticleMeasure`, issue 25)."""

from __future__ import annotations

import hashlib

import torch

from .._validation import as_tensor, check_finite, resolve_dtype, torch_generator
from .base import Measure, check_n_samples, normalized_weights

__all__ = ["Empirical", "ParticleMeasure", "silverman_bandwidth"]


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

    @property
    def cov(self) -> torch.Tensor:
        """Weighted covariance ``sum_i w_i (x_i - mean)(x_i - mean)^T`` of vector points,
        shape (d, d) (points flattened to vectors)."""
        x = self._points.flatten(1)
        c = x - self._weights @ x
        return (c * self._weights[:, None]).T @ c

    def detach(self) -> "Empirical":
        """The same measure with points and weights detached from any autograd graph."""
        return Empirical(self._points.detach(), self._weights.detach(),
                         quadrature_weights=self._quad)

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


def silverman_bandwidth(points: torch.Tensor) -> torch.Tensor:
    """Per-coordinate Silverman bandwidth ``h_k = (4 / (d + 2))^(1 / (d + 4)) M^(-1 / (d + 4))
    sigma_k`` of a Gaussian kernel density around ``M`` points in R^d (``sigma_k`` the
    coordinate's standard deviation; a coordinate of zero spread gets the mean of the others,
    or 1 when all are zero). Returns a (d,) tensor."""
    x = points.detach().double()
    m, d = x.shape
    sigma = x.std(0, unbiased=m > 1) if m > 1 else torch.zeros(d, dtype=torch.float64)
    pos = sigma > 0
    if not bool(pos.all()):
        fill = float(sigma[pos].mean()) if bool(pos.any()) else 1.0
        sigma = torch.where(pos, sigma, torch.full_like(sigma, fill))
    factor = (4.0 / (d + 2)) ** (1.0 / (d + 4)) * m ** (-1.0 / (d + 4))
    return (factor * sigma).to(points.dtype)


class ParticleMeasure(Empirical):
    """``M`` equally weighted particles in R^d with a stated smoothing for drawing more than
    ``M`` points: the training distribution of the bilevel particle family (issue 25).

    ``sample(n)``: ``n == M`` returns the particles themselves (exactly, in order); ``n > M``
    the ``M`` particles plus ``n - M`` draws of the Gaussian kernel density around them,
    ``x = x_I + h * z`` with ``I`` uniform and ``z ~ N(0, I)``, ``h`` the per-coordinate
    Silverman bandwidth (:func:`silverman_bandwidth`) unless given; ``n < M`` a uniform subset
    of ``n`` particles without replacement. :meth:`smoothing` states this as a dict.

    Parameters
    ----------
    points : (M, d) array-like
    bandwidth : (d,) or scalar array-like, optional
        KDE bandwidth per coordinate; Silverman's rule by default.
    dtype : optional
    """

    def __init__(self, points, *, bandwidth=None, dtype=None):
        super().__init__(points, dtype=dtype)
        if self._points.ndim != 2:
            raise ValueError(f"particles must have shape (M, d), got {tuple(self._points.shape)}")
        d = self._points.shape[1]
        if bandwidth is None:
            h = silverman_bandwidth(self._points)
            self._rule = "silverman"
        else:
            h = torch.as_tensor(bandwidth, dtype=self.dtype).detach().reshape(-1)
            if h.numel() == 1:
                h = h.expand(d).clone()
            if h.shape != (d,) or not bool(torch.isfinite(h).all()) or bool((h < 0).any()):
                raise ValueError(f"bandwidth must be a non-negative scalar or ({d},) vector, "
                                 f"got {bandwidth!r}")
            self._rule = "given"
        self._bandwidth = h.to(self.dtype)

    @property
    def bandwidth(self) -> torch.Tensor:
        """(d,) KDE bandwidth of the smoothing."""
        return self._bandwidth

    def smoothing(self) -> dict:
        """The smoothing used to draw more than ``M`` points, as JSON."""
        return {"kind": "particles_plus_gaussian_kde", "rule": self._rule,
                "bandwidth": self._bandwidth.double().tolist(), "M": len(self),
                "exact_when": "n == M (the particles themselves); n > M: the M particles plus "
                              "n - M draws x_I + h z, I uniform, z ~ N(0, I); n < M: a uniform "
                              "subset without replacement"}

    def sample(self, n: int, *, generator=None) -> torch.Tensor:
        n = check_n_samples(n)
        g = torch_generator(generator)
        m = len(self)
        x = self._points
        if n == m:
            return x
        if n < m:
            idx = torch.randperm(m, generator=g)[:n]
            return x[idx.to(x.device)]
        idx = torch.randint(m, (n - m,), generator=g)
        z = torch.randn(n - m, x.shape[1], generator=g, dtype=x.dtype)
        return torch.cat([x, x[idx.to(x.device)] + z.to(x.device) * self._bandwidth])

    def detach(self) -> "ParticleMeasure":
        return ParticleMeasure(self._points.detach(), bandwidth=self._bandwidth
                               if self._rule == "given" else None)

    def to(self, dtype=None) -> "ParticleMeasure":
        dt = resolve_dtype(dtype) if dtype is not None else self.dtype
        return ParticleMeasure(self._points.detach().to(dt),
                               bandwidth=self._bandwidth.to(dt) if self._rule == "given" else None)

    def to_dict(self) -> dict:
        """The particles (``points``, as lists) and their smoothing: enough to rebuild the
        measure with :meth:`from_dict`."""
        return {"particles": len(self), "points": self._points.detach().double().tolist(),
                "smoothing": self.smoothing()}

    @classmethod
    def from_dict(cls, data: dict, *, dtype=None) -> "ParticleMeasure":
        pts = torch.tensor(data["points"], dtype=torch.float64)
        sm = data.get("smoothing") or {}
        bw = sm.get("bandwidth") if sm.get("rule") == "given" else None
        out = cls(pts, bandwidth=bw)
        return out.to(dtype) if dtype is not None else out

    def __repr__(self) -> str:
        return f"ParticleMeasure(M={len(self)}, d={self._points.shape[1]}, dtype={self.dtype})"
