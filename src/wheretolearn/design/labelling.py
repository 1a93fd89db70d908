"""Label samples of a measure with a (PDE) problem, once: in process or on Dask, cached.

:class:`Labeller` is the one place AMA and the PDE meta-test families get ``(u, G*(u))``
pairs from. Without a cache folder the pairs are computed in this process in batches
(the problems' batched solvers) and kept in memory for the session; with ``cache_dir``
they go through :func:`wheretolearn.datasets.find_or_generate` (zarr store keyed on the
problem, its options, the measure's parameters, the seed and the size, so changing a
measure never reuses stale data), optionally on Dask workers (``workers`` > 0 or a
``scheduler`` address).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._validation import check_nonnegative_int, check_positive_int

__all__ = ["Labeller", "measure_key"]


def measure_key(measure: Any) -> str:
    """JSON text identifying a measure's content (type and parameters)."""
    rec = {"type": type(measure).__name__}
    rec.update(measure.to_dict() if hasattr(measure, "to_dict") else {"repr": repr(measure)})
    return json.dumps(rec, sort_keys=True, default=str)


class Labeller:
    """Draw ``n`` samples of a measure (seeded) and evaluate the problem on them.

    Parameters
    ----------
    problem : Problem
    cache_dir : path, optional
        Store labelled sets there (reused across runs); ``None``: in memory only.
    workers : int
        Dask ``LocalCluster`` workers for labelling (needs ``cache_dir``); 0 = in process.
    scheduler : str, optional
        Address of a running Dask scheduler (e.g. from the online engine's cluster layer).
    batch : int
        In-process batch size.
    dtype : torch dtype of the returned pairs (float32 default).

    Attributes
    ----------
    seconds : float
        Wall time spent labelling so far; ``n_labelled``: samples actually computed
        (reused ones excluded).
    """

    def __init__(self, problem: Any, *, cache_dir: str | Path | None = None, workers: int = 0,
                 scheduler: str | None = None, batch: int = 256, dtype: Any = torch.float32):
        self.problem = problem
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.workers = check_nonnegative_int(workers, "workers")
        self.scheduler = scheduler
        if (self.workers or scheduler) and self.cache_dir is None:
            raise ValueError("labelling on Dask (workers > 0 or scheduler) needs a cache_dir for "
                             "the data sets")
        self.batch = check_positive_int(batch, "batch")
        self.dtype = dtype
        self._memory: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.seconds = 0.0
        self.n_labelled = 0

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """``G*(x)`` in batches, in process, float64 (no gradient)."""
        outs = []
        with torch.no_grad():
            for lo in range(0, x.shape[0], self.batch):
                outs.append(self.problem(x[lo:lo + self.batch].double()))
        return torch.cat(outs)

    def label(self, measure: Any, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x (n, *in), y (n, *out))`` for ``n`` samples of ``measure`` drawn with ``seed``.

        The same (measure parameters, n, seed) gives the same pairs, computed once.
        """
        n = check_positive_int(n, "n")
        seed = check_nonnegative_int(seed, "seed")
        key = (measure_key(measure), n, seed)
        if key in self._memory:
            return self._memory[key]
        t0 = time.perf_counter()
        if self.cache_dir is None:
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                x = measure.sample(n, generator=g).detach()
            y = self.evaluate(x)
            self.n_labelled += n
        else:
            from ..datasets import ComputeOptions, InputSampling, find_or_generate, open_dataset

            info = find_or_generate(
                self.cache_dir, self.problem, n, sampling=InputSampling(measure=measure, seed=seed),
                compute=ComputeOptions(workers=self.workers, scheduler=self.scheduler,
                                       progress=False))
            self.n_labelled += sum(min(info.n, (i + 1) * info.chunk) - i * info.chunk
                                   for i in info.computed_chunks)
            data = open_dataset(info.path)
            x, y = torch.from_numpy(np.asarray(data["inputs"])), torch.from_numpy(
                np.asarray(data["outputs"]))
        pair = (x.to(self.dtype).contiguous(), y.to(self.dtype).contiguous())
        self._memory[key] = pair
        self.seconds += time.perf_counter() - t0
        return pair
