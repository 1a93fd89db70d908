"""Streaming ensemble executor on Dask distributed: the server side (SPEC §5).

One Dask task per simulation *attempt* (:func:`~wheretolearn.online.attempt.run_simulation_attempt`)
runs the simulation in a killable child process and pushes every time step, as soon as it
is computed, into a ``distributed.Queue`` (bytes payloads, :mod:`~wheretolearn.online.messages`;
the queue's ``maxsize`` gives back-pressure, so a slow trainer slows the simulations instead
of filling memory). A second, unbounded queue carries heartbeats of attempts whose next
message waits for room in the first.

On the server two threads run next to the trainer:

* the **receiver** blocks on the queue (with a timeout: no busy polling) and stops once the
  ensemble is done. It drops ``(sim_id, step)`` pairs the ledger already holds (a worker
  that died and was recomputed restarts from step 0; a relaunched attempt sends its early
  steps again; a retried message arrives twice) and hands new steps to ``on_sample``
  (which puts them into the training buffer); only once the buffer accepted a step is it
  marked received, under :attr:`EnsembleExecutor.receive_lock`, so a checkpoint taken
  under that lock never sees a step that is in the ledger but not in the buffer (or the
  reverse). While the buffer is full, only the timers of attempts whose messages are
  known to wait are paused: the one being offered, those that sent heartbeats, and those
  whose task already ended (their last steps are in the queue) -- a hung attempt keeps
  its timer running;
* the **monitor** keeps at most ``max_concurrent`` attempts in flight, draws parameters
  just in time (``sampler.ask(1)`` when a slot frees, so an adaptive sampler can still
  change simulations not yet submitted), declares an attempt timed out after
  ``simulation_timeout`` seconds without a message (cancelling the task kills its process
  group, so the slot is free for real), and after each failed attempt (crash, timeout,
  worker lost) applies :func:`~wheretolearn.online.policy.decide_after_failure`:
  relaunch with the same parameters, redraw (new parameters, new simulation id, same
  lineage) after ``failures_before_redraw`` failures of one parameter set, or give the
  lineage up after ``max_retries`` relaunches.

Fault injection (:class:`~wheretolearn.online.faults.FaultInjection`): see
:mod:`wheretolearn.online.faults`.

Options: :class:`EnsemblePlan` (budget, concurrency, timeout, retries),
:class:`~wheretolearn.online.faults.FaultInjection`,
:class:`~wheretolearn.online.messages.Streaming` (queue and message sizes, heartbeats) and
:class:`ExecutorHooks` (what the executor calls back into: the buffer, the event log, the
sampler's lock, the cluster).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from .._validation import check_int, check_seconds, check_type
from .attempt import _get_problem, prewarm, run_simulation_attempt
from .faults import FaultInjection, SimulatedCrash, fault_plan, resend_plan
from .messages import (HELLO, Streaming, decode_step, encode_step, pack_messages,
                       unpack_messages)
from .policy import decide_after_failure

__all__ = ["EnsembleExecutor", "EnsemblePlan", "ExecutorHooks", "FaultInjection", "Streaming",
           "SimulatedCrash", "run_simulation_attempt", "fault_plan", "resend_plan",
           "encode_step", "decode_step", "pack_messages", "unpack_messages"]


@dataclass(frozen=True)
class EnsemblePlan:
    """What the executor's monitor runs and when it gives an attempt up.

    Parameters
    ----------
    n_simulations : int >= 1
        Budget: lineages to run (redrawn simulations continue a lineage).
    max_concurrent : int >= 1
        Attempts in flight at once.
    simulation_timeout : float > 0
        Seconds without a message after which an attempt is declared timed out.
    max_retries : int >= 0
        Failed attempts a lineage may relaunch; one more failure records it failed.
    failures_before_redraw : int >= 1 or None
        Failures of one parameter set before its lineage gets new parameters (None: never).

    (:func:`~wheretolearn.online.policy.decide_after_failure` applies the last two.)
    """

    n_simulations: int
    max_concurrent: int
    simulation_timeout: float = 60.0
    max_retries: int = 3
    failures_before_redraw: int | None = None

    def __post_init__(self) -> None:
        check_int(self.n_simulations, "n_simulations", 1)
        check_int(self.max_concurrent, "max_concurrent", 1)
        check_seconds(self.simulation_timeout, "simulation_timeout")
        check_int(self.max_retries, "max_retries", 0)
        if self.failures_before_redraw is not None:
            check_int(self.failures_before_redraw, "failures_before_redraw", 1)


@dataclass(frozen=True)
class ExecutorHooks:
    """What the executor calls back into (from its receiver and monitor threads).

    Parameters
    ----------
    on_sample : callable ``(sim_id, step, params (d,), field, timeout) -> bool``
        Called by the receiver thread for each new step; return False when the buffer is
        full (the step is offered again a moment later).
    on_event : callable ``(dict) -> None``, optional
        Called for attempt events (relaunch, failure), e.g. for logging.
    sampler_lock : threading.Lock, optional
        Held while the monitor calls the sampler; share it with the thread that calls
        ``sampler.tell`` (default: a lock of the executor's own).
    cluster_handle : ClusterHandle, optional
        ``ensure_workers()`` is called every ``ensure_every`` seconds.
    ensure_every : float > 0
        Seconds between two ``cluster_handle.ensure_workers()`` calls.
    """

    on_sample: Callable[..., bool]
    on_event: Callable[[dict], None] | None = None
    sampler_lock: Any = None
    cluster_handle: Any = None
    ensure_every: float = 5.0

    def __post_init__(self) -> None:
        if not callable(self.on_sample):
            raise ValueError(f"on_sample must be callable, got {self.on_sample!r}")
        if self.on_event is not None and not callable(self.on_event):
            raise ValueError(f"on_event must be callable or None, got {self.on_event!r}")
        check_seconds(self.ensure_every, "ensure_every")


class _InjectedCrashFilter(logging.Filter):
    """Drop the worker's "Compute Failed" log records of fault-injected crashes only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SimulatedCrash" not in record.getMessage()


def _setup_worker(problem_spec: str) -> None:
    """Build the problem once per worker process, and start one simulation process, before
    any simulation is timed: importing the solver (torch) can take seconds on a loaded
    machine, longer than a short ``simulation_timeout``."""
    logger = logging.getLogger("distributed.worker")
    if not any(isinstance(f, _InjectedCrashFilter) for f in logger.filters):
        logger.addFilter(_InjectedCrashFilter())
    _get_problem(problem_spec)
    prewarm(problem_spec)


def _worker_plugin(problem_spec: str) -> Any:
    from distributed.diagnostics.plugin import WorkerPlugin

    class _Setup(WorkerPlugin):
        def setup(self, worker: Any) -> None:
            _setup_worker(problem_spec)

    return _Setup()


# ---------------------------------------------------------------------------- executor
@dataclass
class _Active:
    sim_id: int
    attempt: int
    future: Any
    last_activity: float
    started: bool = False              # a message arrived: the task runs on a worker
    control_read: bool = False         # the control queue was read at its first step
    finished_at: float | None = None   # task returned but steps may still be in the queue
    finished_ok: bool = False          # ... and it returned "ok": all its steps were sent


class EnsembleExecutor:
    """Run an ensemble of simulations on a Dask cluster, streaming steps to a callback.

    Parameters
    ----------
    client : distributed.Client
    problem_spec : dict
        ``{"name": "heat2d", "options": {...}}``; the problem must have ``simulate`` and
        ``n_steps``.
    ledger : SimulationLedger
        Records every simulation (may already hold simulations, when resuming: pending
        and running ones are (re)launched first).
    sampler : ParameterSampler
        ``ask(1)`` gives the parameters of each new simulation, just in time.
    plan : EnsemblePlan
        Budget, attempts in flight, timeout and retry rules.
    hooks : ExecutorHooks
        ``on_sample`` (steps to the buffer) and the other call-backs.
    faults : FaultInjection
        Fault injection (see module docstring); ``hang_seconds`` None means 3 x
        ``plan.simulation_timeout``.
    streaming : Streaming
        Queue size, message size and heartbeat period of the step stream.
    """

    def __init__(self, client: Any, problem_spec: dict, ledger: Any, sampler: Any, *,
                 plan: EnsemblePlan, hooks: ExecutorHooks,
                 faults: FaultInjection = FaultInjection(),
                 streaming: Streaming = Streaming()):
        for name, value, cls in (("plan", plan, EnsemblePlan), ("hooks", hooks, ExecutorHooks),
                                 ("faults", faults, FaultInjection),
                                 ("streaming", streaming, Streaming)):
            check_type(value, cls, name)
        self.client = client
        self.problem_spec = json.dumps(problem_spec, sort_keys=True)
        self.ledger = ledger
        self.sampler = sampler
        self.plan = plan
        self.hooks = hooks
        self.faults = dataclasses.replace(
            faults, hang_seconds=faults.hang_seconds or 3 * plan.simulation_timeout)
        self.streaming = streaming
        self.heartbeats_received = 0
        self.queue_gets = 0            # round trips to the scheduler's queue (no spinning)
        self._stalled = False          # the receiver waits for room in the buffer
        self.sampler_lock = hooks.sampler_lock or threading.Lock()
        #: Held while a step goes into the buffer and the ledger; hold it to snapshot both.
        self.receive_lock = threading.Lock()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.messages_received = 0
        self._stop = threading.Event()
        self._active: dict[int, _Active] = {}
        self._lock = threading.Lock()
        self._control_lock = threading.Lock()
        from distributed import Queue

        self.queue_name = f"wheretolearn-steps-{uuid.uuid4().hex}"
        self._queue = Queue(self.queue_name, client=client, maxsize=streaming.queue_maxsize)
        self._control = Queue(self.queue_name + "-hb", client=client)
        self._threads: list[threading.Thread] = []
        # Also runs on workers that join later (replacements of lost workers or jobs).
        client.register_plugin(_worker_plugin(self.problem_spec), name="wheretolearn-online-setup")

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "EnsembleExecutor":
        """Start the receiver and monitor threads."""
        for target, name in ((self._receive_loop, "receiver"), (self._monitor_loop, "monitor")):
            t = threading.Thread(target=self._guard(target), name=f"wheretolearn-{name}",
                                 daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 -- surfaced to the study via .error
                self.error = exc
                self.done.set()
        return run

    def stop(self, *, interrupt: bool = False) -> None:
        """Stop both threads and release every future.

        ``interrupt=True`` (stopping before the ensemble is done): running simulations get
        their attempt closed as ``"interrupted"`` and go back to pending, so a resumed
        study relaunches them.
        """
        self._stop.set()
        self._wake()
        for t in self._threads:
            t.join(timeout=30)
        with self._lock:
            futures = [a.future for a in self._active.values()]
            self._active.clear()
        if interrupt:
            self.ledger.interrupt_running()
        if futures:
            try:
                self.client.cancel(futures)
            except Exception:  # noqa: BLE001 -- the cluster may already be gone
                pass

    @property
    def running(self) -> int:
        """Attempts in flight."""
        return len(self._active)

    def _emit(self, **event: Any) -> None:
        if self.hooks.on_event is not None:
            self.hooks.on_event(event)

    # ------------------------------------------------------------------ receiver
    def _receive_loop(self) -> None:
        while not self._stop.is_set() and not self.done.is_set():
            for blob in self._get():
                for msg in unpack_messages(blob):
                    self._handle(msg)
                    if self._stop.is_set():
                        return

    def _get(self) -> list:
        """Messages now in the queue, blocking on the scheduler until the first arrives (no
        polling; :meth:`_wake` ends the wait with an empty message). No timeout on purpose:
        the scheduler logs every timed-out ``queue_get`` as an error."""
        self.queue_gets += 1
        first = self._queue.get()
        self.queue_gets += 1
        return [first, *self._queue.get(batch=True)]

    def _wake(self) -> None:
        """Unblock the receiver's wait (an empty queue message carries no step)."""
        receiver = self._threads[0] if self._threads else None
        if receiver is None or not receiver.is_alive():
            return
        try:
            self._queue.put(b"", timeout=2)
        except Exception:  # noqa: BLE001 -- queue full or gone: the receiver is not waiting
            pass

    def _read_control_queue(self) -> None:
        """Read the control queue: hellos (an attempt started, on this worker) and
        heartbeats (its next step waits for room). The monitor reads it, never blocked by a
        full buffer, so a started attempt is known at once and its timer runs. Called by the
        monitor and, once per attempt, by the receiver (see :meth:`_ensure_hello`)."""
        with self._control_lock:
            self.queue_gets += 1
            for blob in self._control.get(batch=True):
                for msg in unpack_messages(blob):
                    sim_id, attempt, step, worker = decode_step(msg)
                    self._touch(sim_id, attempt)
                    if step == HELLO:
                        self.ledger.set_worker(sim_id, attempt, worker)
                    else:
                        self.heartbeats_received += 1

    def _ensure_hello(self, sim_id: int, attempt: int) -> None:
        """Before the first step of an attempt is recorded, read the control queue: the task
        put its hello there before its first step, so the ledger knows the attempt's worker
        before any of its steps (whatever the monitor's polling period). Once per attempt."""
        with self._lock:
            act = self._active.get(sim_id)
            needed = act is not None and act.attempt == attempt and not act.control_read
            if needed:
                act.control_read = True
        if needed:
            self._read_control_queue()

    def _handle(self, msg: bytes) -> None:
        sim_id, attempt, step, field = decode_step(msg)
        self.messages_received += 1
        self._touch(sim_id, attempt)
        if step < 0:
            raise ValueError(f"control message (step {step}) of simulation {sim_id} on the "
                             "step queue: hellos and heartbeats go on the control queue")
        self._ensure_hello(sim_id, attempt)
        params = None
        while not self._stop.is_set():
            with self.receive_lock:
                if not self.ledger.is_new_step(sim_id, step):
                    self.ledger.count_dropped(sim_id)
                    self._stalled = False
                    return
                if params is None:
                    params = self.ledger.params(sim_id)
                if self.hooks.on_sample(sim_id, step, params, field, 0.05):
                    self.ledger.record_step(sim_id, step)
                    self._stalled = False
                    return
            # Buffer full: let the trainer (and a checkpoint) take the lock, then retry.
            # This attempt's message is waiting on us (back-pressure): its silence is no
            # timeout. Others keep their timers unless they report waiting (heartbeats).
            self._stalled = True
            self._touch(sim_id, attempt)
            time.sleep(0.01)

    def _touch(self, sim_id: int, attempt: int) -> None:
        with self._lock:
            act = self._active.get(sim_id)
            if act is not None and act.attempt == attempt:
                act.last_activity = time.monotonic()
                act.started = True

    # ------------------------------------------------------------------ monitor
    def _monitor_loop(self) -> None:
        last_ensure = last_hb = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - last_hb > self.streaming.heartbeat_seconds / 2:
                last_hb = time.monotonic()
                self._read_control_queue()
            self._check_active()
            self._fill_slots()
            if self._finished():
                self.done.set()
                self._wake()
                return
            handle = self.hooks.cluster_handle
            if handle is not None and time.monotonic() - last_ensure > self.hooks.ensure_every:
                last_ensure = time.monotonic()
                handle.ensure_workers()
            time.sleep(0.02)

    def _finished(self) -> bool:
        c = self.ledger.counts()
        return (not self._active and c["pending"] == 0 and c["running"] == 0
                and self.ledger.lineages >= self.plan.n_simulations)

    def _submit(self, sim_id: int) -> None:
        attempt = self.ledger.start_attempt(sim_id)
        params = self.ledger[sim_id].params
        future = self.client.submit(
            run_simulation_attempt, self.problem_spec, sim_id, attempt, list(params),
            self.queue_name, faults=self.faults, streaming=self.streaming,
            key=f"sim-{sim_id}-attempt-{attempt}-"
            f"{uuid.uuid4().hex[:6]}", pure=False, retries=0)
        with self._lock:
            self._active[sim_id] = _Active(sim_id, attempt, future, time.monotonic())

    def _fill_slots(self) -> None:
        while len(self._active) < self.plan.max_concurrent and not self._stop.is_set():
            pending = [i for i in self.ledger.ids("pending") if i not in self._active]
            if pending:
                self._submit(pending[0])
                continue
            if self.ledger.lineages >= self.plan.n_simulations:
                return
            self._submit(self._new_simulation())

    def _new_simulation(self, replaces: int | None = None) -> int:
        with self.sampler_lock:
            sim_id_next = len(self.ledger)
            params = self.sampler.ask(1, sim_ids=[sim_id_next])[0]
            return self.ledger.new_simulation(params, replaces=replaces)

    def _check_active(self) -> None:
        now = time.monotonic()
        with self._lock:
            items = list(self._active.values())
        for act in items:
            rec = self.ledger[act.sim_id]
            if rec.state == "completed":
                self._release(act)
                self._notify_finished(act.sim_id, True)
                continue
            fut = act.future
            if fut.status == "finished":
                # Steps may still be queued: wait for them, but not forever.
                if act.finished_at is None:
                    act.finished_at = now
                    result = fut.result()
                    if result.get("outcome") in ("hung", "cancelled"):
                        self._fail(act, "timeout", "hung attempt ended without its steps")
                        continue
                    act.finished_ok = True
                if act.finished_ok and self._stalled:
                    # Its last steps are in the queue behind a full buffer: waiting, not lost.
                    act.last_activity = max(act.last_activity, now)
                elif now - act.last_activity > self.plan.simulation_timeout:
                    self._fail(act, "lost", "task ended but some steps never arrived")
            elif fut.status in ("error", "cancelled", "lost"):
                outcome, error = self._classify(fut)
                self._fail(act, outcome, error)
            elif act.started and now - act.last_activity > self.plan.simulation_timeout:
                # Only started attempts time out: a task waiting for a worker (a batch job
                # still queued) is Dask's to schedule, not a hung simulation.
                self._fail(act, "timeout",
                           f"no message for {self.plan.simulation_timeout:g} s")

    def _classify(self, fut: Any) -> tuple[str, str]:
        try:
            exc = fut.exception(timeout=5)
        except Exception as e:  # noqa: BLE001 -- cancelled/lost futures raise here
            return "lost", f"{type(e).__name__}: {e}"
        name = type(exc).__name__
        if name == "KilledWorker" or fut.status in ("cancelled", "lost"):
            return "lost", f"{name}: {exc}"
        return "crash", f"{name}: {exc}"

    def _release(self, act: _Active) -> None:
        with self._lock:
            self._active.pop(act.sim_id, None)
        if act.future.status not in ("finished", "error", "cancelled"):
            act.future.cancel()

    def _fail(self, act: _Active, outcome: str, error: str) -> None:
        """End the current attempt badly; relaunch, redraw or give up
        (:func:`~wheretolearn.online.policy.decide_after_failure`)."""
        self._release(act)
        # Under the receive lock: a step being handed to the buffer right now is recorded
        # before the simulation leaves the running state (else the buffer would hold a step
        # the ledger refused as late, and a checkpoint would see it in one and not the other).
        with self.receive_lock, self.ledger.lock:
            rec = self.ledger[act.sim_id]
            completed = rec.state == "completed"
            if not completed:
                self.ledger.end_attempt(act.sim_id, act.attempt, outcome, error=error)
            action = decide_after_failure(
                completed=completed, lineage_failures=self.ledger.lineage_failures(act.sim_id),
                sim_failures=rec.failures, max_retries=self.plan.max_retries,
                failures_before_redraw=self.plan.failures_before_redraw)
            if action in ("give_up", "redraw"):
                self.ledger.mark_failed(act.sim_id)
            elif action == "relaunch":
                self.ledger.mark_pending(act.sim_id)
        if action == "completed":
            # All its steps arrived just before the failure was noticed: a completion, which
            # an adaptive sampler must hear of like any other.
            self._notify_finished(act.sim_id, True)
            return
        self._emit(sim_id=act.sim_id, attempt=act.attempt, outcome=outcome, error=error,
                   action={"give_up": "failed"}.get(action, action))
        if action == "give_up":
            self._notify_finished(act.sim_id, False)
        elif action == "redraw":
            self._notify_finished(act.sim_id, False)
            self._submit(self._new_simulation(replaces=act.sim_id))
        else:
            self._submit(act.sim_id)

    def _notify_finished(self, sim_id: int, completed: bool) -> None:
        with self.sampler_lock:
            self.sampler.simulation_finished(sim_id, completed=completed)
