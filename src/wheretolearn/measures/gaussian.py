"""Gaussian measures ``N(m, C)`` on R^d parametrised by ``(m, L)`` with ``C = L L^T``.

Paper §4.1 / SPEC §2: reparametrised sampling ``x = m + L z`` so that samples are
differentiable in ``(m, L)``; ``log_prob`` is differentiable too, which gives the score
``grad_theta log p(x; theta)`` used by the bilevel adjoint gradient (paper eq. 4.4).
"""

from __future__ import annotations

import math

import torch

from .._validation import as_tensor, check_finite, check_spd, resolve_dtype, torch_generator
from .base import Measure, check_n_samples

__all__ = ["Gaussian", "DIAG_CLAMP", "clamp_scale_tril", "empirical_gaussians"]

#: Value that replaces non-positive diagonal entries of the Cholesky factor (SPEC §2).
DIAG_CLAMP = 1e-7


def clamp_scale_tril(L, min_diag: float = DIAG_CLAMP) -> torch.Tensor:
    """Project a Cholesky-factor update back onto valid factors (SPEC §2).

    Keeps the lower triangle of ``L`` and replaces every non-positive diagonal entry by
    ``min_diag`` so that ``C = L L^T`` stays positive definite after a gradient step.

    Parameters
    ----------
    L : (..., d, d) tensor or array-like
        Never modified; a new tensor is returned (differentiable where not clamped).
    min_diag : float
        Replacement value, > 0 (default ``DIAG_CLAMP = 1e-7``).

    Returns
    -------
    (..., d, d) tensor
    """
    if isinstance(min_diag, bool) or not isinstance(min_diag, (int, float)) or not (
            math.isfinite(min_diag) and min_diag > 0):
        raise ValueError(f"min_diag must be a finite number > 0, got {min_diag!r}")
    t = as_tensor(L, "L")
    if t.ndim < 2 or t.shape[-1] != t.shape[-2]:
        raise ValueError(f"L must have shape (..., d, d), got {tuple(t.shape)}")
    low = torch.tril(t)
    diag = torch.diagonal(low, dim1=-2, dim2=-1)
    fixed = torch.where(diag > 0, diag, torch.full_like(diag, float(min_diag)))
    return low - torch.diag_embed(diag) + torch.diag_embed(fixed)


