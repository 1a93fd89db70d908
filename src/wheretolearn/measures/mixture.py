"""Finite mixtures ``sum_j w_j Q_j`` of measures (SPEC §2 "Mixture of the Q_j", §3 baseline).

* :class:`Mixture` -- any component measures (the "mixture of Q" baseline).
* :class:`GaussianMixture` -- Gaussian components ``N(m_k, L_k L_k^T)`` with weights
  ``w = softmax(logits)``: a log-density, reparametrised sampling per component and the
  closed-form score (:func:`gaussian_mixture_score`), the training distribution of the
  bilevel ``mixture`` family (issue 25); :func:`kmeans_mixture` fits one to samples.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .._validation import (as_tensor, check_finite, check_positive_int, resolve_dtype,
                           torch_generator)
from .base import Measure, check_n_samples, normalized_weights
from .gaussian import Gaussian

__all__ = ["Mixture", "GaussianMixture", "gaussian_mixture_sample", "gaussian_mixture_score",
           "kmeans", "kmeans_mixture"]


class Mixture(Measure):
    """Mixture of measures with a common ``event_shape``.

    Parameters
    ----------
    components : sequence of J Measure
    weights : (J,) array-like, optional
        Non-negative, normalised to sum to 1; equal weights ``1/J`` by default.
    """

    def __init__(self, components: Sequence[Measure], weights=None):
        comps = list(components)
        if not comps:
            raise ValueError("components must contain at least one measure, got none")
        for j, c in enumerate(comps):
            if not isinstance(c, Measure):
                raise TypeError(f"components[{j}] must be a Measure, got {type(c).__name__}")
        shapes = {tuple(c.event_shape) for c in comps}
        if len(shapes) != 1:
            raise ValueError(f"components must share one event_shape, got {sorted(shapes)}")
        dt = comps[0].dtype
        for c in comps[1:]:
            dt = torch.promote_types(dt, c.dtype)
        self._dtype = dt
        self._weights = normalized_weights(weights, len(comps), dtype=dt, per="component")
        self._components = tuple(comps)

    @property
    def components(self) -> tuple[Measure, ...]:
        return self._components

    @property
    def weights(self) -> torch.Tensor:
        """(J,) mixture weights summing to 1."""
        return self._weights

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self._components[0].event_shape)

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def mean(self) -> torch.Tensor:
        """``sum_j w_j mean_j``, shape event_shape."""
        means = torch.stack([torch.as_tensor(c.mean).to(self._dtype).expand(self.event_shape)
                             for c in self._components])
        return torch.tensordot(self._weights, means, dims=1)

    @property
    def cov(self) -> torch.Tensor:
        """Law of total covariance ``sum_j w_j (C_j + m_j m_j^T) - m m^T``; (d, d).

        Needs components with ``mean`` and ``cov`` (e.g. Gaussian, Uniform) and event_shape (d,).
        """
        if len(self.event_shape) != 1:
            raise ValueError(f"cov needs vector-valued components, got event_shape {self.event_shape}")
        for j, c in enumerate(self._components):
            if not hasattr(c, "cov"):
                raise TypeError(f"components[{j}] ({type(c).__name__}) has no cov")
        means = torch.stack([c.mean.to(self._dtype) for c in self._components])
        covs = torch.stack([c.cov.to(self._dtype) for c in self._components])
        second = covs + means.unsqueeze(-1) * means.unsqueeze(-2)
        m = self._weights @ means
        return torch.einsum("j,jab->ab", self._weights, second) - torch.outer(m, m)

    def second_moment(self) -> torch.Tensor:
        """``sum_j w_j E_{Q_j} ||x||^2``."""
        m2 = torch.stack([c.second_moment().to(self._dtype) for c in self._components])
        return self._weights @ m2

    def sample_with_labels(self, n: int, *, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` samples and the index of the component each came from.

        Component counts are one multinomial draw; each component is sampled once in a
        batch, then the rows are shuffled by one random permutation.

        Returns
        -------
        x : (n, *event_shape) tensor
        labels : (n,) int64 tensor
        """
        n = check_n_samples(n)
        g = torch_generator(generator)
        idx = torch.multinomial(self._weights.detach().cpu().double(), n, replacement=True,
                                generator=g)
        counts = torch.bincount(idx, minlength=len(self._components)).tolist()
        parts, labels = [], []
        for j, (c, k) in enumerate(zip(self._components, counts)):
            if k:
                parts.append(c.sample(k, generator=g).to(self._dtype))
                labels.append(torch.full((k,), j, dtype=torch.long))
        x, lab = torch.cat(parts), torch.cat(labels)
        perm = torch.randperm(n, generator=g)
        return x[perm.to(x.device)], lab[perm]

    def sample(self, n: int, *, generator=None) -> torch.Tensor:
        """Draw ``n`` samples, shape (n, *event_shape); see :meth:`sample_with_labels`."""
        return self.sample_with_labels(n, generator=generator)[0]

    def to_dict(self) -> dict:
        """JSON-serialisable ``{"components": [{"type": ..., **component.to_dict()}], "weights"}``
        (a component without ``to_dict`` is recorded by its ``repr``)."""
        comps = [{"type": type(c).__name__,
                  **(c.to_dict() if hasattr(c, "to_dict") else {"repr": repr(c)})}
                 for c in self._components]
        return {"components": comps, "weights": self._weights.detach().cpu().double().tolist()}

    def __repr__(self) -> str:
        return f"Mixture(J={len(self._components)}, event_shape={self.event_shape})"


