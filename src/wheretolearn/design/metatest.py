"""Meta-test family of deployment distributions (paper SM F.1 eqs. F.3-F.4, SPEC §3).

``J`` Gaussians ``Q_j = N(m_j, C_j)`` with ``m_j ~ N(0, I_d)`` and ``C_j ~ Wishart(d + 1, I_d)``,
fixed once drawn. Each gets ``L`` "seen" samples (used by the bilevel adjoint step and to
monitor training) and ``U`` "unseen" samples (held out, for the reported error).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from scipy import stats

from .._validation import (check_nonnegative_int, check_positive_int, numpy_generator,
                           resolve_dtype)
from ..measures.gaussian import Gaussian
from ..report.metrics import relative_ood_error

__all__ = ["MetaTest", "make_metatest"]

# A Wishart(d + 1, I) draw is positive definite with probability one; draws whose smallest
# eigenvalue falls below this fraction of the largest are redrawn (documented, rare).
_MIN_EIG_RATIO = 1e-8
_MAX_REDRAWS = 100


@dataclass(frozen=True)
class MetaTest:
    """A fixed meta-test family with seen / unseen samples and their labels.

    Attributes
    ----------
    measures : list of Gaussian
        The ``J`` deployment distributions ``Q_j``.
    seen_x : (J, L, d) tensor
    seen_y : (J, L) tensor
    unseen_x : (J, U, d) tensor
    unseen_y : (J, U) tensor
    """

    measures: list[Gaussian]
    seen_x: torch.Tensor
    seen_y: torch.Tensor
    unseen_x: torch.Tensor
    unseen_y: torch.Tensor

    @property
    def dim(self) -> int:
        """Input dimension ``d``."""
        return int(self.seen_x.shape[-1])

    @property
    def n_measures(self) -> int:
        """Number of measures ``J``."""
        return int(self.seen_x.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.seen_x.dtype

    def split(self, split: str = "unseen") -> tuple[torch.Tensor, torch.Tensor]:
        """``(x (J, M, d), y (J, M))`` of ``split`` in {"seen", "unseen", "all"}."""
        if split == "seen":
            return self.seen_x, self.seen_y
        if split == "unseen":
            return self.unseen_x, self.unseen_y
        if split == "all":
            return (torch.cat([self.seen_x, self.unseen_x], 1),
                    torch.cat([self.seen_y, self.unseen_y], 1))
        raise ValueError(f"split must be 'seen', 'unseen' or 'all', got {split!r}")

    def error(self, predict: Callable[[torch.Tensor], Any], *, split: str = "unseen") -> float:
        """Relative root OOD error (SPEC §1) of ``predict`` on the samples of ``split``.

        Parameters
        ----------
        predict : callable
            Maps inputs ``(M, d)`` (tensor, dtype of this meta-test) to predictions ``(M,)``.
        split : "seen" | "unseen" | "all"
        """
        x, y = self.split(split)
        j, m, d = x.shape
        with torch.no_grad():
            pred = predict(x.reshape(j * m, d))
        if hasattr(pred, "detach"):
            pred = pred.detach()
        pred = torch.as_tensor(np.asarray(pred) if not isinstance(pred, torch.Tensor) else pred)
        if pred.numel() != j * m:
            raise ValueError(f"predict must return {j * m} values for inputs of shape "
                             f"({j * m}, {d}), got shape {tuple(pred.shape)}")
        return relative_ood_error(pred.reshape(j, m), y)

    def to(self, dtype: Any) -> "MetaTest":
        """A copy with every tensor (samples, labels, measures) cast to ``dtype``."""
        dt = resolve_dtype(dtype)
        return MetaTest([q.to(dt) for q in self.measures], self.seen_x.to(dt), self.seen_y.to(dt),
                        self.unseen_x.to(dt), self.unseen_y.to(dt))


def _wishart_covariances(d: int, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` draws of Wishart(d + 1, I_d), each checked to be numerically positive definite."""
    dist = stats.wishart(df=d + 1, scale=np.eye(d))
    draws = np.asarray(dist.rvs(size=n, random_state=rng), dtype=np.float64).reshape(n, d, d)
    covs = []
    for c in draws:
        for _attempt in range(_MAX_REDRAWS):
            c = 0.5 * (c + c.T)
            eig = np.linalg.eigvalsh(c)
            if eig[0] > _MIN_EIG_RATIO * eig[-1]:
                break
            c = np.asarray(dist.rvs(random_state=rng), dtype=np.float64).reshape(d, d)
        else:  # pragma: no cover - probability ~0
            raise RuntimeError(f"could not draw a well-conditioned Wishart({d + 1}, I_{d}) matrix")
        covs.append(c)
    return covs


def make_metatest(problem, *, n_measures: int = 10, n_seen: int = 500, n_unseen: int = 4500,
                  seed: int | np.random.Generator | None = 0, dtype: Any = torch.float32,
                  dim: int | None = None) -> MetaTest:
    """Draw the meta-test family and label its samples with ``problem``.

    Parameters
    ----------
    problem : Problem
        Ground truth with ``input_shape == (d,)`` and scalar output.
    n_measures : int
        ``J`` (paper: 10).
    n_seen, n_unseen : int
        Samples per measure used by the adjoint step (paper: 500) and held out (paper: 4500).
    seed : int, numpy Generator or None
        Everything (means, covariances, samples) comes from this one generator.
    dtype : float32 (default) or float64
        dtype of the stored samples and labels; labels are computed in float64 first.
    dim : int, optional
        Input dimension; defaults to ``problem.input_shape[0]``.

    Returns
    -------
    MetaTest
    """
    if len(problem.input_shape) != 1 or problem.output_shape != ():
        raise ValueError(f"problem must map (B, d) inputs to (B,) outputs, got input_shape "
                         f"{problem.input_shape} and output_shape {problem.output_shape}")
    d = problem.input_shape[0] if dim is None else check_positive_int(dim, "dim")
    if d != problem.input_shape[0]:
        raise ValueError(f"dim must equal the problem's input dimension {problem.input_shape[0]}, "
                         f"got {d}")
    j = check_positive_int(n_measures, "n_measures")
    n_seen = check_positive_int(n_seen, "n_seen")
    n_unseen = check_nonnegative_int(n_unseen, "n_unseen")
    dt = resolve_dtype(dtype)
    rng = numpy_generator(seed)
    means = rng.standard_normal((j, d))
    covs = _wishart_covariances(d, j, rng)
    chols = np.stack([np.linalg.cholesky(c) for c in covs])
    z = rng.standard_normal((j, n_seen + n_unseen, d))
    x = means[:, None, :] + np.einsum("jmk,jlk->jml", z, chols)
    x_t = torch.from_numpy(x)
    y_t = problem(x_t.reshape(-1, d)).detach().reshape(j, n_seen + n_unseen)
    measures = [Gaussian(torch.from_numpy(means[i]).to(dt),
                         scale_tril=torch.from_numpy(chols[i]).to(dt)) for i in range(j)]
    x_t, y_t = x_t.to(dt), y_t.to(dt)
    return MetaTest(measures, x_t[:, :n_seen].contiguous(), y_t[:, :n_seen].contiguous(),
                    x_t[:, n_seen:].contiguous(), y_t[:, n_seen:].contiguous())