class Gaussian(Measure):
    """Gaussian measure ``N(mean, cov)``.

    Parameters
    ----------
    mean : (d,) array-like
    cov : (d, d) array-like, optional
        Symmetric positive definite covariance. Give exactly one of ``cov`` / ``scale_tril``.
    scale_tril : (d, d) array-like, optional
        Lower-triangular ``L`` with ``C = L L^T``; its diagonal must be positive. Tensors
        that require grad keep their graph, so samples and log-densities are differentiable.
    dtype : "float32" | "float64" | torch.dtype, optional
        Defaults to the dtype of ``mean`` when it is floating, else float32.
    """

    def __init__(self, mean, cov=None, *, scale_tril=None, dtype=None):
        if (cov is None) == (scale_tril is None):
            raise ValueError("give exactly one of cov or scale_tril")
        if dtype is None and isinstance(mean, torch.Tensor) and mean.is_floating_point():
            dtype = mean.dtype
        dt = resolve_dtype(dtype)
        m = as_tensor(mean, "mean", dtype=dt)
        if m.ndim != 1 or m.shape[0] < 1:
            raise ValueError(f"mean must be a (d,) vector with d >= 1, got shape {tuple(m.shape)}")
        check_finite(m.detach(), "mean")
        d = m.shape[0]
        if cov is not None:
            c = as_tensor(cov, "cov", dtype=dt)
            if tuple(c.shape) != (d, d):
                raise ValueError(f"cov must have shape ({d}, {d}) to match mean, got {tuple(c.shape)}")
            check_spd(c.detach(), "cov")
            L = torch.linalg.cholesky(0.5 * (c + c.T))
        else:
            L = as_tensor(scale_tril, "scale_tril", dtype=dt)
            if tuple(L.shape) != (d, d):
                raise ValueError(f"scale_tril must have shape ({d}, {d}) to match mean, "
                                 f"got {tuple(L.shape)}")
            check_finite(L.detach(), "scale_tril")
            if bool((torch.triu(L.detach(), 1) != 0).any()):
                raise ValueError("scale_tril must be lower triangular, got non-zero entries "
                                 "above the diagonal")
            diag = torch.diagonal(L.detach())
            if bool((diag <= 0).any()):
                raise ValueError("scale_tril must have a positive diagonal, got smallest "
                                 f"diagonal entry {float(diag.min()):.3g}")
        self.mean = m
        self.scale_tril = L

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Dimension ``d``."""
        return int(self.mean.shape[0])

    @property
    def event_shape(self) -> tuple[int, ...]:
        """``(d,)``."""
        return (self.dim,)

    @property
    def dtype(self) -> torch.dtype:
        return self.mean.dtype

    @property
    def cov(self) -> torch.Tensor:
        """Covariance ``C = L L^T``, shape (d, d)."""
        return self.scale_tril @ self.scale_tril.T

    def second_moment(self) -> torch.Tensor:
        """``E ||x||^2 = ||m||^2 + tr C`` (scalar tensor)."""
        return self.mean @ self.mean + (self.scale_tril ** 2).sum()

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, *, generator: int | torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` samples ``x = m + L z``, ``z ~ N(0, I)``; shape (n, d).

        Differentiable in ``mean`` / ``scale_tril`` when those require grad.
        """
        z = self.sample_latent(n, generator=generator)
        return self.transform(z)

    def sample_latent(self, n: int, *, generator=None) -> torch.Tensor:
        """Standard normal latent draws ``z`` of shape (n, d) (common random numbers)."""
        n = check_n_samples(n)
        g = torch_generator(generator)
        return torch.randn(n, self.dim, generator=g, dtype=self.dtype, device=g.device
                           ).to(self.mean.device)

    def transform(self, z: torch.Tensor) -> torch.Tensor:
        """Map latent ``z`` (n, d) to samples ``m + z L^T`` (n, d)."""
        return self.mean + z @ self.scale_tril.T

    # ------------------------------------------------------------------ density
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density at ``x`` (n, d) -> (n,):
        ``-0.5 ||L^{-1}(x - m)||^2 - sum log diag L - (d/2) log 2 pi``.
        """
        x = as_tensor(x, "x", dtype=self.dtype)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (n, {self.dim}), got {tuple(x.shape)}")
        diff = (x - self.mean).T
        w = torch.linalg.solve_triangular(self.scale_tril, diff, upper=False)
        maha = (w ** 2).sum(0)
        logdet = torch.log(torch.diagonal(self.scale_tril)).sum()
        return -0.5 * maha - logdet - 0.5 * self.dim * math.log(2 * math.pi)

    # ------------------------------------------------------------------ misc
    def detach(self) -> "Gaussian":
        """A copy that does not track gradients."""
        return Gaussian(self.mean.detach().clone(), scale_tril=self.scale_tril.detach().clone())

    def to(self, dtype=None, device=None) -> "Gaussian":
        dt = resolve_dtype(dtype) if dtype is not None else self.dtype
        return Gaussian(self.mean.to(dtype=dt, device=device),
                        scale_tril=self.scale_tril.to(dtype=dt, device=device))

    def to_dict(self) -> dict:
        """JSON-serialisable ``{"mean": [...], "cov": [[...]]}``."""
        return {"mean": self.mean.detach().cpu().double().tolist(),
                "cov": self.cov.detach().cpu().double().tolist()}

    @classmethod
    def from_dict(cls, data: dict, *, dtype=None) -> "Gaussian":
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, dict) or "mean" not in data or "cov" not in data:
            raise ValueError("data must be a dict with keys 'mean' and 'cov', got "
                             f"{sorted(data) if isinstance(data, dict) else type(data).__name__}")
        return cls(data["mean"], data["cov"], dtype=dtype)

    def __repr__(self) -> str:
        return f"Gaussian(dim={self.dim}, dtype={self.dtype})"


def empirical_gaussians(samples: torch.Tensor, *, dtype=None) -> list[Gaussian]:
    """Gaussians fitted to each group of samples: (J, L, d) -> J ``Gaussian`` measures.

    Mean ``mean_l x_l``, covariance ``(1/(L-1)) sum_l (x_l - m)(x_l - m)^T`` plus a tiny
    ``1e-10 * trace`` jitter so a degenerate group still gives a valid measure.
    """
    given = as_tensor(samples, "samples").detach()
    x = given.double()
    if x.ndim != 3 or x.shape[1] < 2:
        raise ValueError(f"samples must have shape (J, L, d) with L >= 2, got {tuple(x.shape)}")
    mean = x.mean(1)
    centred = x - mean[:, None, :]
    cov = centred.transpose(1, 2) @ centred / (x.shape[1] - 1)
    d = x.shape[2]
    jitter = 1e-10 * cov.diagonal(dim1=1, dim2=2).sum(1)[:, None, None] * torch.eye(d, dtype=x.dtype)
    cov = 0.5 * (cov + cov.transpose(1, 2)) + jitter
    dt = dtype or given.dtype
    return [Gaussian(mean[j], cov[j]).to(dtype=dt) for j in range(x.shape[0])]
