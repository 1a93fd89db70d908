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

import numpy as np

__all__ = ["SimulatedCrash", "fault_plan", "resend_plan"]


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