# ------------------------------------------------------------------------- Gaussian mixture
class GaussianMixture(Mixture):
    """Mixture ``sum_k w_k N(m_k, L_k L_k^T)`` of ``K`` Gaussians on R^d.

    Parameters
    ----------
    weights : (K,) array-like
        Non-negative, normalised to sum to 1.
    means : (K, d) array-like
    cov : (K, d, d) array-like, optional
        Symmetric positive definite covariances. Give exactly one of ``cov`` / ``scale_tril``.
    scale_tril : (K, d, d) array-like, optional
        Lower-triangular factors ``L_k`` with positive diagonals.
    dtype : "float32" | "float64" | torch.dtype, optional
        Defaults to the dtype of ``means`` when it is floating, else float32.

    Sampling (:meth:`sample`, :func:`gaussian_mixture_sample`): component indices by inverse
    CDF of one uniform per draw, then ``x = m_k + L_k z`` with ``z ~ N(0, I)``; with ``K = 1``
    no uniform is drawn, so a one-component mixture draws exactly what
    :meth:`Gaussian.sample` draws from the same generator.
    """

    def __init__(self, weights, means, cov=None, *, scale_tril=None, dtype=None):
        if (cov is None) == (scale_tril is None):
            raise ValueError("give exactly one of cov or scale_tril")
        if dtype is None and isinstance(means, torch.Tensor) and means.is_floating_point():
            dtype = means.dtype
        dt = resolve_dtype(dtype)
        m = as_tensor(means, "means", dtype=dt)
        if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
            raise ValueError(f"means must have shape (K, d) with K, d >= 1, got {tuple(m.shape)}")
        k, d = m.shape
        factors = as_tensor(cov if scale_tril is None else scale_tril,
                            "cov" if scale_tril is None else "scale_tril", dtype=dt)
        if tuple(factors.shape) != (k, d, d):
            raise ValueError(f"{'cov' if scale_tril is None else 'scale_tril'} must have shape "
                             f"({k}, {d}, {d}) to match means, got {tuple(factors.shape)}")
        comps = [Gaussian(m[j], factors[j]) if scale_tril is None
                 else Gaussian(m[j], scale_tril=factors[j]) for j in range(k)]
        super().__init__(comps, weights)
        self.means = m
        self.scale_trils = torch.stack([c.scale_tril for c in comps])

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Dimension ``d``."""
        return int(self.means.shape[1])

    @property
    def n_components(self) -> int:
        """Number of components ``K``."""
        return int(self.means.shape[0])

    @property
    def covs(self) -> torch.Tensor:
        """(K, d, d) component covariances ``L_k L_k^T``."""
        return self.scale_trils @ self.scale_trils.transpose(-1, -2)

    # ------------------------------------------------------------------ sampling / density
    def sample_with_labels(self, n: int, *, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws (n, d) and their component indices (n,), see
        :func:`gaussian_mixture_sample`."""
        return gaussian_mixture_sample(self.weights, self.means, self.scale_trils, n,
                                       generator=generator)[:2]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log sum_k w_k N(x; m_k, C_k)`` at ``x`` (n, d) -> (n,), by log-sum-exp."""
        return torch.logsumexp(self._joint_log_prob(x), dim=1)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """``r_k(x) = w_k N(x; m_k, C_k) / p(x)``, shape (n, K); rows sum to 1."""
        return torch.softmax(self._joint_log_prob(x), dim=1)

    def _joint_log_prob(self, x) -> torch.Tensor:
        x = as_tensor(x, "x", dtype=self.dtype)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (n, {self.dim}), got {tuple(x.shape)}")
        _, logn = _component_terms(x, self.means, self.scale_trils)
        return (torch.log(self.weights)[:, None] + logn).T

    # ------------------------------------------------------------------ misc
    def detach(self) -> "GaussianMixture":
        """A copy that does not track gradients."""
        return GaussianMixture(self.weights.detach().clone(), self.means.detach().clone(),
                               scale_tril=self.scale_trils.detach().clone())

    def to(self, dtype=None, device=None) -> "GaussianMixture":
        dt = resolve_dtype(dtype) if dtype is not None else self.dtype
        return GaussianMixture(self.weights.to(dtype=dt, device=device),
                               self.means.to(dtype=dt, device=device),
                               scale_tril=self.scale_trils.to(dtype=dt, device=device))

    def to_dict(self) -> dict:
        """JSON-serialisable ``{"weights": [K], "means": [K][d], "covs": [K][d][d]}``."""
        return {"weights": self.weights.detach().cpu().double().tolist(),
                "means": self.means.detach().cpu().double().tolist(),
                "covs": self.covs.detach().cpu().double().tolist()}

    @classmethod
    def from_dict(cls, data: dict, *, dtype=None) -> "GaussianMixture":
        """Inverse of :meth:`to_dict`."""
        keys = ("weights", "means", "covs")
        if not isinstance(data, dict) or any(k not in data for k in keys):
            raise ValueError("data must be a dict with keys 'weights', 'means' and 'covs', got "
                             f"{sorted(data) if isinstance(data, dict) else type(data).__name__}")
        dt = resolve_dtype(dtype)
        return cls(torch.tensor(data["weights"], dtype=dt), torch.tensor(data["means"], dtype=dt),
                   torch.tensor(data["covs"], dtype=dt))

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, dim={self.dim}, dtype={self.dtype})"


def gaussian_mixture_sample(weights: torch.Tensor, means: torch.Tensor,
                            scale_trils: torch.Tensor, n: int, *,
                            generator: int | torch.Generator | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``n`` points of ``sum_k w_k N(m_k, L_k L_k^T)``, their components and latents.

    One uniform per draw picks the component (inverse CDF of ``weights`` in float64; skipped
    when ``K = 1``), then ``z ~ N(0, I)`` (n, d) and ``x_i = m_{k_i} + L_{k_i} z_i`` (computed
    per component as ``m_k + z L_k^T``, so ``K = 1`` is exactly :meth:`Gaussian.sample`).

    Parameters
    ----------
    weights : (K,) tensor, summing to 1
    means : (K, d) tensor
    scale_trils : (K, d, d) tensor
    n : int
    generator : seed, torch.Generator or None

    Returns
    -------
    x : (n, d) tensor in the dtype of ``means``
    labels : (n,) int64 tensor
    latent : (n, d) tensor, the ``z_i``
    """
    n = check_n_samples(n)
    g = torch_generator(generator)
    k, d = means.shape
    if k == 1:
        labels = torch.zeros(n, dtype=torch.long)
    else:
        u = torch.rand(n, generator=g, dtype=torch.float64)
        cdf = torch.cumsum(weights.detach().double().cpu(), 0)
        labels = torch.searchsorted(cdf, u * cdf[-1], right=True).clamp_max_(k - 1)
    z = torch.randn(n, d, generator=g, dtype=means.dtype)
    return _transform(means, scale_trils, labels, z), labels, z


