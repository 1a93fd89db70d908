"""Compare training sources: fit KRR on N samples of each, report the unseen OOD error.

Paper SM F.1 "Model evaluation" / SPEC §3: for each source and each N, draw N training
inputs, label them with ``G*``, fit kernel ridge regression with the same Gaussian kernel
and ridge ``eps`` (system ``K + N eps I``), and report the relative root OOD error on the
*unseen* meta-test samples

    err = sqrt( sum_j mean_u |G*(u) - f(u)|^2 / sum_j mean_u |G*(u)|^2 ),

as the mean and 95 % confidence interval over ``repeats`` independent draws.

Precision: the final fits run in float64 by default. With ``eps = 1e-7`` and N in the
thousands the kernel matrix is numerically singular in float32 (FACTS.md: float32
Cholesky of Gaussian kernel matrices fails below ~1e-4 jitter), and a failed or
jitter-polluted float32 fit would be charged to the source, not to the arithmetic. With
``dtype="float32"`` a fit whose Cholesky fails is redone in float64 and the fallback is
recorded; so is a float32 fit whose predictions overflow to non-finite values.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .._threads import torch_threads
from .._validation import check_positive_float, check_positive_int, check_type, resolve_dtype
from .baselines import TrainingSource

__all__ = ["EvaluationFit", "evaluate_sources", "fit_and_score", "source_seed", "name_key"]


@dataclass(frozen=True)
class EvaluationFit:
    """The KRR fits of :func:`evaluate_sources` (paper SM F.1 "Model evaluation").

    Attributes
    ----------
    bandwidth : float
        Kernel length scale ``s``.
    ridge : float
        Ridge ``eps`` (system ``K + N eps I``; paper: 1e-7).
    kernel : "gaussian" | "laplace"
    dtype : "float64" (default) or "float32" (with float64 fallback, module docstring)
    num_threads : int or None
        torch threads for each fit; None: the package's thread policy by the fit's size
        (:func:`wheretolearn._threads.default_num_threads`).
    """

    bandwidth: float
    ridge: float = 1e-7
    kernel: str = "gaussian"
    dtype: Any = torch.float64
    num_threads: int | None = None

    def __post_init__(self):
        from ..models.krr import check_kernel

        for name in ("bandwidth", "ridge"):
            object.__setattr__(self, name, check_positive_float(getattr(self, name),
                                                                f"EvaluationFit.{name}"))
        try:
            check_kernel(self.kernel)
            resolve_dtype(self.dtype)
        except ValueError as exc:
            raise ValueError(f"EvaluationFit.{exc}") from None
        if self.num_threads is not None:
            check_positive_int(self.num_threads, "EvaluationFit.num_threads")


def name_key(name: str) -> int:
    """A stable 32-bit integer for a source name (CRC-32 of its UTF-8 bytes): evaluation
    seeds are keyed by name, never by a source's position in a list."""
    return zlib.crc32(str(name).encode("utf-8"))


