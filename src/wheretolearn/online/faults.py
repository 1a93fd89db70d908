"""Fault injection for the online engine (tests and demos; SPEC §5 "Fault tolerance").

With ``fail_rate`` p, each attempt

* **crashes** with probability p/2 at a random step: the steps computed before it were
  already sent (a real client sends each step as it is computed), so the relaunch sends
  them again and the server must drop them as redeliveries;
* **hangs** with probability p/2 at a random step: it stops sending and never polls
  anything (it sleeps in C code, or spins in a tight loop), so only killing its process
  frees the slot;
* independently, with probability p, sends one of its messages **twice** (a retried
  message), which the server must drop as well.

Every draw is a function of ``(seed, sim_id, attempt)`` only, so a run is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validation import check_int, check_seconds

__all__ = ["FaultInjection", "HANG_MODES", "SimulatedCrash", "fault_plan", "resend_plan"]

#: How a fault-injected hang hangs: blocked in C (``time.sleep``) or in a tight loop.
HANG_MODES = ("sleep", "spin")


@dataclass(frozen=True)
class FaultInjection:
    """Faults injected into simulation attempts (tests and demos; module docstring).

    Parameters
    ----------
    fail_rate : float in [0, 1)
        ``p``: each attempt crashes with probability p/2, hangs with p/2, and re-sends one
        message with probability p (0: no fault injected).
    seed : int >= 0
        Seed of the draws, each a function of ``(seed, sim_id, attempt)`` only.
    hang_seconds : float > 0 or None
        Longest an injected hang lasts when nobody cancels it (None: 3 x the executor's
        ``simulation_timeout``).
    hang_mode : ``"sleep"`` or ``"spin"``
        How an injected hang hangs (:data:`HANG_MODES`); neither polls anything.

    A frozen dataclass of plain fields: it travels pickled with every Dask task.
    """

    fail_rate: float = 0.0
    seed: int = 0
    hang_seconds: float | None = None
    hang_mode: str = "sleep"

    def __post_init__(self) -> None:
        if isinstance(self.fail_rate, bool) or not isinstance(self.fail_rate, (int, float)) \
                or not 0.0 <= self.fail_rate < 1.0:
            raise ValueError(f"fail_rate must be a number in [0, 1), got {self.fail_rate!r}")
        check_int(self.seed, "seed", 0)
        check_seconds(self.hang_seconds, "hang_seconds", optional=True)
        if self.hang_mode not in HANG_MODES:
            raise ValueError(f"hang_mode must be one of {', '.join(map(repr, HANG_MODES))}, "
                             f"got {self.hang_mode!r}")


class SimulatedCrash(RuntimeError):
    """Raised by a fault-injected simulation attempt."""


def fault_plan(seed: int, sim_id: int, attempt: int, fail_rate: float,
               n_steps: int) -> tuple[str | None, int]:
    """Fault injected into one attempt: ``(kind, step)`` with kind None, "crash" or "hang".

    ``P(crash) = P(hang) = fail_rate / 2``; the step is uniform in ``0..n_steps-1``. The
    draw depends only on ``(seed, sim_id, attempt)`` (reproducible, independent of timing).
    """
    if fail_rate <= 0:
        return None, -1
    rng = np.random.default_rng([int(seed), int(sim_id), int(attempt), 0x5EED])
    u, step = rng.random(), int(rng.integers(n_steps))
    if u < fail_rate / 2:
        return "crash", step
    if u < fail_rate:
        return "hang", step
    return None, -1


def resend_plan(seed: int, sim_id: int, attempt: int, fail_rate: float) -> int:
    """Index of the queue message (0, 1, ...) the attempt sends twice, or -1 (none).

    With probability ``fail_rate`` the attempt re-sends its first message with steps
    (index 0); independent of :func:`fault_plan`.
    """
    if fail_rate <= 0:
        return -1
    rng = np.random.default_rng([int(seed), int(sim_id), int(attempt), 0xD0B1E])
    return 0 if rng.random() < fail_rate else -1
