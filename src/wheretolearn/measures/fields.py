"""Gaussian random fields by Karhunen-Loeve expansion (KLE) on fixed grids (SPEC §2, §4).

A field on a grid is ``u = mean + sum_k sqrt(lambda_k) xi_k phi_k`` with ``xi_k ~ N(0, 1)``,
``phi_k`` eigenfunctions of the Laplacian (evaluated on the grid) and the Matern-like
spectrum of ``sigma^2 (-Laplace + tau^2 I)^{-alpha}``:

    lambda_k = sigma^2 (mu_k + tau^2)^(-alpha),   default sigma = tau^(alpha - dim/2).

Each basis carries quadrature weights under which its grid functions are exactly
orthonormal (discrete orthogonality of sines/cosines; the mode counts are capped so
that no two modes alias).  Samples, second moments and W2 all use that one quadrature and
the basis' one mode count, so ``E||u||_h^2 = ||mean||_h^2 + sum_k lambda_k`` exactly and the
closed-form W2 of :func:`wheretolearn.measures.wasserstein2` is the exact W2 of the
discretised fields in the ``||.||_h`` norm.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
import torch

from .._validation import as_tensor, check_finite, check_positive_int, resolve_dtype, torch_generator
from .base import Measure, check_n_samples

__all__ = ["KLEBasis", "SineBasis1D", "SineBasis2D", "FourierBasis1D", "GaussianRandomField",
           "matern_sqrt_eigenvalues", "trapezoid_weights"]


def matern_sqrt_eigenvalues(mu: torch.Tensor, sigma, tau, alpha) -> torch.Tensor:
    """``sqrt(lambda_k) = sigma (mu_k + tau^2)^(-alpha / 2)`` (K,) for the Laplacian
    eigenvalues ``mu`` (K,); differentiable in ``sigma``, ``tau``, ``alpha``."""
    return sigma * (mu + tau ** 2) ** (-0.5 * alpha)


def trapezoid_weights(n: int) -> torch.Tensor:
    """Trapezoid-rule weights (float64, shape ``(n,)``) of ``n >= 2`` equispaced nodes on
    [0, 1], end points included: ``h = 1/(n-1)`` inside, ``h/2`` at both ends (sum 1)."""
    q = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
    q[[0, -1]] *= 0.5
    return q


class KLEBasis(ABC):
    """Laplacian eigenfunctions on a grid; all arrays are float64.

    Attributes
    ----------
    grid_shape : tuple of int
    dim : int (1 or 2)
    n_terms : int, number K of KLE terms
    laplacian_eigenvalues : (K,) float64 tensor ``mu_k``
    functions : (K, *grid_shape) float64 tensor ``phi_k`` on the grid
    quadrature_weights : grid_shape float64 tensor; ``sum q phi_k phi_l = delta_kl``
    """

    grid_shape: tuple[int, ...]
    dim: int

    @abstractmethod
    def coordinates(self) -> np.ndarray:
        """Grid coordinates: (n,) in 1-D, (n, n, 2) in 2-D (``[..., 0]`` is x, ``ij`` indexing)."""

    @abstractmethod
    def _key(self) -> tuple:
        """Everything that determines the basis (used by ``same_as``)."""

    @property
    def n_terms(self) -> int:
        return int(self.laplacian_eigenvalues.shape[0])

    def _table(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """``getattr(self, name)`` cast to ``dtype``, cached (bases are immutable)."""
        cache = self.__dict__.setdefault("_cast_cache", {})
        key = (name, dtype)
        if key not in cache:
            cache[key] = getattr(self, name).to(dtype)
        return cache[key]

    def synthesize(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Grid functions ``sum_k c_k phi_k`` for ``c`` (n, K) -> (n, *grid_shape), one matmul."""
        phi = self._table("functions", coefficients.dtype).reshape(self.n_terms, -1)
        return (coefficients @ phi).reshape(coefficients.shape[0], *self.grid_shape)

    def project(self, u) -> torch.Tensor:
        """Coefficients ``c_k = sum_grid q phi_k u`` of grid functions u (n, *grid_shape) -> (n, K).

        Exact inverse of :meth:`synthesize` on the span of the basis (discrete orthonormality).
        """
        u = as_tensor(u, "u")
        if tuple(u.shape[1:]) != tuple(self.grid_shape) or u.ndim != len(self.grid_shape) + 1:
            raise ValueError(f"u must have shape (n, {', '.join(map(str, self.grid_shape))}), "
                             f"got {tuple(u.shape)}")
        weighted = (u * self._table("quadrature_weights", u.dtype)).reshape(u.shape[0], -1)
        return weighted @ self._table("functions", u.dtype).reshape(self.n_terms, -1).T

    def same_as(self, other) -> bool:
        """True when ``other`` is the same kind of basis on the same grid with the same modes."""
        return type(other) is type(self) and other._key() == self._key()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in zip(self._arg_names, self._key()))
        return f"{type(self).__name__}({args})"


