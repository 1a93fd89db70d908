"""Log-normal random fields ``exp(v)``, ``v`` a Gaussian random field (SPEC §2).

Default input measure of the ``darcy`` and ``radiative`` problems (conductivity, scattering
coefficient) and the optional random conductivity of ``ntd``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import Measure
from .fields import GaussianRandomField

__all__ = ["LogNormalField"]


class LogNormalField(Measure):
    """``exp(v)`` for a Gaussian random field ``v`` (a log-normal field, e.g. a scattering
    coefficient or conductivity); wraps :class:`~wheretolearn.measures.GaussianRandomField`.

    Parameters
    ----------
    log_field : GaussianRandomField
        The Gaussian log-field; kept as ``self.log_field`` so closed-form W2 / moments of
        the log-field stay available.
    origin : float
        The point ``o`` the second moment is taken about, ``E ||exp(v) - o||^2`` (default 0;
        radiative AMA measures it about ``a = 1``, where it evaluates ``G(0)``, SPEC §4).
    """

    def __init__(self, log_field: GaussianRandomField, *, origin: float = 0.0):
        if not isinstance(log_field, GaussianRandomField):
            raise TypeError(f"log_field must be a GaussianRandomField, got {type(log_field).__name__}")
        self.log_field = log_field
        self.origin = float(origin)
        if not math.isfinite(self.origin):
            raise ValueError(f"origin must be a finite number, got {origin!r}")

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.log_field.event_shape

    @property
    def dtype(self) -> torch.dtype:
        return self.log_field.dtype

    def sample_coefficients(self, n: int, generator=None) -> torch.Tensor:
        """Standard normal KLE coefficients of the log-field, shape (n, K)."""
        return self.log_field.sample_coefficients(n, generator)

    def from_coefficients(self, xi) -> torch.Tensor:
        """``exp`` of the log-field built from coefficients ``xi`` (n, K) -> (n, *grid)."""
        return torch.exp(self.log_field.from_coefficients(xi))

    def sample(self, n: int, *, generator: int | torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` positive fields, shape (n, *grid_shape)."""
        return self.from_coefficients(self.sample_coefficients(n, generator))

    def second_moment(self) -> torch.Tensor:
        """``E ||exp(v) - o||_h^2 = sum_x q_x [exp(2 m + 2 V) - 2 o exp(m + V / 2) + o^2]``
        (log-normal moments, ``m = m(x)``, ``V = Var v(x) = sum_k lambda_k phi_k(x)^2``), in
        the basis' quadrature norm; ``o`` the ``origin`` (0: ``E ||exp(v)||_h^2``)."""
        f = self.log_field
        phi = f.basis.functions.to(f.dtype).reshape(f.n_terms, -1)
        var = (f.eigenvalues[:, None] * phi ** 2).sum(0).reshape(f.event_shape)
        q = f.basis.quadrature_weights.to(f.dtype)
        m, o = f.mean_field(), self.origin
        return (q * (torch.exp(2.0 * m + 2.0 * var) - 2.0 * o * torch.exp(m + 0.5 * var)
                     + o ** 2)).sum()

    def with_params(self, **params: Any) -> "LogNormalField":
        """A copy whose log-field has some of ``alpha, tau, sigma, mean`` replaced."""
        f = self.log_field
        current = f.parameters()
        unknown = sorted(set(params) - set(current))
        if unknown:
            raise ValueError(f"unknown parameter {unknown[0]!r} for LogNormalField; allowed: "
                             f"{', '.join(sorted(current))}")
        return LogNormalField(GaussianRandomField(f.basis, dtype=f.dtype, **{**current, **params}),
                              origin=self.origin)

    def to_dict(self) -> dict:
        """JSON-serialisable description."""
        out = {"kind": "lognormal", "log_field": self.log_field.to_dict()}
        if self.origin:
            out["origin"] = self.origin
        return out

    def __repr__(self) -> str:
        return f"LogNormalField({self.log_field!r})"