def source_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed for one (source, N, repeat) cell, independent of evaluation order."""
    ss = np.random.SeedSequence([int(seed), *map(int, parts)])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def fit_and_score(problem, metatest, x: torch.Tensor, *, bandwidth: float, ridge: float,
                  dtype: Any = torch.float64, split: str = "unseen",
                  kernel: str = "gaussian") -> tuple[float, str]:
    """Fit KRR on inputs ``x`` (N, d) labelled by ``problem`` and score it on ``metatest``.

    Returns
    -------
    error : float
        Relative root OOD error on ``split``.
    dtype_used : str
        "float32" or "float64" ("float64" also when a float32 fit failed and was redone).
    """
    from ..models.krr import KernelRidge

    dt = resolve_dtype(dtype)
    for attempt in ((dt,) if dt == torch.float64 else (dt, torch.float64)):
        xt = x.detach().to(attempt)
        y = problem(xt).detach()
        try:
            model = KernelRidge(bandwidth=bandwidth, ridge=ridge, dtype=attempt,
                                factor_dtype=attempt, kernel=kernel).fit(xt, y)
        except ValueError:  # Cholesky of K + N eps I failed in float32
            if attempt == torch.float64:
                raise
            continue
        try:
            err = float(metatest.error(model.predict, split=split))
        except ValueError:  # non-finite predictions: float32 overflow of k(v, X) a
            if attempt == torch.float64:
                raise
            continue
        return err, str(attempt).replace("torch.", "")
    raise AssertionError("unreachable: the float64 attempt always returns or raises")


def evaluate_sources(problem, metatest, sources: Sequence[TrainingSource],
                     n_values: Sequence[int] = (1024, 4096), *, fit: EvaluationFit,
                     repeats: int = 3, seed: int = 0,
                     callback: Callable[[dict], None] | None = None
                     ) -> dict[str, dict[str, dict]]:
    """Unseen meta-test error of KRR trained on N samples of each source.

    Parameters
    ----------
    problem : Problem
        Ground truth ``G*`` (labels the drawn inputs).
    metatest : MetaTest
        Meta-test family; ``metatest.error(predict, split="unseen")`` gives the metric.
    sources : sequence of TrainingSource
    n_values : sequence of int
        Training-set sizes N.
    fit : EvaluationFit
        Bandwidth, ridge, kernel, dtype and threads of the KRR fits.
    repeats : int
        Independent draws per (source, N); the interval is the 95 % CI of their mean.
    seed : int
        Base seed; cell (source, N, repeat r) uses ``source_seed(seed, name_key(name), N, r)``:
        a source's draws depend on its *name*, not on its position in ``sources``, so adding
        or dropping a baseline leaves the others' numbers unchanged.
    callback : callable, optional
        Called with ``{"source", "n", "repeat", "error", "seconds"}`` after every fit.

    Returns
    -------
    dict
        ``result[name][str(N)] = {"mean", "lo", "hi", "n", "values", "dtype"}``.
    """
    from ..report.metrics import mean_ci95

    ns = [check_positive_int(n, "n_values entry") for n in n_values]
    if not ns:
        raise ValueError("n_values must contain at least one sample size, got none")
    repeats = check_positive_int(repeats, "repeats")
    check_type(fit, EvaluationFit, "fit")
    pool = metatest.seen_x.shape[0] * metatest.seen_x.shape[1]
    out: dict[str, dict[str, dict]] = {}
    for src in sources:
        out[src.name] = {}
        for n in ns:
            if getattr(src, "pool", None) is not None and n > pool:
                out[src.name][str(n)] = _empty_cell(f"N={n} exceeds the coreset pool size {pool}")
                continue
            values, used = [], set()
            for r in range(repeats):
                t0 = time.perf_counter()
                g = torch.Generator().manual_seed(source_seed(seed, name_key(src.name), n, r))
                with torch_threads(fit.num_threads, work=n ** 3 / 3):
                    x = src.draw(n, generator=g, metatest=metatest)
                    err, dt = fit_and_score(problem, metatest, x, bandwidth=fit.bandwidth,
                                            ridge=fit.ridge, dtype=fit.dtype,
                                            kernel=fit.kernel)
                values.append(err)
                used.add(dt)
                if callback is not None:
                    callback({"source": src.name, "n": n, "repeat": r, "error": err,
                              "seconds": time.perf_counter() - t0})
            out[src.name][str(n)] = _cell(values, mean_ci95, used)
    return out


def _cell(values: list[float], mean_ci95, used: set[str]) -> dict:
    ci = mean_ci95(np.asarray(values, dtype=float))
    return {"mean": ci["mean"], "lo": ci["lo"], "hi": ci["hi"], "n": ci["n"], "values": values,
            "dtype": "/".join(sorted(used))}


def _empty_cell(reason: str) -> dict:
    return {"mean": None, "lo": None, "hi": None, "n": 0, "values": [], "skipped": reason}