class SineBasis1D(KLEBasis):
    """Dirichlet sine basis ``sqrt(2) sin(pi k x)``, ``mu_k = pi^2 k^2``, k = 1..n_modes.

    Grid: ``n_points`` equispaced nodes on [0, 1] including both ends (the field is 0
    there); trapezoid weights ``h`` (``h/2`` at the ends), ``h = 1/(n_points - 1)``.
    Requires ``n_modes <= n_points - 2`` (higher modes alias on the grid).
    """

    _arg_names = ("n_points", "n_modes")
    dim = 1

    def __init__(self, n_points: int, n_modes: int):
        n = check_positive_int(n_points, "n_points")
        k_max = check_positive_int(n_modes, "n_modes")
        if n < 3 or k_max > n - 2:
            raise ValueError(f"n_modes must be <= n_points - 2 = {n - 2} (modes beyond alias on "
                             f"the grid), got n_modes={k_max} with n_points={n}")
        self.n_points, self.n_modes = n, k_max
        self.grid_shape = (n,)
        x = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
        k = torch.arange(1, k_max + 1, dtype=torch.float64)
        self.laplacian_eigenvalues = (math.pi * k) ** 2
        self.functions = math.sqrt(2.0) * torch.sin(math.pi * k[:, None] * x[None, :])
        self.functions[:, [0, -1]] = 0.0  # sin(pi k) is 0 only up to round-off
        self.quadrature_weights = trapezoid_weights(n)

    def coordinates(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, self.n_points)

    def _key(self) -> tuple:
        return (self.n_points, self.n_modes)