def _transform(means, scale_trils, labels, z) -> torch.Tensor:
    """``x_i = m_{k_i} + L_{k_i} z_i`` (n, d), per component."""
    if means.shape[0] == 1:
        return means[0] + z @ scale_trils[0].T
    x = torch.empty_like(z)
    for j in range(means.shape[0]):
        rows = labels == j
        if bool(rows.any()):
            x[rows] = means[j] + z[rows] @ scale_trils[j].T
    return x


def _component_terms(x: torch.Tensor, means: torch.Tensor, scale_trils: torch.Tensor,
                     labels: torch.Tensor | None = None, latent: torch.Tensor | None = None):
    """Whitened offsets ``z_k = L_k^{-1}(x - m_k)`` (K, d, n) and component log-densities
    ``log N(x; m_k, C_k)`` (K, n), by one batched triangular solve; where the draw's own
    component and latent are known (``labels`` (n,), ``latent`` (n, d)) its offset is the latent
    itself (exact, where the solve would lose digits to a tiny diagonal of ``L_k``)."""
    d = means.shape[1]
    diff = (x[None, :, :] - means[:, None, :]).transpose(1, 2)
    z = torch.linalg.solve_triangular(scale_trils, diff, upper=False)
    if labels is not None:
        z[labels, :, torch.arange(x.shape[0])] = latent.to(z.dtype)
    logdet = torch.log(torch.diagonal(scale_trils, dim1=1, dim2=2)).sum(1)
    logn = -0.5 * (z * z).sum(1) - logdet[:, None] - 0.5 * d * math.log(2 * math.pi)
    return z, logn


