"""Error metrics reported everywhere (SPEC §1, paper SM F.1 eq. F.5 and F.19).

Relative root OOD error over a meta-test family of ``J`` measures with ``M`` samples each:

    err = sqrt( sum_j mean_m ||G*(u_jm) - G_hat(u_jm)||^2 / sum_j mean_m ||G*(u_jm)||^2 )

(the paper's NtD / Darcy / RTE studies report ``err^2``, F.19: see
:func:`relative_ood_error_squared`). Per-sample relative errors and their tail (median, P95,
P99, max) judge the extremes, as the Breed paper does.

Inputs may be numpy arrays or torch tensors; results are Python floats / numpy arrays.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import stats

__all__ = ["relative_ood_error", "relative_ood_error_squared", "per_sample_relative_errors",
           "tail_summary", "mean_ci95"]


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array, got {type(x).__name__}") from exc
    return arr


def _per_measure(pred: Any, truth: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split ``pred`` / ``truth`` into per-measure arrays ``(M_j, ...)`` of equal shapes."""
    ragged = isinstance(pred, (list, tuple)) and isinstance(truth, (list, tuple))
    if ragged:
        if len(pred) != len(truth) or not pred:
            raise ValueError(f"pred and truth must list the same non-zero number of measures, "
                             f"got {len(pred)} and {len(truth)}")
        ps = [_to_numpy(p, "pred") for p in pred]
        ts = [_to_numpy(t, "truth") for t in truth]
    else:
        p, t = _to_numpy(pred, "pred"), _to_numpy(truth, "truth")
        if p.ndim < 2:
            raise ValueError(f"pred must have shape (J, M, *out), got {p.shape}")
        if p.shape != t.shape:
            raise ValueError(f"pred and truth must have the same shape, got {p.shape} and "
                             f"{t.shape}")
        ps, ts = list(p), list(t)
    for j, (p, t) in enumerate(zip(ps, ts)):
        if p.shape != t.shape or p.ndim < 1 or p.shape[0] < 1:
            raise ValueError(f"measure {j}: pred and truth must have the same shape (M, *out) "
                             f"with M >= 1, got {p.shape} and {t.shape}")
        if not (np.isfinite(p).all() and np.isfinite(t).all()):
            raise ValueError(f"measure {j}: pred and truth must be finite")
    return ps, ts


def relative_ood_error_squared(pred: Any, truth: Any) -> float:
    """Squared relative OOD error (paper eq. F.19).

    Parameters
    ----------
    pred, truth : (J, M, *out) arrays, or two length-J sequences of (M_j, *out) arrays
        Model predictions and ground truth on the samples of each meta-test measure.

    Returns
    -------
    float
        ``sum_j mean_m ||truth - pred||^2 / sum_j mean_m ||truth||^2``.
    """
    ps, ts = _per_measure(pred, truth)
    num = sum(float(((t - p) ** 2).reshape(t.shape[0], -1).sum(1).mean()) for p, t in zip(ps, ts))
    den = sum(float((t ** 2).reshape(t.shape[0], -1).sum(1).mean()) for t in ts)
    if den == 0.0:
        raise ValueError("truth is zero on every sample; the relative error is undefined")
    return num / den


def relative_ood_error(pred: Any, truth: Any) -> float:
    """Relative root OOD error (SPEC §1, paper eq. F.5): square root of
    :func:`relative_ood_error_squared`. Same arguments."""
    return math.sqrt(relative_ood_error_squared(pred, truth))


def per_sample_relative_errors(pred: Any, truth: Any, *, batch_ndim: int = 1) -> np.ndarray:
    """Per-sample relative errors ``||truth_b - pred_b|| / ||truth_b||``.

    Parameters
    ----------
    pred, truth : arrays of the same shape ``(*batch, *out)``
    batch_ndim : int
        How many leading axes index samples (1 for ``(B, *out)`` fields; 2 for ``(J, M)``
        scalar meta-test outputs, giving ``|t - p| / |t|`` per entry). The norm runs over the
        remaining axes.

    Returns
    -------
    ndarray of shape ``batch``. A sample whose truth is zero gets ``inf`` (``0`` if the
    prediction is zero too).
    """
    p, t = _to_numpy(pred, "pred"), _to_numpy(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred and truth must have the same shape, got {p.shape} and {t.shape}")
    bad = isinstance(batch_ndim, bool) or not isinstance(batch_ndim, int)
    if bad or not 1 <= batch_ndim <= p.ndim:
        raise ValueError(f"batch_ndim must be an integer in [1, {p.ndim}], got {batch_ndim!r}")
    batch = p.shape[:batch_ndim]
    n = int(np.prod(batch))
    num = np.sqrt(((t - p) ** 2).reshape(n, -1).sum(1))
    den = np.sqrt((t ** 2).reshape(n, -1).sum(1))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(num == 0.0, 0.0, num / den)
    return out.reshape(batch)


def tail_summary(errors: Any) -> dict[str, float]:
    """Mean, median, P95, P99 and max of a set of per-sample errors (any shape, flattened).

    Percentiles use numpy's default linear interpolation. Raises on an empty or non-finite
    input.
    """
    e = _to_numpy(errors, "errors").ravel()
    if e.size == 0:
        raise ValueError("errors must hold at least one value, got an empty array")
    if not np.isfinite(e).all():
        raise ValueError(f"errors must be finite, got {int((~np.isfinite(e)).sum())} "
                         "NaN or infinite entries")
    return {"mean": float(e.mean()), "median": float(np.median(e)),
            "p95": float(np.percentile(e, 95)), "p99": float(np.percentile(e, 99)),
            "max": float(e.max())}


def mean_ci95(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Mean and two-sided 95 % Student-t confidence interval over repeats.

    ``mean +- t_{0.975, n-1} * std(ddof=1) / sqrt(n)``; with one value ``lo = hi = mean``.

    Returns
    -------
    dict with keys ``"mean"``, ``"lo"``, ``"hi"`` (floats) and ``"n"`` (int).
    """
    v = _to_numpy(values, "values").ravel()
    if v.size == 0:
        raise ValueError("values must hold at least one value, got an empty sequence")
    if not np.isfinite(v).all():
        raise ValueError("values must be finite")
    mean = float(v.mean())
    if v.size == 1:
        return {"mean": mean, "lo": mean, "hi": mean, "n": 1}
    half = float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": int(v.size)}
