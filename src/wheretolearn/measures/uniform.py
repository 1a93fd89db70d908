"""Uniform measure on a box ``[low, high]`` in R^d (SPEC §3 baseline ``Uniform[0,1]^d``)."""

from __future__ import annotations

import math

import torch

from .._validation import as_tensor, check_finite, check_positive_int, resolve_dtype, torch_generator
from .base import Measure, check_n_samples

__all__ = ["Uniform"]


class Uniform(Measure):
    """Uniform distribution on ``prod_i [low_i, high_i]``.

    Parameters
    ----------
    low, high : (d,) array-like or scalars
        Box corners with ``low < high`` in every dimension. Scalars need ``dim``.
    dim : int, optional
        Dimension when both bounds are scalars (then the box is ``[low, high]^dim``).
    dtype : optional
        float32 by default (or the dtype of floating tensor ``low``).
    """

    def __init__(self, low=0.0, high=1.0, *, dim: int | None = None, dtype=None):
        if dtype is None and isinstance(low, torch.Tensor) and low.is_floating_point():
            dtype = low.dtype
        dt = resolve_dtype(dtype)
        lo, hi = as_tensor(low, "low", dtype=dt), as_tensor(high, "high", dtype=dt)
        for t, name in ((lo, "low"), (hi, "high")):
            if t.ndim > 1:
                raise ValueError(f"{name} must be a scalar or a (d,) vector, got shape "
                                 f"{tuple(t.shape)}")
            check_finite(t.detach(), name)
        if lo.ndim == 0 and hi.ndim == 0:
            if dim is None:
                raise ValueError("dim must be given when low and high are scalars")
            d = check_positive_int(dim, "dim")
        else:
            d = lo.shape[0] if lo.ndim else hi.shape[0]
            if dim is not None and check_positive_int(dim, "dim") != d:
                raise ValueError(f"dim={dim} does not match the length {d} of low/high")
        lo, hi = lo.expand(d), hi.expand(d)
        if lo.shape != hi.shape:
            raise ValueError(f"low and high must have the same length, got {tuple(lo.shape)} "
                             f"and {tuple(hi.shape)}")
        bad = torch.nonzero(~(lo.detach() < hi.detach())).flatten()
        if bad.numel():
            i = int(bad[0])
            raise ValueError(f"low must be < high in every dimension, got low={float(lo[i])} "
                             f">= high={float(hi[i])} in dimension {i}")
        self.low, self.high = lo, hi

    @property
    def dim(self) -> int:
        return int(self.low.shape[0])

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    @property
    def dtype(self) -> torch.dtype:
        return self.low.dtype

    @property
    def mean(self) -> torch.Tensor:
        """``(low + high) / 2``, shape (d,)."""
        return 0.5 * (self.low + self.high)

    @property
    def cov(self) -> torch.Tensor:
        """``diag((high - low)^2 / 12)``, shape (d, d)."""
        return torch.diag((self.high - self.low) ** 2 / 12)

    def second_moment(self) -> torch.Tensor:
        """``E||x||^2 = sum_i (low_i^2 + low_i high_i + high_i^2) / 3``."""
        return ((self.low ** 2 + self.low * self.high + self.high ** 2) / 3).sum()

    def sample(self, n: int, *, generator=None) -> torch.Tensor:
        """``low + (high - low) U``, ``U ~ U[0,1)^d``; shape (n, d)."""
        n = check_n_samples(n)
        g = torch_generator(generator)
        u = torch.rand(n, self.dim, generator=g, dtype=self.dtype, device=g.device)
        return self.low + (self.high - self.low) * u.to(self.low.device)

    def log_prob(self, x) -> torch.Tensor:
        """``-sum_i log(high_i - low_i)`` inside the box, ``-inf`` outside; (n, d) -> (n,)."""
        x = as_tensor(x, "x", dtype=self.dtype)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (n, {self.dim}), got {tuple(x.shape)}")
        inside = ((x >= self.low) & (x <= self.high)).all(1)
        logv = torch.log(self.high - self.low).sum()
        return torch.where(inside, -logv, torch.full_like(logv, -math.inf))

    def to_dict(self) -> dict:
        return {"low": self.low.detach().double().tolist(),
                "high": self.high.detach().double().tolist()}

    def __repr__(self) -> str:
        return f"Uniform(dim={self.dim}, dtype={self.dtype})"
