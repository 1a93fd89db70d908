"""Particles of KLE coefficients pushed to positive fields: the training distribution of
particle AMA on radiative transport (paper §4.2, SM F.5; SPEC §4; issue 22).

A particle is a coefficient vector ``c`` (d,) on a sine basis; its field is the scattering
``a = exp(sum_k c_k phi_k)`` on the grid. The measure is ``nu = (1/M) sum_i delta_{a(c_i)}``;
its second moment and its W2 distances are computed on ``a`` (quadrature norm of the basis,
trapezoid rule), W2 between empirical measures by exact optimal transport (POT ``ot.emd``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._validation import check_finite, torch_generator
from .base import Measure, check_n_samples
from .empirical import silverman_bandwidth

__all__ = ["FieldParticles", "emd_w2_squared", "pairwise_sq_dist"]


def pairwise_sq_dist(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``C_ij = ||x_i - y_j||_q^2 = sum_p q_p (x_ip - y_jp)^2``.

    x : (M, *grid), y : (S, *grid), weights q : grid -> (M, S); differentiable in x and y.
    Expanded as ``|x|^2 + |y|^2 - 2 x.y`` (one matmul) and clamped at 0.
    """
    q = weights.reshape(1, -1).to(x.dtype)
    xf, yf = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1).to(x.dtype)
    cross = (xf * q) @ yf.T
    return ((xf ** 2 * q).sum(1)[:, None] + (yf ** 2 * q).sum(1)[None, :] - 2 * cross).clamp_min(0)


def emd_w2_squared(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor
                   ) -> tuple[torch.Tensor, np.ndarray]:
    """``W2(nu_x, nu_y)^2`` between two uniform empirical measures and its optimal plan.

    ``W2^2 = min_P sum_ij P_ij C_ij`` with ``C = pairwise_sq_dist(x, y, weights)`` and ``P``
    a coupling of the uniform weights ``1/M`` and ``1/S`` (exact LP, POT ``ot.emd``). The plan
    is computed on detached costs and held fixed, so the returned value is differentiable in
    ``x`` with the gradient of the optimal value (envelope theorem):
    ``d W2^2 / d x_i = 2 q * sum_j P_ij (x_i - y_j)``.

    Returns ``(value (scalar tensor), plan (M, S) float64 array)``; ``(inf, NaN plan)`` when a
    cost overflows (no transport problem is solved).
    """
    import ot

    cost = pairwise_sq_dist(x, y, weights)
    c64 = cost.detach().cpu().double().numpy()
    m, s = c64.shape
    if not np.isfinite(c64).all():            # overflowing fields: W2 is infinite
        return cost.sum() * np.inf, np.full((m, s), np.nan)
    plan = ot.emd(np.full(m, 1.0 / m), np.full(s, 1.0 / s), c64)
    value = (torch.as_tensor(plan, dtype=cost.dtype, device=cost.device) * cost).sum()
    return value, plan


