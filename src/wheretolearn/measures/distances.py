"""Wasserstein-2 distances and Gaussian Wasserstein barycenters (SPEC §2).

* Gaussian-Gaussian: Bures-Wasserstein closed form
  ``W2^2 = ||m1 - m2||^2 + tr C1 + tr C2 - 2 tr (C1^{1/2} C2 C1^{1/2})^{1/2}``.
* Gaussian random fields on one shared KLE basis: ``||dm||_h^2 + sum_k (sqrt(l1_k) - sqrt(l2_k))^2``
  with ``||.||_h`` the basis' quadrature L2 norm (the one ``second_moment`` uses).
* Empirical-Empirical: exact optimal transport (``ot.emd2``) on the squared Euclidean cost,
  or entropic (``ot.sinkhorn2``) as a faster option for many points.

Everything is differentiable with torch.  The matrix square root ``sqrtm_psd`` has its own
backward (the Sylvester equation ``S dS + dS S = dC`` solved in the eigenbasis), so its
gradient stays finite when eigenvalues repeat -- e.g. at ``C1 == C2`` or ``C = I``, where
differentiating ``eigh`` (and POT's ``bures_wasserstein_distance``) gives NaN.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch

from .._validation import as_tensor, check_finite
from .base import normalized_weights
from .empirical import Empirical
from .fields import GaussianRandomField
from .gaussian import Gaussian

__all__ = ["sqrtm_psd", "wasserstein2", "wasserstein2_squared", "barycenter", "BarycenterResult"]


# --------------------------------------------------------------------------- matrix sqrt
class _SqrtmPSD(torch.autograd.Function):
    """``S = V diag(sqrt(max(w, 0))) V^T`` with Sylvester-equation backward."""

    @staticmethod
    def forward(ctx, C):
        w, V = torch.linalg.eigh(0.5 * (C + C.mT))
        s = w.clamp_min(0).sqrt()
        ctx.save_for_backward(s, V)
        return (V * s.unsqueeze(-2)) @ V.mT

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        s, V = ctx.saved_tensors
        # d<G, S> = <G, dS> with S dS + dS S = dC; the Sylvester operator is self-adjoint,
        # so grad_C solves the same equation with G (symmetrised) on the right-hand side.
        g = V.mT @ (0.5 * (grad + grad.mT)) @ V
        denom = s.unsqueeze(-1) + s.unsqueeze(-2)
        tiny = torch.finfo(s.dtype).tiny ** 0.5
        return V @ (g / denom.clamp_min(tiny)) @ V.mT


def sqrtm_psd(C) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix.

    Parameters
    ----------
    C : (..., d, d) tensor or array-like
        Symmetric PSD (batched OK). It is symmetrised first; negative eigenvalues from
        round-off are clamped to 0.

    Returns
    -------
    (..., d, d) tensor
        ``S`` with ``S S = C``, ``S = S^T``. Differentiable once (no double backward); the
        gradient is finite whenever ``C`` is positive definite, also with repeated eigenvalues.
    """
    C = as_tensor(C, "C")
    if C.ndim < 2 or C.shape[-1] != C.shape[-2]:
        raise ValueError(f"C must have shape (..., d, d), got {tuple(C.shape)}")
    check_finite(C.detach(), "C")
    return _SqrtmPSD.apply(C)


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(x, 0))`` with gradient 0 (not NaN/inf) at 0, where W2 has a kink."""
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))),
                       torch.zeros_like(x))


# --------------------------------------------------------------------------- W2
def _w2sq_gaussian(a: Gaussian, b: Gaussian) -> torch.Tensor:
    if a.dim != b.dim:
        raise ValueError(f"Gaussians must have the same dimension, got {a.dim} and {b.dim}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    # float64 inside: the trace terms cancel when the covariances are close, and d is small
    m1, m2 = a.mean.double(), b.mean.double()
    L1, L2 = a.scale_tril.double(), b.scale_tril.double()
    C1, C2 = L1 @ L1.T, L2 @ L2.T
    r1 = sqrtm_psd(C1)
    cross = sqrtm_psd(r1 @ C2 @ r1)
    w2sq = ((m1 - m2) ** 2).sum() + torch.trace(C1) + torch.trace(C2) - 2 * torch.trace(cross)
    return w2sq.clamp_min(0).to(dtype)


def _w2sq_field(a: GaussianRandomField, b: GaussianRandomField) -> torch.Tensor:
    if not a.basis.same_as(b.basis):
        raise ValueError("Gaussian random fields must share the same basis (type, grid and "
                         f"modes) for the closed-form W2, got {a.basis!r} and {b.basis!r}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    w = a.basis.quadrature_weights.to(dtype)
    dm = a.mean.to(dtype) - b.mean.to(dtype)
    mean_term = (w * dm ** 2).sum() if dm.ndim else dm ** 2 * w.sum()
    spec = ((a.sqrt_eigenvalues.to(dtype) - b.sqrt_eigenvalues.to(dtype)) ** 2).sum()
    return mean_term + spec


def _w2sq_empirical(a: Empirical, b: Empirical, *, method: str, reg: float | None,
                    num_iter_max: int | None) -> torch.Tensor:
    import ot  # POT is heavy to import; only this path needs it

    if a.event_shape != b.event_shape:
        raise ValueError("empirical measures must have the same event_shape, got "
                         f"{a.event_shape} and {b.event_shape}")
    qa, qb = a.quadrature_weights, b.quadrature_weights
    if (qa is None) != (qb is None) or (qa is not None and not torch.equal(qa, qb)):
        raise ValueError("empirical measures must use the same quadrature_weights for W2")
    dtype = torch.promote_types(a.dtype, b.dtype)
    x, y = a.points.to(dtype).flatten(1), b.points.to(dtype).flatten(1)
    if qa is not None:
        root = qa.to(dtype).flatten().sqrt()
        x, y = x * root, y * root
    cost = ((x ** 2).sum(1, keepdim=True) + (y ** 2).sum(1) - 2 * x @ y.T).clamp_min(0)
    wa, wb = a.weights.to(dtype), b.weights.to(dtype)
    if method == "emd":
        return ot.emd2(wa, wb, cost, numItermax=num_iter_max or 100_000)
    if method == "sinkhorn":
        if reg is None:
            reg = 0.05 * float(cost.detach().mean())
        if not (isinstance(reg, (int, float)) and math.isfinite(reg) and reg > 0):
            raise ValueError(f"reg must be a finite number > 0, got {reg!r}")
        return ot.sinkhorn2(wa, wb, cost, float(reg), method="sinkhorn_log",
                            numItermax=num_iter_max or 1000)
    raise ValueError(f"method must be 'emd' or 'sinkhorn', got {method!r}")


def wasserstein2_squared(a, b, *, method: str = "emd", reg: float | None = None,
                         num_iter_max: int | None = None) -> torch.Tensor:
    """Squared Wasserstein-2 distance ``W2(a, b)^2`` (scalar tensor, differentiable).

    Supported pairs (SPEC §2):

    * ``Gaussian``, ``Gaussian``: Bures-Wasserstein closed form
      ``||m1 - m2||^2 + tr C1 + tr C2 - 2 tr (C1^{1/2} C2 C1^{1/2})^{1/2}``.
    * ``GaussianRandomField`` pair on the same basis:
      ``||m1 - m2||_h^2 + sum_k (sqrt(l1_k) - sqrt(l2_k))^2`` (quadrature L2 norm ``h``).
    * ``NtDInputMeasure`` pair: the mean-removed laws (the law of their samples), see
      :meth:`NtDInputMeasure.wasserstein2_squared`.
    * ``Empirical``, ``Empirical``: ``min_P <P, M>`` with ``M_il = ||x_i - y_l||^2``
      (weighted by the measures' ``quadrature_weights`` if set), exact (``method="emd"``,
      ``ot.emd2``) or entropic (``method="sinkhorn"``, ``ot.sinkhorn2`` in log domain with
      regularisation ``reg``; default ``0.05 * mean(M)``; the value returned is the
      transport cost ``<P_reg, M>``).

    Parameters
    ----------
    a, b : Measure
    method : {"emd", "sinkhorn"}
        Only for empirical measures.
    reg : float, optional
        Entropic regularisation for ``method="sinkhorn"``.
    num_iter_max : int, optional
        Iteration cap passed to POT for empirical measures (default 100000 for ``emd``,
        1000 for ``sinkhorn``; POT warns when it is reached).

    Returns
    -------
    scalar tensor in the promoted dtype of ``a`` and ``b``.

    Raises
    ------
    TypeError
        For unsupported pairs of measure types.
    """
    if isinstance(a, Gaussian) and isinstance(b, Gaussian):
        return _w2sq_gaussian(a, b)
    if isinstance(a, GaussianRandomField) and isinstance(b, GaussianRandomField):
        return _w2sq_field(a, b)
    from .boundary import NtDInputMeasure

    if isinstance(a, NtDInputMeasure) and isinstance(b, NtDInputMeasure):
        return a.wasserstein2_squared(b)   # the mean-removed laws, as their samples
    if isinstance(a, Empirical) and isinstance(b, Empirical):
        return _w2sq_empirical(a, b, method=method, reg=reg, num_iter_max=num_iter_max)
    raise TypeError("wasserstein2 supports (Gaussian, Gaussian), (GaussianRandomField, "
                    "GaussianRandomField) and (Empirical, Empirical) pairs, got "
                    f"({type(a).__name__}, {type(b).__name__}); for other measures draw "
                    "samples and wrap them in Empirical")


def wasserstein2(a, b, **kwargs) -> torch.Tensor:
    """Wasserstein-2 distance ``W2(a, b)`` (not squared); see :func:`wasserstein2_squared`.

    The gradient at ``a == b`` (where ``W2`` has a kink) is returned as 0; use
    :func:`wasserstein2_squared` as an objective when the two may coincide.
    """
    return _safe_sqrt(wasserstein2_squared(a, b, **kwargs))


# --------------------------------------------------------------------------- barycenter
@dataclass
class BarycenterResult:
    """Wasserstein barycenter of Gaussians.

    Attributes
    ----------
    measure : Gaussian
        The barycenter ``N(sum_j w_j m_j, S)``.
    iterations : int
        Fixed-point iterations performed.
    residual : float
        Relative fixed-point residual ``||sum_j w_j (S^{1/2} C_j S^{1/2})^{1/2} - S||_F / ||S||_F``
        at the returned ``S``.
    converged : bool
        Whether ``residual <= tol``.
    """

    measure: Gaussian
    iterations: int
    residual: float
    converged: bool = True

    def to_dict(self) -> dict:
        return {"measure": self.measure.to_dict(), "iterations": self.iterations,
                "residual": self.residual, "converged": self.converged}


def barycenter(gaussians: Sequence[Gaussian], weights=None, *, tol: float = 1e-10,
               max_iter: int = 1000) -> BarycenterResult:
    """Wasserstein-2 barycenter of Gaussians ``N(m_j, C_j)`` with weights ``w_j`` (SPEC §2).

    Mean ``sum_j w_j m_j``; covariance ``S`` solving ``S = sum_j w_j (S^{1/2} C_j S^{1/2})^{1/2}``
    by the fixed-point iteration of Alvarez-Esteban, del Barrio, Cuesta-Albertos and
    Matran (2016):

        S <- S^{-1/2} ( sum_j w_j (S^{1/2} C_j S^{1/2})^{1/2} )^2 S^{-1/2},

    started from ``S = sum_j w_j C_j``, run in float64 until the relative residual is
    ``<= tol``.  Differentiable (the iterations are unrolled by autograd).

    Parameters
    ----------
    gaussians : sequence of J Gaussian of the same dimension d
    weights : (J,) array-like, optional
        Non-negative, normalised to sum to 1; uniform by default.
    tol : float
        Relative residual tolerance.
    max_iter : int
        Iteration cap; a ``RuntimeWarning`` is issued if it is reached.

    Returns
    -------
    BarycenterResult
    """
    gaussians = list(gaussians)
    if not gaussians:
        raise ValueError("gaussians must contain at least one Gaussian, got none")
    for j, g in enumerate(gaussians):
        if not isinstance(g, Gaussian):
            raise TypeError(f"gaussians[{j}] must be a Gaussian, got {type(g).__name__}")
    dims = {g.dim for g in gaussians}
    if len(dims) != 1:
        raise ValueError(f"gaussians must all have the same dimension, got {sorted(dims)}")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be a number > 0, got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    out_dtype = gaussians[0].dtype
    for g in gaussians[1:]:
        out_dtype = torch.promote_types(out_dtype, g.dtype)
    w = normalized_weights(weights, len(gaussians), dtype=torch.float64, per="measure")
    means = torch.stack([g.mean.double() for g in gaussians])
    covs = torch.stack([g.cov.double() for g in gaussians])
    covs = 0.5 * (covs + covs.mT)
    mean = w @ means
    S = torch.einsum("j,jab->ab", w, covs)
    residual, it = math.inf, 0
    while True:
        root = sqrtm_psd(S)
        T = torch.einsum("j,jab->ab", w, sqrtm_psd(root @ covs @ root))
        residual = float(torch.linalg.matrix_norm(T - S).detach()
                         / torch.linalg.matrix_norm(S).detach())
        if residual <= tol or it >= max_iter:
            break
        inv_root = torch.linalg.inv(root)
        S = inv_root @ T @ T @ inv_root
        S = 0.5 * (S + S.T)
        it += 1
    converged = residual <= tol
    if not converged:
        warnings.warn(f"barycenter did not reach tol={tol:g} in max_iter={max_iter} "
                      f"iterations (residual {residual:.3g})", RuntimeWarning, stacklevel=2)
    measure = Gaussian(mean.to(out_dtype), S.to(out_dtype))
    return BarycenterResult(measure=measure, iterations=it, residual=residual,
                            converged=converged)