def gaussian_mixture_score(x: torch.Tensor, c: torch.Tensor, logits: torch.Tensor,
                           means: torch.Tensor, scale_trils: torch.Tensor, *,
                           labels: torch.Tensor | None = None,
                           latent: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted score ``sum_i c_i grad_theta log p_theta(x_i)`` of a Gaussian mixture.

    ``p = sum_k w_k N(m_k, L_k L_k^T)``, ``w = softmax(logits)``; with responsibilities
    ``r_ik = w_k N(x_i; m_k, C_k) / p(x_i)`` and ``z_ik = L_k^{-1}(x_i - m_k)``::

        grad_logits_k = sum_i c_i (r_ik - w_k)
        grad_m_k      = L_k^{-T} sum_i c_i r_ik z_ik
        grad_L_k      = tril(L_k^{-T} sum_i c_i r_ik z_ik z_ik^T)
                        - (sum_i c_i r_ik) diag(1 / diag L_k)

    (the single-Gaussian score ``grad_m = C^{-1}(x - m)``,
    ``grad_L = tril(C^{-1}(x - m)(x - m)^T L^{-T}) - diag(1 / diag L)`` weighted by ``r_ik``;
    the logit part is ``d log p / d w_k = N_k / p`` through the softmax Jacobian). One batched
    triangular solve for the offsets and one for the ``d + 1`` weighted sums per component.

    Parameters
    ----------
    x : (N, d) tensor
    c : (N,) tensor of weights
    logits : (K,) tensor
    means : (K, d) tensor
    scale_trils : (K, d, d) tensor, lower triangular with positive diagonals
    labels : (N,) int64 tensor, optional
        Component each ``x_i`` was drawn from ...
    latent : (N, d) tensor, optional
        ... and its latent ``z_i`` (``x_i = m_{k_i} + L_{k_i} z_i``); both or neither. Then
        ``z_{i k_i}`` is ``z_i`` rather than a triangular solve (same value, fewer lost digits).

    Returns
    -------
    grad_logits (K,), grad_means (K, d), grad_scale_trils (K, d, d) lower triangular.
    """
    if (labels is None) != (latent is None):
        raise ValueError("give both labels and latent, or neither")
    z, logn = _component_terms(x, means, scale_trils, labels, latent)
    logw = torch.log_softmax(logits, 0)
    resp = torch.softmax(logw[:, None] + logn, dim=0)            # (K, N)
    ck = resp * c[None, :]                                       # c_i r_ik
    csum = ck.sum(1)
    grad_logits = csum - torch.exp(logw) * c.sum()
    rhs = torch.cat([torch.bmm(z, ck[:, :, None]),
                     torch.bmm(z * ck[:, None, :], z.transpose(1, 2))], dim=2)
    sol = torch.linalg.solve_triangular(scale_trils.transpose(1, 2), rhs, upper=True)
    inv_diag = 1.0 / torch.diagonal(scale_trils, dim1=1, dim2=2)
    grad_l = torch.tril(sol[:, :, 1:]) - torch.diag_embed(csum[:, None] * inv_diag)
    return grad_logits, sol[:, :, 0], grad_l


# ------------------------------------------------------------------------------- k-means
def kmeans(x: torch.Tensor, k: int, *, generator: int | torch.Generator | None = None,
           iters: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding (Arthur & Vassilvitskii 2007), float64.

    Parameters
    ----------
    x : (P, d) array-like, P >= k
    k : int
    generator : seed, torch.Generator or None (the seeding draws)
    iters : int
        Maximum Lloyd iterations; stops earlier when no label changes.

    Returns
    -------
    centres : (k, d) float64 tensor
    labels : (P,) int64 tensor, every cluster non-empty
    """
    pts = as_tensor(x, "x").detach().double()
    if pts.ndim != 2:
        raise ValueError(f"x must have shape (P, d), got {tuple(pts.shape)}")
    check_finite(pts, "x")
    k = check_positive_int(k, "k")
    if k > pts.shape[0]:
        raise ValueError(f"k must be at most the number of points {pts.shape[0]}, got {k}")
    g = torch_generator(generator)
    centres = [pts[int(torch.randint(pts.shape[0], (1,), generator=g))]]
    d2 = ((pts - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / len(d2))
        j = int(torch.multinomial(probs, 1, generator=g))
        centres.append(pts[j])
        d2 = torch.minimum(d2, ((pts - pts[j]) ** 2).sum(1))
    c = torch.stack(centres)
    labels = torch.full((pts.shape[0],), -1, dtype=torch.long)
    for _ in range(check_positive_int(iters, "iters")):
        new = torch.cdist(pts, c).argmin(1)
        counts = torch.bincount(new, minlength=k)
        for j in torch.nonzero(counts == 0).flatten().tolist():
            # an empty cluster takes the point farthest from its centre
            far = int(((pts - c[new]) ** 2).sum(1).argmax())
            new[far] = j
        if torch.equal(new, labels):
            break
        labels = new
        c = torch.stack([pts[labels == j].mean(0) for j in range(k)])
    return c, labels


def kmeans_mixture(x: torch.Tensor, k: int, *, generator: int | torch.Generator | None = None,
                   dtype=None, shrink: float = 1e-3) -> GaussianMixture:
    """A ``k``-component Gaussian mixture fitted to samples by :func:`kmeans`.

    Weights are the cluster fractions, means the centres, covariances the clusters' empirical
    covariances plus ``shrink * tr(C_all) / d`` times the identity (``C_all``: covariance of
    all points), so a cluster of fewer than ``d + 1`` points still gives a valid Gaussian.

    Parameters
    ----------
    x : (P, d) array-like
    k : int, 1 <= k <= P
    generator : seed, torch.Generator or None
    dtype : dtype of the result (default: that of ``x``)
    shrink : float > 0

    Returns
    -------
    GaussianMixture
    """
    given = as_tensor(x, "x").detach()
    centres, labels = kmeans(given, k, generator=generator)
    pts = given.double()
    d = pts.shape[1]
    centred_all = pts - pts.mean(0)
    ridge = shrink * float((centred_all * centred_all).sum()) / max(pts.shape[0] - 1, 1) / d
    ridge = ridge if ridge > 0 else shrink
    covs, weights = [], []
    for j in range(k):
        members = pts[labels == j]
        diff = members - centres[j]
        cov = diff.T @ diff / max(members.shape[0] - 1, 1)
        covs.append(0.5 * (cov + cov.T) + ridge * torch.eye(d, dtype=torch.float64))
        weights.append(members.shape[0] / pts.shape[0])
    dt = resolve_dtype(dtype) if dtype is not None else given.dtype
    return GaussianMixture(torch.tensor(weights, dtype=torch.float64), centres,
                           torch.stack(covs)).to(dtype=dt)
