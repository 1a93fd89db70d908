"""Abstract base class shared by every probability measure in :mod:`wheretolearn.measures`.

A measure knows the shape of one draw (``event_shape``), can draw ``n`` samples from an
explicit generator (same seed -> same samples) and gives its second moment
``E ||x||^2`` (SPEC §4: ``m2(nu)`` enters the AMA bound).  Measures that have a mean
expose it as ``mean`` (an attribute or property); it is not part of the abstract contract
because, e.g., an arbitrary user measure may not know it in closed form.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from numbers import Integral

import torch

from .._validation import as_tensor, check_finite

__all__ = ["Measure", "check_n_samples", "normalized_weights"]


def check_n_samples(n) -> int:
    """Return ``n`` as ``int`` if it is an integer >= 1, else raise ``ValueError``."""
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return int(n)


def normalized_weights(weights, n: int, *, dtype: torch.dtype, device=None,
                       per: str = "point") -> torch.Tensor:
    """Probability weights ``w / sum(w)``, shape (n,); uniform ``1/n`` when ``weights`` is None.

    Raises ``ValueError`` naming ``weights`` unless they have shape (n,) (one per ``per``),
    are finite and non-negative with a positive sum.  Differentiable in ``weights``.
    """
    if weights is None:
        return torch.full((n,), 1.0 / n, dtype=dtype, device=device)
    w = as_tensor(weights, "weights", dtype=dtype, device=device)
    if w.ndim != 1 or w.shape[0] != n:
        raise ValueError(f"weights must have shape ({n},) (one per {per}), got {tuple(w.shape)}")
    check_finite(w.detach(), "weights")
    if bool((w.detach() < 0).any()) or float(w.detach().sum()) <= 0:
        raise ValueError("weights must be non-negative with a positive sum, got "
                         f"min {float(w.detach().min()):.3g}, sum {float(w.detach().sum()):.3g}")
    return w / w.sum()


class Measure(ABC):
    """A probability measure with samples of shape ``event_shape``.

    Subclasses implement ``event_shape``, ``sample`` and ``second_moment``; they should
    also provide ``dtype`` and, where defined, ``mean``.
    """

    @property
    @abstractmethod
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(d,)`` for R^d or ``(n, n)`` for a field on a grid."""

    @abstractmethod
    def sample(self, n: int, *, generator: int | torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` samples, shape ``(n, *event_shape)``."""

    @abstractmethod
    def second_moment(self) -> torch.Tensor:
        """``E ||x||^2`` as a scalar tensor (for fields: in the field's L2 / quadrature norm)."""

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of samples."""
        raise NotImplementedError(f"{type(self).__name__} does not define dtype")
