"""Ledger of an online study: every simulation, every attempt, every received step.

The ledger is the single source of truth of the ensemble (SPEC §5, "record every
attempt"). Each simulation has an id handed out by :meth:`SimulationLedger.new_simulation`,
its parameters, a state and a list of attempts::

    pending  --start_attempt-->  running  --all steps received-->  completed
                                   |  ^
                 attempt fails     |  |  relaunch (same parameters, new attempt)
                                   v  |
                                 (retry)  --too many failures-->  failed

A failed simulation may have been *redrawn* (Melissa's ``crashes_before_redraw``): it then
points at the new simulation (``replaced_by``) that continues its lineage with new
parameters. Every simulation id appears exactly once; a simulation is completed when every
step ``0..n_steps-1`` has been received, whichever attempt delivered it.

Received steps are kept as a bitset, so deduplication by ``(sim_id, step)`` survives a
resume: a step that arrives again (a worker that died and was recomputed, a relaunched
attempt) is recognised and dropped before it reaches the training buffer.

The ledger is thread-safe (one re-entrant lock): the receiver thread marks steps, the
scheduling thread starts and ends attempts, the trainer thread snapshots it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

__all__ = ["Attempt", "SimulationRecord", "SimulationLedger", "STATES", "OUTCOMES"]

#: Simulation states.
STATES = ("pending", "running", "completed", "failed")
#: Attempt outcomes (``None`` while the attempt runs).
OUTCOMES = ("ok", "crash", "timeout", "lost", "interrupted")


@dataclass
class Attempt:
    """One launch of a simulation.

    ``outcome``: ``"ok"`` (ran to the end), ``"crash"`` (raised), ``"timeout"`` (no message
    for ``simulation_timeout`` seconds), ``"lost"`` (its worker died and Dask gave up),
    ``"interrupted"`` (the server stopped while it ran; relaunched on resume) or ``None``
    while running. Times are UNIX seconds.
    """

    number: int
    start: float
    end: float | None = None
    outcome: str | None = None
    worker: str | None = None
    error: str | None = None


@dataclass
class SimulationRecord:
    """One simulation: parameters (d,), state, attempts and received steps."""

    sim_id: int
    params: list[float]
    n_steps: int
    state: str = "pending"
    attempts: list[Attempt] = field(default_factory=list)
    received: bytearray = field(default_factory=bytearray)
    lineage: int = -1
    replaces: int | None = None
    replaced_by: int | None = None
    weight: float | None = None     # importance weight from an adaptive sampler (Breed)

    def __post_init__(self) -> None:
        if not self.received:
            self.received = bytearray((self.n_steps + 7) // 8)
        if self.lineage < 0:
            self.lineage = self.sim_id

    def has_step(self, step: int) -> bool:
        return bool(self.received[step >> 3] & (1 << (step & 7)))

    def _set_step(self, step: int) -> None:
        self.received[step >> 3] |= 1 << (step & 7)

    @property
    def steps_received(self) -> int:
        return sum(bin(b).count("1") for b in self.received)

    @property
    def failures(self) -> int:
        """Attempts that ended badly (crash, timeout, lost); interruptions do not count."""
        return sum(a.outcome in ("crash", "timeout", "lost") for a in self.attempts)

    @property
    def current_attempt(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    def to_dict(self) -> dict[str, Any]:
        return {"sim_id": self.sim_id, "params": list(self.params), "n_steps": self.n_steps,
                "state": self.state, "attempts": [asdict(a) for a in self.attempts],
                "steps_received": self.steps_received, "received": self.received.hex(),
                "lineage": self.lineage, "replaces": self.replaces,
                "replaced_by": self.replaced_by, "weight": self.weight}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SimulationRecord":
        return cls(sim_id=int(d["sim_id"]), params=[float(v) for v in d["params"]],
                   n_steps=int(d["n_steps"]), state=d["state"],
                   attempts=[Attempt(**a) for a in d["attempts"]],
                   received=bytearray.fromhex(d["received"]), lineage=int(d["lineage"]),
                   replaces=d.get("replaces"), replaced_by=d.get("replaced_by"),
                   weight=None if d.get("weight") is None else float(d["weight"]))


class SimulationLedger:
    """Thread-safe record of every simulation of one study.

    Parameters
    ----------
    n_steps : int
        Time steps per simulation (a simulation is completed once all of them arrived).

    Counters: ``samples_received`` (new steps accepted), ``redeliveries_dropped`` (steps
    that arrived again and were dropped), ``late_dropped`` (steps of simulations already
    completed or failed).
    """

    def __init__(self, n_steps: int):
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
        self.n_steps = n_steps
        self._records: dict[int, SimulationRecord] = {}
        self._lock = threading.RLock()
        self.samples_received = 0
        self.redeliveries_dropped = 0
        self.late_dropped = 0

    @property
    def lock(self) -> threading.RLock:
        """The ledger's lock (hold it to make several calls atomic)."""
        return self._lock

    # ------------------------------------------------------------ simulations
    def new_simulation(self, params: Iterable[float], *, replaces: int | None = None) -> int:
        """Register a simulation with parameters (d,); return its id (0, 1, 2, ...)."""
        p = [float(v) for v in np.asarray(params, dtype=np.float64).ravel()]
        with self._lock:
            sim_id = len(self._records)
            rec = SimulationRecord(sim_id=sim_id, params=p, n_steps=self.n_steps,
                                   replaces=replaces)
            if replaces is not None:
                old = self._records[replaces]
                old.replaced_by = sim_id
                rec.lineage = old.lineage
            self._records[sim_id] = rec
            return sim_id

    def __getitem__(self, sim_id: int) -> SimulationRecord:
        with self._lock:
            try:
                return self._records[sim_id]
            except KeyError:
                raise KeyError(f"no simulation with id {sim_id!r} in the ledger") from None

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self):
        with self._lock:
            return iter(list(self._records.values()))

    def params(self, sim_id: int) -> np.ndarray:
        """Parameters (d,) float64 of ``sim_id`` (a copy)."""
        return np.asarray(self[sim_id].params, dtype=np.float64)

    def ids(self, state: str | None = None) -> list[int]:
        """Ids of all simulations, or of those in ``state``."""
        with self._lock:
            return [r.sim_id for r in self._records.values() if state is None or r.state == state]

    def counts(self) -> dict[str, int]:
        """Number of simulations per state."""
        with self._lock:
            out = dict.fromkeys(STATES, 0)
            for r in self._records.values():
                out[r.state] += 1
            return out

    def lineage_failures(self, sim_id: int) -> int:
        """Failures summed over the lineage of ``sim_id`` (itself and what it replaced)."""
        with self._lock:
            total, rec = 0, self._records[sim_id]
            while True:
                total += rec.failures
                if rec.replaces is None:
                    return total
                rec = self._records[rec.replaces]

    @property
    def retries(self) -> int:
        """Attempts beyond the first of every simulation (relaunches)."""
        with self._lock:
            return sum(max(0, len(r.attempts) - 1) for r in self._records.values())

    @property
    def lineages(self) -> int:
        """Number of distinct lineages (simulations requested from the sampler as new)."""
        with self._lock:
            return sum(r.replaces is None for r in self._records.values())

    def set_weights(self, sim_ids: Iterable[int], weights: Iterable[float]) -> None:
        """Record importance weights (Breed's AMIS weights) of simulations; unknown ids are
        ignored."""
        with self._lock:
            for sim_id, w in zip(sim_ids, weights):
                rec = self._records.get(int(sim_id))
                if rec is not None:
                    rec.weight = float(w)

    # ------------------------------------------------------------ attempts
    def start_attempt(self, sim_id: int, *, worker: str | None = None) -> int:
        """Open a new attempt of ``sim_id`` (state -> running); return its number (1, 2, ...)."""
        with self._lock:
            rec = self[sim_id]
            if rec.state in ("completed", "failed"):
                raise ValueError(f"simulation {sim_id} is {rec.state}; it cannot be relaunched")
            cur = rec.current_attempt
            if cur is not None and cur.outcome is None:
                raise ValueError(f"simulation {sim_id} attempt {cur.number} is still running")
            number = len(rec.attempts) + 1
            rec.attempts.append(Attempt(number=number, start=time.time(), worker=worker))
            rec.state = "running"
            return number

    def set_worker(self, sim_id: int, attempt: int, worker: str) -> None:
        """Record which worker runs ``attempt`` (known once the task has started)."""
        with self._lock:
            rec = self[sim_id]
            if 1 <= attempt <= len(rec.attempts):
                rec.attempts[attempt - 1].worker = worker

    def end_attempt(self, sim_id: int, attempt: int, outcome: str, *,
                    error: str | None = None) -> None:
        """Close ``attempt`` with ``outcome`` (one of :data:`OUTCOMES`).

        Closing an attempt that is not the current open one is a no-op (a late report of an
        attempt already timed out). The state does not change here: the caller decides
        between relaunch, :meth:`mark_failed` and waiting for the last steps.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
        with self._lock:
            rec = self[sim_id]
            cur = rec.current_attempt
            if cur is None or cur.number != attempt or cur.outcome is not None:
                return
            cur.outcome, cur.end, cur.error = outcome, time.time(), error

    def mark_failed(self, sim_id: int) -> None:
        """Give up on ``sim_id`` (after its retries)."""
        with self._lock:
            rec = self[sim_id]
            if rec.state != "completed":
                rec.state = "failed"

    def mark_pending(self, sim_id: int) -> None:
        """Put a running simulation back to pending (its attempt ended; relaunch later)."""
        with self._lock:
            rec = self[sim_id]
            if rec.state == "running":
                rec.state = "pending"

    # ------------------------------------------------------------ steps
    def is_new_step(self, sim_id: int, step: int) -> bool:
        """Whether ``(sim_id, step)`` would be accepted by :meth:`record_step` now."""
        with self._lock:
            rec = self._records.get(sim_id)
            return (rec is not None and rec.state in ("pending", "running")
                    and 0 <= step < rec.n_steps and not rec.has_step(step))

    def record_step(self, sim_id: int, step: int) -> bool:
        """Mark ``(sim_id, step)`` received; return False (and count) if it was a duplicate.

        A simulation whose last missing step arrives becomes ``completed`` and its open
        attempt is closed with outcome ``"ok"``.
        """
        with self._lock:
            rec = self._records.get(sim_id)
            if rec is None or not 0 <= step < self.n_steps:
                raise ValueError(f"unknown step ({sim_id!r}, {step!r}) for this ledger")
            if rec.state in ("completed", "failed"):
                self.late_dropped += 1
                return False
            if rec.has_step(step):
                self.redeliveries_dropped += 1
                return False
            rec._set_step(step)
            self.samples_received += 1
            if rec.steps_received == rec.n_steps:
                cur = rec.current_attempt
                if cur is not None and cur.outcome is None:
                    cur.outcome, cur.end = "ok", time.time()
                rec.state = "completed"
            return True

    def count_dropped(self, sim_id: int) -> None:
        """Count a message that was dropped without :meth:`record_step` (e.g. bad id)."""
        with self._lock:
            rec = self._records.get(sim_id)
            if rec is not None and rec.state in ("completed", "failed"):
                self.late_dropped += 1
            else:
                self.redeliveries_dropped += 1

    # ------------------------------------------------------------ resume
    def interrupt_running(self) -> list[int]:
        """Close every open attempt as ``"interrupted"`` and set those simulations pending.

        Called when a study is resumed: the old cluster is gone, so what was running must
        be relaunched (steps already received stay marked and are dropped on arrival).
        """
        with self._lock:
            ids = []
            for rec in self._records.values():
                cur = rec.current_attempt
                if cur is not None and cur.outcome is None:
                    cur.outcome, cur.end = "interrupted", time.time()
                if rec.state == "running":
                    rec.state = "pending"
                    ids.append(rec.sim_id)
            return ids

    # ------------------------------------------------------------ serialisation
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable snapshot (a deep copy)."""
        with self._lock:
            return {"n_steps": self.n_steps,
                    "counters": {"samples_received": self.samples_received,
                                 "redeliveries_dropped": self.redeliveries_dropped,
                                 "late_dropped": self.late_dropped},
                    "simulations": [r.to_dict() for r in self._records.values()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a snapshot from :meth:`state_dict`."""
        if int(state["n_steps"]) != self.n_steps:
            raise ValueError(f"ledger has n_steps={state['n_steps']}, this study uses "
                             f"{self.n_steps}")
        with self._lock:
            self._records = {}
            for d in state["simulations"]:
                rec = SimulationRecord.from_dict(d)
                if rec.sim_id != len(self._records):
                    raise ValueError(f"ledger simulation ids are not 0..N-1 (found {rec.sim_id})")
                self._records[rec.sim_id] = rec
            c = state.get("counters", {})
            self.samples_received = int(c.get("samples_received", 0))
            self.redeliveries_dropped = int(c.get("redeliveries_dropped", 0))
            self.late_dropped = int(c.get("late_dropped", 0))

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "SimulationLedger":
        ledger = cls(int(state["n_steps"]))
        ledger.load_state_dict(state)
        return ledger

    def save_json(self, path: str | os.PathLike) -> None:
        """Write the ledger as JSON atomically (temporary file, fsync, rename)."""
        p = Path(path)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        with tmp.open("w") as fh:
            json.dump(self.state_dict(), fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> "SimulationLedger":
        p = Path(path)
        try:
            state = json.loads(p.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"ledger file {str(p)!r} does not exist") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"ledger file {str(p)!r} is not valid JSON: {exc}") from None
        return cls.from_state_dict(state)

    def summary(self) -> dict[str, int]:
        """Counts for ``summary.json``."""
        with self._lock:
            c = self.counts()
            return {"simulations_requested": len(self._records),
                    "simulations_completed": c["completed"],
                    "simulations_failed": c["failed"],
                    "simulations_redrawn": sum(r.replaced_by is not None
                                               for r in self._records.values()),
                    "simulations_unfinished": c["pending"] + c["running"],
                    # relaunches of a simulation with the same parameters; "retries" is
                    # its former name (kept for old readers), not max_retries' budget
                    "relaunches": self.retries,
                    "retries": self.retries,
                    "attempts": sum(len(r.attempts) for r in self._records.values()),
                    "samples_received": self.samples_received,
                    "redeliveries_dropped": self.redeliveries_dropped,
                    "late_dropped": self.late_dropped}
