"""Finite mixtures ``sum_j w_j Q_j`` of measures (SPEC §2 "Mixture of the Q_j", §3 baseline)."""

from __future__ import annotations

from typing import Sequence

import torch

from .._validation import torch_generator
from .base import Measure, check_n_samples, normalized_weights

__all__ = ["Mixture"]


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