class SineBasis2D(KLEBasis):
    """Dirichlet basis ``2 sin(pi k x) sin(pi l y)`` on the unit square, ``mu = pi^2 (k^2 + l^2)``.

    Grid ``(n_side, n_side)`` including the boundary, ``ij`` indexing (axis 0 is x);
    K = ``n_modes_per_side^2`` terms ordered lexicographically in (k, l), k outer.
    Trapezoid weights in each direction. Requires ``n_modes_per_side <= n_side - 2``.
    """

    _arg_names = ("n_side", "n_modes_per_side")
    dim = 2

    def __init__(self, n_side: int, n_modes_per_side: int):
        n = check_positive_int(n_side, "n_side")
        k_max = check_positive_int(n_modes_per_side, "n_modes_per_side")
        if n < 3 or k_max > n - 2:
            raise ValueError(f"n_modes_per_side must be <= n_side - 2 = {n - 2} (modes beyond "
                             f"alias on the grid), got {k_max} with n_side={n}")
        self.n_side, self.n_modes_per_side = n, k_max
        self.grid_shape = (n, n)
        self._side = SineBasis1D(n, k_max)
        mu1, q1 = self._side.laplacian_eigenvalues, self._side.quadrature_weights
        self.laplacian_eigenvalues = (mu1[:, None] + mu1[None, :]).reshape(-1)
        self.quadrature_weights = q1[:, None] * q1[None, :]

    @property
    def functions(self) -> torch.Tensor:
        """(K, n_side, n_side) tensor ``2 sin(pi k x) sin(pi l y)``; built on first use."""
        if "_functions" not in self.__dict__:
            f1 = self._side.functions
            k, n = f1.shape
            self._functions = (f1[:, None, :, None] * f1[None, :, None, :]).reshape(k * k, n, n)
        return self._functions

    def synthesize(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Separable synthesis ``u = F^T A F`` with ``A`` (n, k, l) the coefficients and ``F``
        the 1-D sine table: O(n K n_side) instead of O(n K n_side^2)."""
        f1 = self._side._table("functions", coefficients.dtype)
        k = self.n_modes_per_side
        a = coefficients.reshape(coefficients.shape[0], k, k)
        return f1.T @ a @ f1

    def project(self, u) -> torch.Tensor:
        u = as_tensor(u, "u")
        if u.ndim != 3 or tuple(u.shape[1:]) != self.grid_shape:
            raise ValueError(f"u must have shape (n, {self.n_side}, {self.n_side}), got "
                             f"{tuple(u.shape)}")
        f1 = self._side._table("functions", u.dtype)
        q = self._table("quadrature_weights", u.dtype)
        return (f1 @ (u * q) @ f1.T).reshape(u.shape[0], -1)

    def coordinates(self) -> np.ndarray:
        x = np.linspace(0.0, 1.0, self.n_side)
        return np.stack(np.meshgrid(x, x, indexing="ij"), axis=-1)

    def _key(self) -> tuple:
        return (self.n_side, self.n_modes_per_side)


class FourierBasis1D(KLEBasis):
    """Periodic basis on [0, P): ``sqrt(2/P) cos(2 pi k x / P)``, ``sqrt(2/P) sin(2 pi k x / P)``.

    k = 1..n_modes (no constant mode, as the authors), ``mu_k = (2 pi k / P)^2``; K =
    2 n_modes terms ordered ``cos_1, sin_1, cos_2, sin_2, ...``. Grid: ``n_points`` nodes
    ``x_j = j P / n_points`` (endpoint excluded), weights ``P / n_points``.
    Requires ``n_modes <= (n_points - 1) // 2`` (the Nyquist sine vanishes on the grid).
    """

    _arg_names = ("n_points", "n_modes", "period")
    dim = 1

    def __init__(self, n_points: int, n_modes: int, period: float = 2 * math.pi):
        n = check_positive_int(n_points, "n_points")
        k_max = check_positive_int(n_modes, "n_modes")
        if k_max > (n - 1) // 2:
            raise ValueError(f"n_modes must be <= (n_points - 1) // 2 = {(n - 1) // 2}, got "
                             f"n_modes={k_max} with n_points={n}")
        if isinstance(period, bool) or not isinstance(period, (int, float)) or not (
                math.isfinite(period) and period > 0):
            raise ValueError(f"period must be a finite number > 0, got {period!r}")
        self.n_points, self.n_modes, self.period = n, k_max, float(period)
        self.grid_shape = (n,)
        x = torch.arange(n, dtype=torch.float64) * (self.period / n)
        k = torch.arange(1, k_max + 1, dtype=torch.float64)
        arg = 2 * math.pi * k[:, None] * x[None, :] / self.period
        amp = math.sqrt(2.0 / self.period)
        self.functions = (amp * torch.stack([torch.cos(arg), torch.sin(arg)], dim=1)
                          ).reshape(2 * k_max, n)
        self.laplacian_eigenvalues = ((2 * math.pi * k / self.period) ** 2).repeat_interleave(2)
        self.quadrature_weights = torch.full((n,), self.period / n, dtype=torch.float64)

    def coordinates(self) -> np.ndarray:
        return np.arange(self.n_points) * (self.period / self.n_points)

    def _key(self) -> tuple:
        return (self.n_points, self.n_modes, self.period)


def _scalar_param(value, name: str, dtype) -> torch.Tensor:
    t = as_tensor(value, name, dtype=dtype)
    if t.ndim != 0:
        raise ValueError(f"{name} must be a scalar (python float or 0-d tensor), got shape "
                         f"{tuple(t.shape)}")
    if not math.isfinite(float(t.detach())):
        raise ValueError(f"{name} must be finite, got {float(t.detach())}")
    return t


class GaussianRandomField(Measure):
    """Centred-plus-mean Gaussian random field ``u = mean + sum_k sqrt(lambda_k) xi_k phi_k``.

    Parameters
    ----------
    basis : KLEBasis
        ``SineBasis1D``, ``SineBasis2D`` or ``FourierBasis1D``.
    alpha : float or 0-d tensor, > 0
        Smoothness exponent.
    tau : float or 0-d tensor, >= 0
        Inverse length scale.
    sigma : float or 0-d tensor, >= 0, optional
        Amplitude; default ``tau^(alpha - dim/2)`` (the authors' default).
    mean : scalar or grid_shape array-like / tensor
        Mean field (a scalar is a constant field).
    dtype : optional
        Default: the dtype of the first floating tensor among (alpha, tau, sigma, mean),
        else float32.

    Tensors that require grad keep their graph: samples, ``eigenvalues``,
    ``second_moment`` and the closed-form W2 are differentiable in (mean, alpha, tau, sigma).
    """

    def __init__(self, basis: KLEBasis, *, alpha, tau, sigma=None, mean=0.0, dtype=None):
        if not isinstance(basis, KLEBasis):
            raise TypeError(f"basis must be a SineBasis1D, SineBasis2D or FourierBasis1D, "
                            f"got {type(basis).__name__}")
        if dtype is None:
            for v in (alpha, tau, sigma, mean):
                if isinstance(v, torch.Tensor) and v.is_floating_point():
                    dtype = v.dtype
                    break
        dt = resolve_dtype(dtype)
        self.basis = basis
        self.alpha = _scalar_param(alpha, "alpha", dt)
        self.tau = _scalar_param(tau, "tau", dt)
        if float(self.alpha.detach()) <= 0:
            raise ValueError(f"alpha must be > 0, got {float(self.alpha.detach())}")
        if float(self.tau.detach()) < 0:
            raise ValueError(f"tau must be >= 0, got {float(self.tau.detach())}")
        if sigma is None:
            if float(self.tau.detach()) == 0 and float(self.alpha.detach()) <= basis.dim / 2:
                raise ValueError("the default sigma = tau^(alpha - dim/2) is undefined for "
                                 f"tau = 0 and alpha <= dim/2 = {basis.dim / 2}; give sigma")
            self.sigma = self.tau ** (self.alpha - basis.dim / 2)
        else:
            self.sigma = _scalar_param(sigma, "sigma", dt)
            if float(self.sigma.detach()) < 0:
                raise ValueError(f"sigma must be >= 0, got {float(self.sigma.detach())}")
        m = as_tensor(mean, "mean", dtype=dt)
        if m.ndim != 0 and tuple(m.shape) != tuple(basis.grid_shape):
            raise ValueError(f"mean must be a scalar or have the grid shape "
                             f"{tuple(basis.grid_shape)}, got {tuple(m.shape)}")
        check_finite(m.detach(), "mean")
        self.mean = m
        self._dtype = dt
        self._mu = basis.laplacian_eigenvalues.to(dt)

    # ------------------------------------------------------------------ spectrum
    @property
    def sqrt_eigenvalues(self) -> torch.Tensor:
        """``sqrt(lambda_k) = sigma (mu_k + tau^2)^(-alpha/2)``, shape (K,)."""
        return matern_sqrt_eigenvalues(self._mu, self.sigma, self.tau, self.alpha)

    @property
    def eigenvalues(self) -> torch.Tensor:
        """``lambda_k = sigma^2 (mu_k + tau^2)^(-alpha)``, shape (K,)."""
        return self.sqrt_eigenvalues ** 2

    # ------------------------------------------------------------------ Measure API
    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.basis.grid_shape)

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def n_terms(self) -> int:
        return self.basis.n_terms

    def sample_coefficients(self, n: int, generator=None) -> torch.Tensor:
        """Standard normal KLE coefficients ``xi``, shape (n, K) (fixed latent draws)."""
        n = check_n_samples(n)
        g = torch_generator(generator)
        return torch.randn(n, self.n_terms, generator=g, dtype=self.dtype)

    def from_coefficients(self, xi) -> torch.Tensor:
        """Fields ``mean + sum_k sqrt(lambda_k) xi_k phi_k`` for ``xi`` (n, K) -> (n, *grid_shape).

        One (for 2-D: separable) matmul; differentiable in the field parameters, so fixed
        ``xi`` give common random numbers across parameter updates.
        """
        xi = as_tensor(xi, "xi", dtype=self.dtype)
        if xi.ndim != 2 or xi.shape[1] != self.n_terms:
            raise ValueError(f"xi must have shape (n, {self.n_terms}), got {tuple(xi.shape)}")
        return self.mean + self.basis.synthesize(xi * self.sqrt_eigenvalues)

    def sample(self, n: int, *, generator=None) -> torch.Tensor:
        """Draw ``n`` fields, shape (n, *grid_shape)."""
        return self.from_coefficients(self.sample_coefficients(n, generator))

    def mean_field(self) -> torch.Tensor:
        """Mean broadcast to the grid, shape grid_shape."""
        return self.mean.expand(self.event_shape)

    def second_moment(self) -> torch.Tensor:
        """``E ||u||_h^2 = ||mean||_h^2 + sum_k lambda_k`` in the basis' quadrature norm."""
        q = self.basis.quadrature_weights.to(self.dtype)
        mean_sq = (q * self.mean ** 2).sum() if self.mean.ndim else self.mean ** 2 * q.sum()
        return mean_sq + self.eigenvalues.sum()

    def covariance_matrix(self) -> torch.Tensor:
        """Grid covariance ``Phi^T diag(lambda) Phi``, shape (G, G) with G = prod(grid_shape)."""
        phi = self.basis.functions.to(self.dtype).reshape(self.n_terms, -1)
        return phi.T @ (self.eigenvalues[:, None] * phi)

    def parameters(self) -> dict[str, torch.Tensor]:
        """``{"alpha", "tau", "sigma", "mean"}`` as tensors (possibly with graph)."""
        return {"alpha": self.alpha, "tau": self.tau, "sigma": self.sigma, "mean": self.mean}

    def detach(self) -> "GaussianRandomField":
        """A copy on the same basis whose parameters do not track gradients."""
        return GaussianRandomField(self.basis, alpha=self.alpha.detach(), tau=self.tau.detach(),
                                   sigma=self.sigma.detach(), mean=self.mean.detach(),
                                   dtype=self.dtype)

    def to_dict(self) -> dict:
        """JSON-serialisable parameters and basis description."""
        m = self.mean.detach().double()
        return {"basis": repr(self.basis), "alpha": float(self.alpha.detach()),
                "tau": float(self.tau.detach()), "sigma": float(self.sigma.detach()),
                "mean": float(m) if m.ndim == 0 else m.tolist()}

    def __repr__(self) -> str:
        return (f"GaussianRandomField({self.basis!r}, alpha={float(self.alpha.detach()):.4g}, "
                f"tau={float(self.tau.detach()):.4g}, sigma={float(self.sigma.detach()):.4g})")
