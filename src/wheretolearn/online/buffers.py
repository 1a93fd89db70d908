"""Thread-safe training buffers between the simulation stream and the trainer (SPEC §5).

A receiver thread ``put``s samples (one time step of one simulation) and the trainer thread
takes batches with ``get_batch``. Three policies, as in Melissa DL:

``FIFOBuffer``
    First in, first out. Each sample is served once, oldest first. ``put`` blocks while the
    buffer is full (back-pressure on the simulations).
``FIROBuffer``
    First in, random out: a batch is a uniformly random set of distinct stored samples; a
    sample is removed once it has been served ``pseudo_epochs`` times. ``put`` blocks while
    full.
``ReservoirBuffer``
    A bounded random subset of the stream; reading does not remove samples, and the buffer
    counts how often each stored sample was served ("seen"). ``put`` never blocks. Eviction
    (``policy``):

    * ``"replace"`` (default, Melissa's rule): once full, every new sample enters and evicts a
      uniformly random stored one. A stored sample survives each later ``put`` with
      probability ``1 - 1/C``, so the buffer leans to recent data -- what online training
      wants (new simulations, e.g. bred ones, are trained on at once).
    * ``"uniform"`` (Vitter's Algorithm R): the ``n``-th sample put enters with probability
      ``C / n`` and then evicts a uniformly random stored one, so the buffer is always a
      uniform random subset of *all* samples put so far (inclusion probability ``C / n``).

Watermark. ``get_batch(B)`` waits until the buffer holds at least ``max(watermark, B)``
samples (or it is closed): training starts only once the buffer is diverse enough, and a
batch is always full while the ensemble runs. The watermark is checked at every batch, not only
at the start.

End of the ensemble (``close()``). The watermark is lifted and ``put`` is refused:

* FIFO / FIRO serve what is left (the last batch may be short; FIRO keeps drawing until every
  sample has been served ``pseudo_epochs`` times), then ``get_batch`` returns ``None``.
* Reservoir: one final pass -- every sample stored at closing time is served exactly once
  more, in random order, in batches of ``B`` (the last may be short); then ``None``.

``get_batch`` returns ``[]`` when its ``timeout`` expires before a batch is ready (try again)
and ``None`` only when the buffer is closed and exhausted. Memory is bounded by ``capacity``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, Iterable

import numpy as np

from .._validation import check_positive_int, numpy_generator

__all__ = [
    "Sample",
    "Buffer",
    "FIFOBuffer",
    "FIROBuffer",
    "ReservoirBuffer",
    "BUFFERS",
    "make_buffer",
    "stack_samples",
]


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (Integral, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _frozen_copy(a: Any, name: str) -> np.ndarray:
    try:
        out = np.array(a, dtype=np.float32).reshape(-1)  # always a copy: never alias the caller
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be an array of numbers, got {type(a).__name__}") from exc
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class Sample:
    """One training sample: time step ``step`` of simulation ``sim_id``.

    ``x`` (features,) and ``y`` (out,) are stored as read-only float32 copies (a field ``y`` of
    shape ``(n, n)`` is flattened to ``(n * n,)``), so neither the producer nor the trainer can
    change what the buffer holds.
    """

    sim_id: int
    step: int
    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sim_id", _as_int(self.sim_id, "sim_id"))
        object.__setattr__(self, "step", _as_int(self.step, "step"))
        object.__setattr__(self, "x", _frozen_copy(self.x, "x"))
        object.__setattr__(self, "y", _frozen_copy(self.y, "y"))


def _check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, Real) or not timeout >= 0:
        raise ValueError(f"timeout must be None or a number >= 0 (seconds), got {timeout!r}")
    return float(timeout)


def stack_samples(samples: Iterable[Sample]) -> dict[str, np.ndarray]:
    """Stack samples into ``x (n, F)``, ``y (n, O)`` float32 and ``sim_id``, ``step`` (n,) int64."""
    samples = list(samples)
    if not samples:
        return {"x": np.zeros((0, 0), np.float32), "y": np.zeros((0, 0), np.float32),
                "sim_id": np.zeros(0, np.int64), "step": np.zeros(0, np.int64)}
    return {"x": np.stack([s.x for s in samples]), "y": np.stack([s.y for s in samples]),
            "sim_id": np.array([s.sim_id for s in samples], dtype=np.int64),
            "step": np.array([s.step for s in samples], dtype=np.int64)}


class Buffer(ABC):
    """Base class: bounded, thread-safe sample store with a watermark (see module docstring).

    Parameters
    ----------
    capacity : int >= 1
        Most samples held at once.
    watermark : int, 1 <= watermark <= capacity
        Samples needed before a batch is served (lifted by ``close()``).
    seed : int, numpy.random.Generator or None
        Randomness of FIRO draws and reservoir eviction.
    """

    kind: str = ""
    _blocks_when_full: bool = True

    def __init__(self, capacity: int, *, watermark: int, seed: Any = None) -> None:
        self._capacity = check_positive_int(capacity, "capacity")
        self._watermark = check_positive_int(watermark, "watermark")
        if self._watermark > self._capacity:
            raise ValueError(f"watermark must be <= capacity ({self._capacity}), "
                             f"got {self._watermark}")
        self._rng = numpy_generator(seed)
        self._cond = threading.Condition()
        self._closed = False
        self._shapes: tuple[int, int] | None = None
        self.samples_put = 0
        self.samples_evicted = 0
        self.samples_served = 0

    # -- properties -----------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def watermark(self) -> int:
        return self._watermark

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return self._size()

    def ready(self, batch_size: int = 1) -> bool:
        """``True`` when ``get_batch(batch_size)`` would return without waiting."""
        with self._cond:
            return self._closed or self._size() >= max(self._watermark, batch_size)

    def check_batch_size(self, batch_size: int) -> int:
        """Raise ``ValueError`` if a batch of ``batch_size`` can never be served."""
        batch_size = check_positive_int(batch_size, "batch_size")
        if self._capacity < batch_size:
            raise ValueError(f"buffer capacity {self._capacity} is smaller than "
                             f"batch_size {batch_size}")
        return batch_size

    # -- producer / consumer ----------------------------------------------------------------
    def put(self, sample: Sample, *, timeout: float | None = None) -> bool:
        """Store ``sample``; FIFO/FIRO wait up to ``timeout`` s while full (``None``: forever).

        Returns ``True`` when stored (for the uniform reservoir: when offered -- it may be
        rejected by the sampling rule), ``False`` when the timeout expired. Raises
        ``RuntimeError`` once the buffer is closed.
        """
        if not isinstance(sample, Sample):
            raise TypeError(f"sample must be a Sample, got {type(sample).__name__}")
        timeout = _check_timeout(timeout)
        with self._cond:
            self._check_shapes(sample)
            if self._blocks_when_full:
                ready = self._cond.wait_for(
                    lambda: self._closed or self._size() < self._capacity, timeout)
                if not ready:
                    return False
            if self._closed:
                raise RuntimeError(f"cannot put into a closed {self.kind} buffer "
                                   f"(sample sim_id={sample.sim_id}, step={sample.step})")
            self.samples_put += 1
            self._insert(sample)
            self._cond.notify_all()
            return True

    def get_batch(self, batch_size: int, *, timeout: float | None = None
                  ) -> list[Sample] | None:
        """Next batch of at most ``batch_size`` samples.

        Waits up to ``timeout`` s (``None``: forever) until ``max(watermark, batch_size)``
        samples are held or the buffer is closed. Returns the batch, ``[]`` on timeout, or
        ``None`` when the buffer is closed and has nothing left to serve.
        """
        batch_size = self.check_batch_size(batch_size)
        timeout = _check_timeout(timeout)
        with self._cond:
            ready = self._cond.wait_for(
                lambda: self._closed or self._size() >= max(self._watermark, batch_size),
                timeout)
            if not ready:
                return []
            batch = self._drain(batch_size) if self._closed else self._take(batch_size)
            if batch:
                self.samples_served += len(batch)
                self._cond.notify_all()
            return batch

    def close(self) -> None:
        """End of the ensemble: refuse new samples, lift the watermark, wake every waiter."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stats(self) -> dict:
        """Counters (JSON-serialisable): size, samples put / evicted / served, seen counts."""
        with self._cond:
            counts = self._counts_array()
            return {"kind": self.kind, "size": len(counts), "capacity": self._capacity,
                    "watermark": self._watermark, "closed": self._closed,
                    "samples_put": self.samples_put, "samples_evicted": self.samples_evicted,
                    "samples_served": self.samples_served,
                    "seen_min": int(counts.min()) if len(counts) else 0,
                    "seen_max": int(counts.max()) if len(counts) else 0,
                    "never_seen": int((counts == 0).sum()), **self._extra_stats()}

    def seen_counts(self) -> np.ndarray:
        """How often each stored sample was served, in storage order, ``(size,)`` int64."""
        with self._cond:
            return self._counts_array()

    def samples(self) -> list[Sample]:
        """A snapshot list of the stored samples, in storage order."""
        with self._cond:
            return list(self._items())

    # -- checkpoint -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Stored samples as stacked arrays plus counters and the random state.

        Keys: ``kind, capacity, watermark, closed, x (n, F), y (n, O), sim_id (n,), step (n,),
        counts (n,), rng, stats`` and policy options.
        """
        with self._cond:
            state = stack_samples(self._items())
            state.update(kind=self.kind, capacity=self._capacity, watermark=self._watermark,
                         closed=self._closed, counts=self._counts_array(),
                         rng=self._rng.bit_generator.state,
                         stats={"samples_put": self.samples_put,
                                "samples_evicted": self.samples_evicted,
                                "samples_served": self.samples_served},
                         **self._extra_state())
            return state

    def load_state_dict(self, state: dict) -> None:
        """Restore samples, counters, closed flag and random state from :meth:`state_dict`.

        This buffer keeps its own ``capacity`` and ``watermark`` (a resumed study may change
        them); the stored samples must fit. Arrays may be numpy arrays or CPU tensors.
        """
        if state.get("kind") != self.kind:
            raise ValueError(f"state is for a {state.get('kind')!r} buffer, not {self.kind!r}")
        arrays = {k: np.asarray(state[k]) for k in ("x", "y", "sim_id", "step", "counts")}
        n = len(arrays["sim_id"])
        if n > self._capacity:
            raise ValueError(f"state holds {n} samples, more than capacity {self._capacity}")
        samples = [Sample(int(arrays["sim_id"][i]), int(arrays["step"][i]),
                          arrays["x"][i], arrays["y"][i]) for i in range(n)]
        counts = [int(c) for c in arrays["counts"]]
        with self._cond:
            self._shapes = None
            for s in samples[:1]:
                self._check_shapes(s)
            self._restore(samples, counts, state)
            self._rng.bit_generator.state = state["rng"]
            stats = state["stats"]
            self.samples_put = int(stats["samples_put"])
            self.samples_evicted = int(stats["samples_evicted"])
            self.samples_served = int(stats["samples_served"])
            self._closed = bool(state["closed"])
            self._cond.notify_all()

    # -- subclass interface ---------------------------------------------------------------
    def _check_shapes(self, sample: Sample) -> None:
        shapes = (sample.x.shape[0], sample.y.shape[0])
        if self._shapes is None:
            self._shapes = shapes
        elif shapes != self._shapes:
            raise ValueError(f"sample sizes (x, y) must match the buffer's {self._shapes}, "
                             f"got {shapes} (sim_id={sample.sim_id}, step={sample.step})")

    def _extra_state(self) -> dict:
        return {}

    def _extra_stats(self) -> dict:
        return {}

    @abstractmethod
    def _size(self) -> int: ...

    @abstractmethod
    def _items(self) -> Iterable[Sample]: ...

    @abstractmethod
    def _counts_array(self) -> np.ndarray: ...

    @abstractmethod
    def _insert(self, sample: Sample) -> None: ...

    @abstractmethod
    def _take(self, batch_size: int) -> list[Sample]:
        """A batch while open; the store holds at least ``batch_size`` samples."""

    @abstractmethod
    def _drain(self, batch_size: int) -> list[Sample] | None:
        """A batch after ``close()`` (maybe short), or ``None`` when nothing is left."""

    @abstractmethod
    def _restore(self, samples: list[Sample], counts: list[int], state: dict) -> None: ...

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(capacity={self._capacity}, watermark={self._watermark}, "
                f"size={len(self)}, closed={self._closed})")


class FIFOBuffer(Buffer):
    """First in, first out; each sample served once (see module docstring)."""

    kind = "fifo"

    def __init__(self, capacity: int, *, watermark: int, seed: Any = None) -> None:
        super().__init__(capacity, watermark=watermark, seed=seed)
        self._queue: deque[Sample] = deque()

    def _size(self) -> int:
        return len(self._queue)

    def _items(self) -> Iterable[Sample]:
        return self._queue

    def _counts_array(self) -> np.ndarray:
        return np.zeros(len(self._queue), dtype=np.int64)  # a FIFO sample is gone once served

    def _insert(self, sample: Sample) -> None:
        self._queue.append(sample)

    def _take(self, batch_size: int) -> list[Sample]:
        return [self._queue.popleft() for _ in range(min(batch_size, len(self._queue)))]

    def _drain(self, batch_size: int) -> list[Sample] | None:
        return self._take(batch_size) or None

    def _restore(self, samples: list[Sample], counts: list[int], state: dict) -> None:
        self._queue = deque(samples)


class _ListBuffer(Buffer):
    """Samples in a list with, alongside, how often each was served (FIRO and reservoir)."""

    def __init__(self, capacity: int, *, watermark: int, seed: Any = None) -> None:
        super().__init__(capacity, watermark=watermark, seed=seed)
        self._store: list[Sample] = []
        self._counts: list[int] = []

    def _size(self) -> int:
        return len(self._store)

    def _items(self) -> Iterable[Sample]:
        return self._store

    def _counts_array(self) -> np.ndarray:
        return np.array(self._counts, dtype=np.int64)

    def _append(self, sample: Sample) -> None:
        self._store.append(sample)
        self._counts.append(0)

    def _restore(self, samples: list[Sample], counts: list[int], state: dict) -> None:
        self._store, self._counts = samples, counts


class FIROBuffer(_ListBuffer):
    """First in, random out; each sample may be served ``pseudo_epochs`` times, then removed."""

    kind = "firo"

    def __init__(self, capacity: int, *, watermark: int, seed: Any = None,
                 pseudo_epochs: int = 1) -> None:
        super().__init__(capacity, watermark=watermark, seed=seed)
        self.pseudo_epochs = check_positive_int(pseudo_epochs, "pseudo_epochs")

    def _insert(self, sample: Sample) -> None:
        self._append(sample)

    def _take(self, batch_size: int) -> list[Sample]:
        n = min(batch_size, len(self._store))
        idx = self._rng.choice(len(self._store), size=n, replace=False)
        batch = [self._store[i] for i in idx]
        for i in idx:
            self._counts[i] += 1
        # Remove in descending index order so swap-with-last never moves a pending index.
        for i in sorted((int(i) for i in idx if self._counts[i] >= self.pseudo_epochs),
                        reverse=True):
            self._store[i] = self._store[-1]
            self._counts[i] = self._counts[-1]
            self._store.pop()
            self._counts.pop()
        return batch

    def _drain(self, batch_size: int) -> list[Sample] | None:
        return self._take(batch_size) if self._store else None

    def _extra_state(self) -> dict:
        return {"pseudo_epochs": self.pseudo_epochs}


class ReservoirBuffer(_ListBuffer):
    """Bounded random subset of the stream; samples are not removed when served.

    Parameters
    ----------
    policy : {"replace", "uniform"}
        Eviction rule once full (see module docstring): ``"replace"`` (Melissa) always admits
        the new sample; ``"uniform"`` (Algorithm R) admits the ``n``-th with probability
        ``C / n``.
    """

    kind = "reservoir"
    _blocks_when_full = False
    POLICIES = ("replace", "uniform")

    def __init__(self, capacity: int, *, watermark: int, seed: Any = None,
                 policy: str = "replace") -> None:
        super().__init__(capacity, watermark=watermark, seed=seed)
        if policy not in self.POLICIES:
            raise ValueError(f"policy must be one of {list(self.POLICIES)}, got {policy!r}")
        self.policy = policy
        self.samples_rejected = 0
        # Final pass after close(): a random order of the stored samples and the next position.
        self._final_order: np.ndarray | None = None
        self._final_pos = 0

    def _insert(self, sample: Sample) -> None:
        if len(self._store) < self._capacity:
            self._append(sample)
            return
        if self.policy == "uniform":
            # samples_put already counts this sample: it is the n-th of the stream.
            j = int(self._rng.integers(self.samples_put))
            if j >= self._capacity:
                self.samples_rejected += 1
                return
        else:
            j = int(self._rng.integers(self._capacity))
        self._store[j] = sample
        self._counts[j] = 0
        self.samples_evicted += 1

    def _take(self, batch_size: int) -> list[Sample]:
        idx = self._rng.choice(len(self._store), size=batch_size, replace=False)
        return self._serve(idx)

    def _serve(self, idx: Iterable[int]) -> list[Sample]:
        batch = []
        for i in idx:
            self._counts[i] += 1
            batch.append(self._store[i])
        return batch

    def _drain(self, batch_size: int) -> list[Sample] | None:
        if self._final_order is None:
            self._final_order = self._rng.permutation(len(self._store))
            self._final_pos = 0
        idx = self._final_order[self._final_pos:self._final_pos + batch_size]
        self._final_pos += len(idx)
        return self._serve(idx) if len(idx) else None

    def _extra_stats(self) -> dict:
        return {"policy": self.policy, "samples_rejected": self.samples_rejected}

    def _extra_state(self) -> dict:
        final = None if self._final_order is None else self._final_order.copy()
        return {"policy": self.policy, "samples_rejected": self.samples_rejected,
                "final_order": final, "final_pos": self._final_pos}

    def _restore(self, samples: list[Sample], counts: list[int], state: dict) -> None:
        if state.get("policy", self.policy) != self.policy:
            raise ValueError(f"state is for reservoir policy {state.get('policy')!r}, "
                             f"this buffer uses {self.policy!r}")
        super()._restore(samples, counts, state)
        self.samples_rejected = int(state.get("samples_rejected", 0))
        final = state.get("final_order")
        self._final_order = None if final is None else np.asarray(final, dtype=np.int64)
        self._final_pos = int(state.get("final_pos", 0))


BUFFERS: dict[str, type[Buffer]] = {cls.kind: cls for cls in (FIFOBuffer, FIROBuffer,
                                                               ReservoirBuffer)}


def make_buffer(kind: str, capacity: int, *, watermark: int, seed: Any = None,
                **options: Any) -> Buffer:
    """Build a buffer by name: ``"fifo"``, ``"firo"`` (``pseudo_epochs=``) or ``"reservoir"``
    (``policy=``). Unknown options raise ``TypeError``."""
    if kind not in BUFFERS:
        raise ValueError(f"buffer kind must be one of {sorted(BUFFERS)}, got {kind!r}")
    return BUFFERS[kind](capacity, watermark=watermark, seed=seed, **options)
