"""Input validation used at the public boundary.

Every check raises ``ValueError`` / ``TypeError`` with a message that names the argument,
the value that was given and what is allowed, e.g.
``cov must be symmetric positive definite, got smallest eigenvalue -3.1e-02``.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch

__all__ = [
    "check_positive_int",
    "check_nonnegative_int",
    "check_positive_float",
    "check_probability",
    "check_finite",
    "check_shape",
    "check_spd",
    "check_bounds",
    "as_tensor",
    "resolve_dtype",
    "torch_generator",
    "numpy_generator",
]


def _describe(value: Any) -> str:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"array of shape {tuple(value.shape)}"
    return repr(value)


def check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` as ``int`` if it is an integer >= 1, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be a positive integer, got {_describe(value)}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def check_nonnegative_int(value: Any, name: str) -> int:
    """Return ``value`` as ``int`` if it is an integer >= 0, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be a non-negative integer, got {_describe(value)}")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value}")
    return int(value)


def check_positive_float(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """Return ``value`` as ``float`` if finite and > 0 (or >= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {_describe(value)}")
    v = float(value)
    ok = math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        allowed = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return v


def check_probability(value: Any, name: str) -> float:
    """Return ``value`` as ``float`` if it lies in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {_describe(value)}")
    return float(value)


def check_finite(x: torch.Tensor | np.ndarray, name: str) -> None:
    """Raise if ``x`` holds NaN or infinite entries; the message counts them."""
    bad = ~torch.isfinite(x) if isinstance(x, torch.Tensor) else ~np.isfinite(np.asarray(x))
    n_bad = int(bad.sum())
    if n_bad:
        raise ValueError(f"{name} must be finite, got {n_bad} NaN or infinite entries "
                         f"in an array of shape {tuple(x.shape)}")


def check_shape(x: torch.Tensor | np.ndarray, shape: tuple[int | None, ...], name: str) -> None:
    """Check ``x.shape`` against ``shape``; ``None`` entries match any size.

    Example: ``check_shape(x, (None, 2), "x")`` accepts any ``(B, 2)`` array.
    """
    got = tuple(x.shape)
    ok = len(got) == len(shape) and all(s is None or s == g for s, g in zip(shape, got))
    if not ok:
        want = "(" + ", ".join("B" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {got}")


def check_spd(cov: torch.Tensor, name: str, *, rtol: float = 1e-10) -> None:
    """Raise unless ``cov`` (d, d) is symmetric positive definite."""
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"{name} must be a square (d, d) matrix, got shape {tuple(cov.shape)}")
    check_finite(cov, name)
    scale = float(cov.abs().max()) or 1.0
    asym = float((cov - cov.T).abs().max())
    if asym > 1e-6 * scale:
        raise ValueError(f"{name} must be symmetric, got max |C - C^T| = {asym:.3g}")
    smallest = float(torch.linalg.eigvalsh(cov.double()).min())
    if smallest <= rtol * scale:
        raise ValueError(f"{name} must be symmetric positive definite, "
                         f"got smallest eigenvalue {smallest:.3g}")


def check_bounds(low: np.ndarray, high: np.ndarray, name: str = "bounds") -> None:
    """Raise unless ``low < high`` elementwise and both are finite (scalars or (d,) vectors)."""
    low = np.atleast_1d(np.asarray(low, dtype=float))
    high = np.atleast_1d(np.asarray(high, dtype=float))
    if low.shape != high.shape:
        raise ValueError(f"{name}: low and high must have the same shape, got "
                         f"{low.shape} and {high.shape}")
    check_finite(low, f"{name} low")
    check_finite(high, f"{name} high")
    bad = np.flatnonzero(~(low < high))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name} must satisfy low < high in every dimension, got "
                         f"low={low.flat[i]} >= high={high.flat[i]} in dimension {i}")


def resolve_dtype(dtype: Any) -> torch.dtype:
    """Map ``None``/"float32"/"float64"/torch dtypes to a torch floating dtype (default float32)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        table = {"float32": torch.float32, "float64": torch.float64,
                 "single": torch.float32, "double": torch.float64}
        if dtype not in table:
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        return table[dtype]
    if dtype in (torch.float32, torch.float64):
        return dtype
    if dtype in (np.float32, np.float64):
        return torch.float32 if dtype == np.float32 else torch.float64
    raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")


def as_tensor(x: Any, name: str, *, dtype: torch.dtype | None = None,
              device: torch.device | str | None = None) -> torch.Tensor:
    """Convert ``x`` to a floating torch tensor without ever aliasing-and-mutating caller data.

    Tensors keep their autograd graph (no copy unless dtype/device change); the caller's
    object is never written to by library code, so aliasing is safe.  Numpy (and other
    array-like) input is always copied: ``torch.as_tensor`` would share the array's memory,
    so a later write to the caller's array would silently change a measure or batch built
    from it.
    """
    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be array-like, got {type(x).__name__}") from exc
    if dtype is None and not t.is_floating_point():
        dtype = torch.get_default_dtype()
    out = t.to(dtype=dtype or t.dtype, device=device)
    if out is t and not isinstance(x, torch.Tensor):
        out = out.clone()
    return out


def torch_generator(seed_or_gen: int | torch.Generator | None, *,
                    device: torch.device | str = "cpu") -> torch.Generator:
    """Return a ``torch.Generator``: passed through, seeded from an int, or fresh from entropy."""
    if isinstance(seed_or_gen, torch.Generator):
        return seed_or_gen
    g = torch.Generator(device=device)
    if seed_or_gen is None:
        g.seed()
    else:
        g.manual_seed(check_nonnegative_int(seed_or_gen, "seed"))
    return g


def numpy_generator(seed_or_gen: int | np.random.Generator | None) -> np.random.Generator:
    """Return a ``numpy.random.Generator`` from a seed, a Generator or ``None``."""
    if isinstance(seed_or_gen, np.random.Generator):
        return seed_or_gen
    if seed_or_gen is not None:
        check_nonnegative_int(seed_or_gen, "seed")
    return np.random.default_rng(seed_or_gen)
