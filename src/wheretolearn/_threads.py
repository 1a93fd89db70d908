"""The default torch thread policy: one thread for small kernels, the current count otherwise.

Why (measured on a 2-core machine, FACTS.md and ``benchmarks/bench_bilevel.py``): a bilevel
step is a handful of small kernels (a 250 x 250 Cholesky, a 5000 x 250 kernel block). With two
OpenMP threads each of those calls ends in a barrier where the threads spin-wait; when another
process holds a core, the spinning thread waits for a time slice and the step goes from ~7 ms to
40 ms (one busy neighbour) or ~460 ms (several). One thread loses a little on a quiet machine and
nothing on a busy one. Large factorisations (KRR fits with N in the thousands) do enough work per
barrier that threads pay off, so they keep the thread count the process already has.

Every command and library entry point that runs torch kernels calls :func:`torch_threads`
with the user's ``num_threads`` (``None`` when not given) and the size of its dominant
operation; an explicit ``num_threads`` always wins.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from ._validation import check_positive_int

__all__ = ["SMALL_WORK", "default_num_threads", "torch_threads"]

#: Below this many multiply-adds per call, one thread is the default (a 250-point bilevel
#: step is ~1e7; a KRR fit at N = 1024 is ~4e8).
SMALL_WORK = 5e7


def default_num_threads(work: float | None) -> int:
    """Threads for a computation whose dominant call does ``work`` multiply-adds.

    Returns 1 below :data:`SMALL_WORK`, else ``torch.get_num_threads()`` (the policy only
    ever lowers the count the process runs with, so ``OMP_NUM_THREADS`` and an earlier
    ``torch.set_num_threads`` still cap it). ``None``: the current count.
    """
    if work is not None and work < SMALL_WORK:
        return 1
    return torch.get_num_threads()


@contextlib.contextmanager
def torch_threads(num_threads: int | None = None, *, work: float | None = None) -> Iterator[int]:
    """Run the block with ``num_threads`` torch threads (or :func:`default_num_threads` of
    ``work`` when ``num_threads`` is None); the previous count is restored afterwards.

    Yields the thread count in effect.
    """
    if num_threads is not None:
        n = check_positive_int(num_threads, "num_threads")
    else:
        n = default_num_threads(work)
    old = torch.get_num_threads()
    if n != old:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)
