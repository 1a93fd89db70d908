"""Input/output standardisation shared by the neural operators (DeepONet, FNO; issue 26).

A model that derives from :class:`NormalisedOperator` holds the statistics of its training
split as buffers -- ``in_mean``, ``in_std`` (input-shaped, or scalars), ``out_mean``,
``out_std`` (output-shaped, or scalars) and ``norm_fitted`` (a 0-d bool) -- so that
``save`` / ``load`` / ``load_model`` keep them, and maps raw inputs to raw outputs::

    G(u) = out_mean + out_std * net((u - in_mean) / in_std)

The statistics are the identity (mean 0, std 1) until :meth:`NormalisedOperator.fit_normalization`
sets them; :func:`~wheretolearn.models.train_operator` calls it on the training split of a
model whose statistics are not fitted yet (``needs_normalization``).

Two kinds of statistics (:meth:`NormalisedOperator._statistics`):

* *pointwise* (DeepONet): one mean and one std per input / output point, the std floored at
  ``floor * mean_k std_k``; 1 everywhere when every point is constant;
* *pooled* (FNO, as neuraloperator's ``UnitGaussianNormalizer`` per channel): one mean and
  one std over all values of the field (a constant field keeps std 1), so the operator stays
  independent of the grid.

Both are computed in float64 (population std) and stored in the model's dtype.
"""

from __future__ import annotations

from typing import Any, Self

import torch
from torch import nn

from .._validation import as_tensor

#: Names of the statistics buffers, in the order :meth:`NormalisedOperator._statistics`
#: returns them for ``(x, y)``.
STAT_BUFFERS = ("in_mean", "in_std", "out_mean", "out_std")

#: Every buffer of the normalisation (a checkpoint holds all of them).
NORM_BUFFERS = (*STAT_BUFFERS, "norm_fitted")


def pointwise_statistics(v: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pointwise mean and floored std of ``v`` (n, m) float64: ``std_i <- max(std_i,
    floor * mean_k std_k)``, and 1 everywhere when every point is constant."""
    mean = v.mean(0)
    std = v.std(0, correction=0)
    scale = float(std.mean())
    if not scale > 0:
        return mean, torch.ones_like(std)
    return mean, std.clamp_min(floor * scale)


def pooled_statistics(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of all values of ``v`` (n, ...) float64 (0-d tensors; std 1 when every
    value is the same)."""
    std = float(v.std(correction=0))
    return (torch.tensor(float(v.mean()), dtype=torch.float64),
            torch.tensor(std if std > 0 else 1.0, dtype=torch.float64))


class NormalisedOperator(nn.Module):
    """Base of the operators with fitted input/output standardisation (module docstring).

    A subclass calls :meth:`_register_statistics` in its constructor, keeps
    ``self._config["normalize"]``, applies :meth:`_standardise` to its inputs and
    :meth:`_destandardise` to its outputs, and implements :meth:`_fit_shapes` (the shape
    check of the training pairs). ``POOLED`` picks the kind of statistics and ``STD_FLOOR``
    the floor of pointwise ones.
    """

    #: True: one mean and std per field (pooled); False: per point, floored.
    POOLED: bool = False
    #: Floor of a pointwise std as a fraction of the mean std over the points.
    STD_FLOOR: float = 1.0

    def _register_statistics(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                             dtype: torch.dtype) -> None:
        """Identity statistics of the given shapes (``()``: scalars) and ``norm_fitted``."""
        self.register_buffer("in_mean", torch.zeros(in_shape, dtype=dtype))
        self.register_buffer("in_std", torch.ones(in_shape, dtype=dtype))
        self.register_buffer("out_mean", torch.zeros(out_shape, dtype=dtype))
        self.register_buffer("out_std", torch.ones(out_shape, dtype=dtype))
        self.register_buffer("norm_fitted", torch.tensor(False))

    @property
    def normalize(self) -> bool:
        """Whether inputs and outputs are standardised (a constructor argument)."""
        return self._config["normalize"]

    @property
    def needs_normalization(self) -> bool:
        """True when ``normalize`` is on and :meth:`fit_normalization` has not run yet (on
        this model or on the weights loaded into it): :func:`train_operator` then fits the
        statistics on its training split."""
        return self.normalize and not bool(self.norm_fitted)

    def _fit_shapes(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Raise ``ValueError`` when the training pairs do not fit the model's shapes."""
        raise NotImplementedError

    def _statistics(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` of one side's training values ``v`` (n, ...) float64."""
        if self.POOLED:
            return pooled_statistics(v)
        return pointwise_statistics(v.reshape(v.shape[0], -1), self.STD_FLOOR)

    def fit_normalization(self, x: Any, y: Any) -> Self:
        """Set the statistics from training pairs; returns ``self``.

        Computed in float64 (population std), stored in the model's dtype. Per point
        (``POOLED`` False, the DeepONet): ``in_mean_i = mean_b x_bi``, ``in_std_i =
        max(sd_b x_bi, STD_FLOOR * mean_k sd_b x_bk)`` and the same for ``y``, std 1
        everywhere when every point is constant (:func:`pointwise_statistics`). Pooled
        (``POOLED`` True, the FNO): one mean and std over all values of ``x``, and of ``y``;
        a constant field keeps std 1 (:func:`pooled_statistics`).

        Parameters
        ----------
        x : (n, *in) array or tensor, n >= 1
            Inputs of the *training* split (never the held-out one).
        y : (n, *out) array or tensor
            Their outputs ``G*(x)``. Neither is modified.
        """
        if not self.normalize:
            raise ValueError(f"fit_normalization needs a model built with normalize=True; "
                             f"this {type(self).__name__} has normalize=False")
        xt = as_tensor(x, "x", dtype=torch.float64).detach().cpu()
        yt = as_tensor(y, "y", dtype=torch.float64).detach().cpu()
        self._fit_shapes(xt, yt)
        for name, t in (("x", xt), ("y", yt)):
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} must be finite to fit the normalisation statistics")
        stats = (*self._statistics(xt), *self._statistics(yt))
        with torch.no_grad():
            for name, value in zip(STAT_BUFFERS, stats):
                getattr(self, name).copy_(value)
            self.norm_fitted.fill_(True)
        return self

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - in_mean) / in_std`` (``x`` unchanged without ``normalize``)."""
        return (x - self.in_mean) / self.in_std if self.normalize else x

    def _destandardise(self, z: torch.Tensor) -> torch.Tensor:
        """``out_mean + out_std * z`` (``z`` unchanged without ``normalize``)."""
        return self.out_mean + self.out_std * z if self.normalize else z