class FieldParticles(Measure):
    """``M`` equally weighted particles ``c_i`` (M, d) of sine-KLE coefficients, as the
    empirical measure of their fields ``a_i = exp(sum_k c_ik phi_k)`` (M, *grid).

    Parameters
    ----------
    basis : KLEBasis
        ``phi_k`` (d = ``basis.n_terms``) and the quadrature weights of every norm.
    particles : (M, d) tensor
        Kept as given (may require grad: the fields, ``m2`` and W2 are differentiable in it);
        never modified.
    origin : float
        ``m2 = (1/M) sum_i ||a_i - origin||_q^2`` (SPEC §4: radiative AMA takes ``a = 1`` as
        the origin, where ``G(0)`` is evaluated).
    reference : callable, optional
        ``Q -> (S, *grid)`` fixed samples of a measure ``Q`` (its fields ``a``); used by
        :meth:`w2_squared_to`.

    ``sample(n)``: ``n == M`` returns the particles' fields themselves, in order (the
    labelled inputs of particle AMA); ``n < M`` a uniform subset without replacement;
    ``n > M`` the M particles plus ``n - M`` draws ``c_I + h z`` of the Gaussian kernel
    density around them in coefficient space (Silverman bandwidth ``h``, as
    :class:`~wheretolearn.measures.empirical.ParticleMeasure`).
    """

    def __init__(self, basis, particles, *, origin: float = 1.0,
                 reference: Callable[[Any], torch.Tensor] | None = None):
        c = particles if isinstance(particles, torch.Tensor) else torch.as_tensor(
            np.asarray(particles, dtype=np.float64))
        if c.ndim != 2 or c.shape[1] != basis.n_terms or c.shape[0] < 1:
            raise ValueError(f"particles must have shape (M, {basis.n_terms}) with M >= 1, got "
                             f"{tuple(c.shape)}")
        check_finite(c.detach(), "particles")
        self.basis, self.particles = basis, c
        self.origin = float(origin)
        self.reference = reference

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.basis.grid_shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.particles.dtype

    def __len__(self) -> int:
        return int(self.particles.shape[0])

    def fields(self, c: torch.Tensor | None = None) -> torch.Tensor:
        """``exp(sum_k c_k phi_k)`` (n, *grid) of coefficients ``c`` (n, d) (default: the
        particles); differentiable."""
        c = self.particles if c is None else c
        return torch.exp(self.basis.synthesize(c))

    @property
    def points(self) -> torch.Tensor:
        """The particles' fields (M, *grid): the inputs ``part1`` of ``J`` averages over."""
        return self.fields()

    def sample(self, n: int, *, generator=None) -> torch.Tensor:
        n = check_n_samples(n)
        m, c = len(self), self.particles
        if n == m:
            return self.fields()
        g = torch_generator(generator)
        if n < m:
            return self.fields(c[torch.randperm(m, generator=g)[:n].to(c.device)])
        h = silverman_bandwidth(c.detach())
        idx = torch.randint(m, (n - m,), generator=g)
        z = torch.randn(n - m, c.shape[1], generator=g, dtype=c.dtype)
        return self.fields(torch.cat([c, c[idx.to(c.device)] + z.to(c.device) * h]))

    def second_moment(self) -> torch.Tensor:
        """``(1/M) sum_i ||a_i - origin||_q^2`` (differentiable in the particles)."""
        q = self.basis.quadrature_weights.to(self.dtype)
        return (q * (self.fields() - self.origin) ** 2).reshape(len(self), -1).sum(1).mean()

    def w2_squared_to(self, other: Any) -> torch.Tensor:
        """``W2(nu, Q)^2`` against the fixed samples ``reference(Q)`` (exact OT on the
        fields, :func:`emd_w2_squared`); differentiable in the particles through the plan."""
        if self.reference is None:
            raise ValueError("FieldParticles.w2_squared_to needs reference= (fixed samples of Q)")
        y = self.reference(other)
        return emd_w2_squared(self.fields(), y, self.basis.quadrature_weights)[0]

    def detach(self) -> FieldParticles:
        return FieldParticles(self.basis, self.particles.detach(), origin=self.origin,
                              reference=self.reference)

    def to_dict(self) -> dict:
        """JSON summary (also the labelling cache key): ``M``, ``d``, summary statistics and
        a sha256 of the particles (float64), which identifies them without storing them."""
        c = self.particles.detach().cpu().double()
        h = hashlib.sha256(c.contiguous().numpy().tobytes()).hexdigest()
        return {"kind": "field_particles", "basis": repr(self.basis), "M": len(self),
                "d": int(c.shape[1]), "origin": self.origin,
                "coefficient_rms": float(c.pow(2).mean().sqrt()),
                "mean_coefficient_norm": float(c.mean(0).norm()), "sha256": h}

    def __repr__(self) -> str:
        return f"FieldParticles(M={len(self)}, d={self.particles.shape[1]}, {self.basis!r})"
