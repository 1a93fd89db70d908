"""Input validation used at the public boundary.

Every check raises ``ValueError`` / ``TypeError`` with a message that names the argument,
the value that was given and what is allowed, e.g.
``cov must be symmetric positive definite, got smallest eigenvalue -3.1e-02``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch

__all__ = [
    "check_type",
    "check_int",
    "check_seconds",
    "check_positive_int",
    "check_nonnegative_int",
    "check_positive_float",
    "check_probability",
    "check_int_range",
    "check_sizes",
    "check_memory",
    "memory_limit_bytes",
    "format_bytes",
    "SIZE_LIMITS",
    "MAX_PROBLEM_OPTION",
    "check_finite",
    "check_shape",
    "check_spd",
    "check_bounds",
    "as_tensor",
    "resolve_dtype",
    "torch_generator",
    "set_frozen",
    "numpy_generator",
]


def _describe(value: Any) -> str:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"array of shape {tuple(value.shape)}"
    return repr(value)


def set_frozen(obj: Any, **values: Any) -> None:
    """Store checked (normalised) values on a frozen dataclass, from its ``__post_init__``
    (``set_frozen(self, lr=check_positive_float(self.lr, "lr"))``)."""
    for name, value in values.items():
        object.__setattr__(obj, name, value)


def check_type(value: Any, kind: type, name: str) -> Any:
    """``value`` unchanged, or ``TypeError`` naming ``name`` unless it is a ``kind`` (the
    option objects: "fit must be an EvaluationFit, got dict")."""
    if not isinstance(value, kind):
        article = "an" if kind.__name__[:1] in "AEIOU" else "a"
        raise TypeError(f"{name} must be {article} {kind.__name__}, got {type(value).__name__}")
    return value


def check_int(value: Any, name: str, low: int) -> int:
    """``value`` as an ``int``, or ``ValueError`` naming ``name`` unless it is an integer
    (Python's or numpy's; not a bool) ``>= low`` (a wrong type is a ``ValueError`` too,
    unlike :func:`check_positive_int`: the online option objects report every bad value so)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_seconds(value: Any, name: str, *, optional: bool = False) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is a finite number of seconds > 0
    (or None when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 < value < math.inf:
        allowed = "a finite number of seconds > 0" + (" or None" if optional else "")
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


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


#: Largest values of the size settings of each command (flags and config keys alike):
#: ``key -> (lowest, highest)``. Beyond them a run does not fit in memory or time on any
#: machine the package targets; the error names the key, the value and this range.
SIZE_LIMITS: dict[str, dict[str, tuple[int, int]]] = {
    "bilevel": {
        "dim": (1, 10_000), "n_train": (1, 100_000), "steps": (1, 10_000_000),
        "eval_n": (1, 100_000), "repeats": (1, 10_000), "trials": (1, 10_000),
        "trial_offset": (0, 1_000_000), "n_measures": (1, 10_000),
        "n_seen": (1, 10_000_000), "n_unseen": (1, 10_000_000), "num_threads": (1, 1024)},
    "ama": {
        "n": (5, 1024), "n_modes": (1, 1024), "n_measures": (1, 10_000),
        "n_seen": (1, 1_000_000), "n_unseen": (1, 1_000_000), "n_train": (1, 1_000_000),
        "n_opt": (1, 1_000_000), "iterations": (0, 10_000), "branch_hidden": (1, 100_000),
        "trunk_hidden": (1, 100_000), "width": (1, 100_000), "steps": (1, 10_000_000),
        "decay_steps": (1, 1_000_000_000), "batch_size": (1, 1_000_000),
        "eval_every": (1, 10_000_000), "patience": (0, 10_000_000),
        "retrain_rounds": (0, 10_000), "retrain_steps": (1, 10_000_000),
        "lipschitz_samples": (1, 100_000), "lipschitz_iterations": (1, 100_000),
        "eval_n": (2, 1_000_000), "repeats": (1, 10_000), "workers": (0, 256),
        "num_threads": (1, 1024), "de.popsize": (1, 10_000), "de.maxiter": (1, 10_000_000),
        "adam.steps": (1, 10_000_000), "adam.rounds": (1, 10_000),
        "w2_samples": (1, 1_000_000), "flow.max_steps": (1, 10_000_000)},
    "generate": {
        "n": (1, 10_000_000), "chunk": (1, 1_000_000), "workers": (0, 256),
        "num_threads": (1, 1024)},
}
#: Largest integer problem option (a grid size, a number of steps) ``generate`` accepts.
MAX_PROBLEM_OPTION = 10_000_000
#: Longest list of layer widths.
_MAX_LIST = 1_000


def check_int_range(value: Any, name: str, low: int, high: int) -> int:
    """Return ``value`` as ``int`` if it is an integer in ``[low, high]``, else raise naming
    ``name``, the value and the allowed range."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer between {low} and {high}, "
                        f"got {_describe(value)}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return int(value)


def _lookup(values: Mapping[str, Any], key: str) -> Any:
    """``values[key]``, with ``"table.key"`` reaching into a sub-table; ``None`` if absent."""
    head, _, rest = key.partition(".")
    value = values.get(head)
    if rest:
        return value.get(rest) if isinstance(value, Mapping) else None
    return value


def check_sizes(values: Mapping[str, Any], limits: Mapping[str, tuple[int, int]], *,
                flags: Mapping[str, str] | None = None) -> None:
    """Check every size in ``values`` (a resolved config) against ``limits`` (see
    :data:`SIZE_LIMITS`); a list is checked entry by entry. The error names the flag and the
    config key, e.g. ``--dim (config key 'dim') must be between 1 and 10000, got 10**11``.
    Only the upper bounds are checked here: wrong types and values below the range are left
    to the command's own validation (and its messages)."""
    for key, (low, high) in limits.items():
        value = _lookup(values, key)
        if value is None:
            continue
        flag = (flags or {}).get(key)
        name = f"{flag} (config key {key!r})" if flag else f"config key {key!r}"
        if isinstance(value, (list, tuple)):
            if len(value) > _MAX_LIST:
                raise ValueError(f"{name} must have at most {_MAX_LIST} entries, "
                                 f"got {len(value)}")
            for item in value:
                _check_at_most(item, f"every entry of {name}", low, high)
        else:
            _check_at_most(value, name, low, high)


def _check_at_most(value: Any, name: str, low: int, high: int) -> None:
    """The upper bound of :func:`check_sizes` (types and lower bounds are the command's own
    validation, with its own messages)."""
    if isinstance(value, Integral) and not isinstance(value, bool) and value > high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")


def memory_limit_bytes() -> int:
    """The machine's physical memory in bytes (64 GiB when it cannot be read): the most a
    run may plan to hold at once."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 64 * 2**30


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"  # pragma: no cover


def check_memory(terms: Mapping[str, float], what: str, hint: str) -> None:
    """Raise ``ValueError`` when the bytes in ``terms`` (description -> bytes, a rough
    estimate of what ``what`` holds at once) exceed :func:`memory_limit_bytes`; the message
    names the largest term and ``hint`` (which settings to lower)."""
    total = float(sum(terms.values()))
    limit = memory_limit_bytes()
    if total <= limit:
        return
    largest = max(terms, key=lambda k: terms[k])
    raise ValueError(f"{what} needs about {format_bytes(total)} of memory (mostly "
                     f"{largest}: {format_bytes(terms[largest])}), more than this machine's "
                     f"{format_bytes(limit)}; {hint}")


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
