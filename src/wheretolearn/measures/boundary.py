"""Random Neumann boundary data of the NtD problem (SPEC §4, paper SM F.3 eqs. F.12/F.14).

A Gaussian random field on the boundary parameter ``s in [0, 1]`` whose mean is
``sin(omega (s - 1/2))``, with the boundary average removed from every sample (the NtD
compatibility condition). Lives with the other measures so that data sets, AMA and the
docs see one family of measures; :mod:`wheretolearn.problems.ntd` re-exports it.
"""

from __future__ import annotations

from typing import Any

import torch

from .._validation import as_tensor, check_finite, check_positive_int, resolve_dtype
from .base import Measure
from .fields import GaussianRandomField, SineBasis1D

__all__ = ["NtDInputMeasure"]


class NtDInputMeasure(Measure):
    """Random Neumann data ``g(s) = sin(omega (s - 1/2)) + noise``, mean removed (SPEC §4, F.12/F.14).

    ``s = linspace(0, 1, n_boundary)`` parametrises the boundary (clockwise, as
    :class:`NtD`); the noise is the 1-D Dirichlet sine KLE
    ``sum_{k <= n_modes} sqrt(lambda_k) xi_k sqrt(2) sin(pi k s)``,
    ``lambda_k = sigma^2 (pi^2 k^2 + tau^2)^(-alpha)``. After summing, the average over the
    ``n_boundary`` points is subtracted from every sample (the NtD compatibility condition
    for its uniform boundary quadrature).

    The Gaussian field *before* the mean removal is ``self.field`` (a
    :class:`~wheretolearn.measures.GaussianRandomField` with mean ``sin(omega (s - 1/2))``
    on a :class:`~wheretolearn.measures.SineBasis1D`). Samples, :meth:`second_moment` and
    :meth:`wasserstein2_squared` (also reached through
    :func:`~wheretolearn.measures.wasserstein2_squared`) all use the *mean-removed* law;
    ``wasserstein2(nu.field, q.field)`` is the W2 of the fields before the removal (paper
    F.16), a different quantity.

    Parameters
    ----------
    omega : float or 0-d tensor
        Frequency of the mean (may require grad: samples are differentiable in it).
    tau, alpha, sigma : float or 0-d tensor
        KLE parameters (defaults 3, 2, 3^1.5: the paper's training family).
    n_boundary : int
        Number of boundary points (``4n - 4`` for an ``n x n`` grid).
    n_modes : int, optional
        KLE modes, default ``min(128, n_boundary - 2)`` (``lambda_128 / lambda_1`` ~ 1e-8).
    dtype : "float32" | "float64"
    """

    def __init__(self, omega: Any, *, tau: Any = 3.0, alpha: Any = 2.0, sigma: Any = 3.0 ** 1.5,
                 n_boundary: int, n_modes: int | None = None, dtype: Any = None):
        dt = resolve_dtype(dtype)
        self.n_boundary = check_positive_int(n_boundary, "n_boundary")
        if self.n_boundary < 3:
            raise ValueError(f"n_boundary must be >= 3, got {n_boundary}")
        n_modes = min(128, self.n_boundary - 2) if n_modes is None else n_modes
        self.omega = as_tensor(omega, "omega", dtype=dt)
        if self.omega.ndim != 0:
            raise ValueError(f"omega must be a scalar, got shape {tuple(self.omega.shape)}")
        check_finite(self.omega.detach(), "omega")
        self.s = torch.linspace(0.0, 1.0, self.n_boundary, dtype=dt)
        self.field = GaussianRandomField(SineBasis1D(self.n_boundary, n_modes), alpha=alpha,
                                         tau=tau, sigma=sigma,
                                         mean=torch.sin(self.omega * (self.s - 0.5)), dtype=dt)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.n_boundary,)

    @property
    def dtype(self) -> torch.dtype:
        return self.field.dtype

    @property
    def n_modes(self) -> int:
        return self.field.n_terms

    @property
    def eigenvalues(self) -> torch.Tensor:
        """KLE eigenvalues ``lambda_k`` (n_modes,), differentiable in (tau, alpha, sigma)."""
        return self.field.eigenvalues

    def mean_function(self) -> torch.Tensor:
        """Mean of the samples: ``sin(omega (s - 1/2))`` minus its average, shape (n_boundary,)."""
        m = self.field.mean
        return m - m.mean()

    def sample_coefficients(self, n: int, generator=None) -> torch.Tensor:
        """Standard normal KLE coefficients ``xi`` (n, n_modes) (common random numbers)."""
        return self.field.sample_coefficients(n, generator)

    def from_coefficients(self, xi) -> torch.Tensor:
        """Coefficients ``xi`` (B, n_modes) -> mean-zero boundary data (B, n_boundary)."""
        g = self.field.from_coefficients(xi)
        return g - g.mean(dim=1, keepdim=True)

    def sample(self, n: int, *, generator: int | torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` boundary data, shape (n, n_boundary)."""
        return self.from_coefficients(self.sample_coefficients(n, generator))

    def second_moment(self) -> torch.Tensor:
        """``E ||g||_h^2`` of the mean-removed samples in the basis' trapezoid norm, closed form:
        ``||P m||_h^2 + sum_k lambda_k ||P phi_k||_h^2`` with ``P`` the mean removal."""
        q = self.field.basis.quadrature_weights.to(self.dtype)
        phi = self.field.basis.functions.to(self.dtype)
        phi_c = phi - phi.mean(dim=1, keepdim=True)
        m = self.mean_function()
        return (q * m ** 2).sum() + (self.eigenvalues * (q * phi_c ** 2).sum(dim=1)).sum()

    def wasserstein2_squared(self, other: "NtDInputMeasure") -> torch.Tensor:
        """``W2^2`` between the *mean-removed* laws (the law of the samples), closed form.

        Both samples are ``P(m + sum_k sqrt(l_k) xi_k phi_k)`` with ``P`` the mean removal, so
        they are Gaussian with means ``P m`` and covariances ``C = A^T L A`` in the quadrature
        norm, ``A = (P phi_k)_k Q^{1/2}`` sharing one ``B = A A^T`` (K, K). With
        ``C_i = M_i^T M_i``, ``M_i = L_i^{1/2} A``, the Bures fidelity
        ``tr (C1^{1/2} C2 C1^{1/2})^{1/2}`` is the nuclear norm of ``M1 M2^T =
        L1^{1/2} B L2^{1/2}``, so

            W2^2 = ||P (m1 - m2)||_q^2 + tr(L1 B) + tr(L2 B) - 2 ||L1^{1/2} B L2^{1/2}||_*

        (``B = I`` without the mean removal gives the field formula
        ``sum_k (sqrt(l1_k) - sqrt(l2_k))^2`` of SPEC §2). Differentiable in both measures'
        parameters. Raises ValueError when the two use different boundary grids or modes.
        """
        if not isinstance(other, NtDInputMeasure):
            raise TypeError(f"other must be an NtDInputMeasure, got {type(other).__name__}")
        if (self.n_boundary, self.n_modes) != (other.n_boundary, other.n_modes):
            raise ValueError(f"W2 needs the same boundary grid and modes, got "
                             f"({self.n_boundary}, {self.n_modes}) and "
                             f"({other.n_boundary}, {other.n_modes})")
        dt = torch.promote_types(self.dtype, other.dtype)
        q = self.field.basis.quadrature_weights.to(dt)
        phi = self.field.basis.functions.to(dt).reshape(self.n_modes, -1)
        phi_c = phi - phi.mean(dim=1, keepdim=True)
        b = (phi_c * q) @ phi_c.T
        l1, l2 = self.eigenvalues.to(dt), other.eigenvalues.to(dt)
        dm = self.mean_function().to(dt) - other.mean_function().to(dt)
        cross = l1.sqrt()[:, None] * b * l2.sqrt()[None, :]
        diag = torch.diagonal(b)
        return ((q * dm * dm).sum() + (l1 * diag).sum() + (l2 * diag).sum()
                - 2.0 * torch.linalg.svdvals(cross).sum())

    def with_params(self, **params: Any) -> "NtDInputMeasure":
        """A copy with some of ``omega, tau, alpha, sigma, n_modes`` replaced."""
        f = self.field
        current = {"omega": self.omega, "tau": f.tau, "alpha": f.alpha, "sigma": f.sigma,
                   "n_modes": self.n_modes}
        unknown = sorted(set(params) - set(current))
        if unknown:
            raise ValueError(f"unknown parameter {unknown[0]!r} for NtDInputMeasure; allowed: "
                             f"{', '.join(sorted(current))}")
        kw = {**current, **params}
        return NtDInputMeasure(kw.pop("omega"), n_boundary=self.n_boundary, dtype=self.dtype, **kw)

    def to_dict(self) -> dict:
        """JSON-serialisable description."""
        f = self.field
        return {"kind": "ntd_input", "omega": float(self.omega.detach()),
                "tau": float(f.tau.detach()), "alpha": float(f.alpha.detach()),
                "sigma": float(f.sigma.detach()), "n_boundary": self.n_boundary,
                "n_modes": self.n_modes}

    def __repr__(self) -> str:
        d = self.to_dict()
        return (f"NtDInputMeasure(omega={d['omega']:.6g}, tau={d['tau']:.6g}, alpha={d['alpha']:.6g}, "
                f"sigma={d['sigma']:.6g}, n_boundary={self.n_boundary}, n_modes={self.n_modes})")
