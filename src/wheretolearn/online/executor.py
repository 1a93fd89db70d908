"""Streaming ensemble executor on Dask distributed (SPEC §5, "Ensemble executor").

One Dask task per simulation *attempt* runs ``problem.simulate(params)`` on a worker and
pushes every time step, as soon as it is computed, into a ``distributed.Queue`` (bytes
payloads; the queue's ``maxsize`` gives back-pressure, so a slow trainer slows the
simulations instead of filling memory). The task returns a small status at the end.

On the server two threads run next to the trainer:

* the **receiver** pops messages, drops ``(sim_id, step)`` pairs the ledger already holds
  (a worker that died and was recomputed restarts from step 0; a relaunched attempt sends
  its early steps again) and hands new steps to ``on_sample`` (which puts them into the
  training buffer); only once the buffer accepted a step is it marked received, under
  :attr:`EnsembleExecutor.receive_lock`, so a checkpoint taken under that lock never sees
  a step that is in the ledger but not in the buffer (or the reverse);
* the **monitor** keeps at most ``max_concurrent`` attempts in flight, draws parameters
  just in time (``sampler.ask(1)`` when a slot frees, so an adaptive sampler can still
  change simulations not yet submitted), declares an attempt timed out after
  ``simulation_timeout`` seconds without a message, and relaunches failed attempts
  (crash, timeout, worker lost) with the same parameters, up to ``max_retries`` failures
  per lineage; after ``crashes_before_redraw`` failures of one parameter set it gives the
  lineage new parameters under a new simulation id (Melissa's rule).

Fault injection (``fail_rate`` p, for tests and demos): each attempt crashes (raises
:class:`SimulatedCrash`) with probability p/2 or hangs (stops sending) with probability
p/2, at a random step; the decision is a function of ``(seed, sim_id, attempt)`` only, so a
run is reproducible. A hung attempt polls its own Dask task state and returns as soon as
the server cancels it (or after ``hang_seconds``). A real simulation that hangs cannot be
stopped this way: Dask cannot kill a thread, so it keeps its worker thread until it ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["EnsembleExecutor", "SimulatedCrash", "run_simulation_attempt", "fault_plan",
           "encode_step", "decode_step", "pack_messages", "unpack_messages"]

_HEADER = struct.Struct("<qqqq")  # sim_id, attempt, step (-1: hello), ndim
_LEN = struct.Struct("<q")
_PROBLEMS: dict[str, Any] = {}     # per worker process: problems built once, reused


class SimulatedCrash(RuntimeError):
    """Raised by a fault-injected simulation attempt."""


# ---------------------------------------------------------------------------- messages
def encode_step(sim_id: int, attempt: int, step: int, field: np.ndarray) -> bytes:
    """Pack one time step ``field`` (any shape, sent as float32) into bytes."""
    arr = np.ascontiguousarray(field, dtype=np.float32)
    shape = struct.pack(f"<{arr.ndim}q", *arr.shape)
    return _HEADER.pack(sim_id, attempt, step, arr.ndim) + shape + arr.tobytes()


def _encode_hello(sim_id: int, attempt: int, worker: str) -> bytes:
    return _HEADER.pack(sim_id, attempt, -1, 0) + worker.encode()


def decode_step(msg: bytes) -> tuple[int, int, int, Any]:
    """Inverse of :func:`encode_step`: ``(sim_id, attempt, step, field)``.

    For a hello message (step ``-1``) ``field`` is the worker address (str).
    """
    sim_id, attempt, step, ndim = _HEADER.unpack_from(msg, 0)
    off = _HEADER.size
    if step < 0:
        return sim_id, attempt, step, bytes(msg[off:]).decode()
    shape = struct.unpack_from(f"<{ndim}q", msg, off)
    off += 8 * ndim
    field = np.frombuffer(msg, dtype=np.float32, offset=off).reshape(shape)
    return sim_id, attempt, step, field  # read-only view; the buffer's Sample copies it


def pack_messages(parts: list[bytes]) -> bytes:
    """Several encoded steps in one queue message (each prefixed by its length)."""
    return b"".join(_LEN.pack(len(p)) + p for p in parts)


def unpack_messages(blob: bytes) -> list[memoryview]:
    """Inverse of :func:`pack_messages`."""
    view, out, off = memoryview(blob), [], 0
    while off < len(view):
        (n,) = _LEN.unpack_from(view, off)
        out.append(view[off + _LEN.size: off + _LEN.size + n])
        off += _LEN.size + n
    return out


# ---------------------------------------------------------------------------- faults
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


def _get_problem(spec_json: str) -> Any:
    problem = _PROBLEMS.get(spec_json)
    if problem is None:
        from wheretolearn.problems import get_problem

        spec = json.loads(spec_json)
        problem = get_problem(spec["name"], **spec.get("options", {}))
        _PROBLEMS[spec_json] = problem
    return problem


def _cancelled() -> bool:
    """Whether the Dask task running in this thread was cancelled (or forgotten)."""
    from distributed import get_worker
    from distributed.worker import thread_state

    key = getattr(thread_state, "key", None)
    if key is None:
        return False
    ts = get_worker().state.tasks.get(key)
    return ts is None or ts.state in ("cancelled", "released", "forgotten")


def _hang(max_seconds: float) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_seconds and not _cancelled():
        time.sleep(0.05)


def run_simulation_attempt(problem_spec: str, sim_id: int, attempt: int, params: list[float],
                           queue_name: str, *, fail_rate: float = 0.0, seed: int = 0,
                           hang_seconds: float = 60.0, max_message_bytes: int = 262144,
                           flush_seconds: float = 0.2) -> dict:
    """Dask task: run one attempt of simulation ``sim_id`` and stream its steps.

    Steps are sent as soon as they are computed, grouped into one queue message while the
    group stays below ``max_message_bytes`` and younger than ``flush_seconds`` (every queue
    message is a round trip through the scheduler; grouping small fields cuts that cost,
    a field above the limit goes alone).

    Parameters
    ----------
    problem_spec : str
        JSON ``{"name": ..., "options": {...}}`` for :func:`wheretolearn.problems.get_problem`.
    params : list of float (d,)
    queue_name : str
        Name of the ``distributed.Queue`` the steps go to (see :func:`pack_messages`).

    Returns
    -------
    dict ``{"sim_id", "attempt", "steps_sent", "outcome"}``; ``outcome`` is ``"ok"`` or
    ``"hung"`` (a fault-injected hang that ended). A crash raises :class:`SimulatedCrash`
    (steps computed but not yet sent are lost with it, as with a real crash).
    """
    from distributed import Queue, get_worker

    queue = Queue(queue_name)
    queue.put(pack_messages([_encode_hello(sim_id, attempt, get_worker().address)]))
    problem = _get_problem(problem_spec)
    kind, fault_step = fault_plan(seed, sim_id, attempt, fail_rate, problem.n_steps)
    sent, group, group_bytes, t_group = 0, [], 0, time.monotonic()
    from wheretolearn.problems.simulator import simulate_steps

    steps = simulate_steps(problem, np.asarray(params, dtype=np.float64), sim_id=sim_id,
                           attempt=attempt)
    # closing(): an external program is killed however this task ends (a raised crash
    # keeps the frame, and so an unclosed generator, alive in the traceback)
    with contextlib.closing(steps):
        for step, field in steps:
            if step == fault_step and kind == "crash":
                raise SimulatedCrash(f"injected crash of simulation {sim_id} attempt {attempt} "
                                     f"at step {step}")
            if step == fault_step and kind == "hang":
                _hang(hang_seconds)
                return {"sim_id": sim_id, "attempt": attempt, "steps_sent": sent, "outcome": "hung"}
            msg = encode_step(sim_id, attempt, step, field)
            if group and group_bytes + len(msg) > max_message_bytes:
                queue.put(pack_messages(group))
                sent += len(group)
                group, group_bytes, t_group = [], 0, time.monotonic()
            group.append(msg)
            group_bytes += len(msg)
            if time.monotonic() - t_group > flush_seconds:
                queue.put(pack_messages(group))
                sent += len(group)
                group, group_bytes, t_group = [], 0, time.monotonic()
    if group:
        queue.put(pack_messages(group))
        sent += len(group)
    return {"sim_id": sim_id, "attempt": attempt, "steps_sent": sent, "outcome": "ok"}


class _InjectedCrashFilter(logging.Filter):
    """Drop the worker's "Compute Failed" log records of fault-injected crashes only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SimulatedCrash" not in record.getMessage()


def _setup_worker(problem_spec: str) -> None:
    """Build the problem once per worker process before any simulation is timed: importing
    the solver (torch) can take seconds on a loaded machine, longer than a short
    ``simulation_timeout``."""
    logger = logging.getLogger("distributed.worker")
    if not any(isinstance(f, _InjectedCrashFilter) for f in logger.filters):
        logger.addFilter(_InjectedCrashFilter())
    _get_problem(problem_spec)


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
    finished_at: float | None = None   # task returned but steps may still be in the queue


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
    on_sample : callable ``(sim_id, step, params (d,), field, timeout) -> bool``
        Called by the receiver thread for each new step; return False when the buffer is
        full (the step is offered again a moment later).
    n_simulations : int
        Budget: lineages to run (redrawn simulations continue a lineage).
    max_concurrent : int
        Attempts in flight at once.
    simulation_timeout : float
        Seconds without a message after which an attempt is declared timed out.
    max_retries : int
        Failed attempts a lineage may relaunch; one more failure records it failed.
    crashes_before_redraw : int or None
        Failures of one parameter set before its lineage gets new parameters (None: never).
    fail_rate : float in [0, 1)
        Fault injection (see module docstring).
    seed : int
        Seed of the fault injection.
    queue_maxsize : int
        Messages the Dask queue holds before producers block.
    max_message_bytes : int
        Steps of one simulation are grouped into queue messages up to this size.
    hang_seconds : float or None
        Longest a fault-injected hang lasts if never cancelled (default 3 x timeout).
    sampler_lock : threading.Lock, optional
        Shared with the trainer thread, which calls ``sampler.tell``.
    cluster_handle : ClusterHandle, optional
        ``ensure_workers()`` is called every ``ensure_every`` seconds.
    on_event : callable ``(dict) -> None``, optional
        Called for attempt events (relaunch, failure), e.g. for logging.
    """

    def __init__(self, client: Any, problem_spec: dict, ledger: Any, sampler: Any,
                 on_sample: Callable[..., bool], *, n_simulations: int, max_concurrent: int,
                 simulation_timeout: float = 60.0, max_retries: int = 3,
                 crashes_before_redraw: int | None = None, fail_rate: float = 0.0,
                 seed: int = 0, queue_maxsize: int = 64, hang_seconds: float | None = None,
                 max_message_bytes: int = 262144,
                 sampler_lock: threading.Lock | None = None, cluster_handle: Any = None,
                 ensure_every: float = 5.0, on_event: Callable[[dict], None] | None = None):
        self.client = client
        self.problem_spec = json.dumps(problem_spec, sort_keys=True)
        self.ledger = ledger
        self.sampler = sampler
        self.on_sample = on_sample
        self.n_simulations = int(n_simulations)
        self.max_concurrent = int(max_concurrent)
        self.simulation_timeout = float(simulation_timeout)
        self.max_retries = int(max_retries)
        self.crashes_before_redraw = crashes_before_redraw
        self.fail_rate = float(fail_rate)
        self.seed = int(seed)
        self.hang_seconds = float(hang_seconds or 3 * self.simulation_timeout)
        self.max_message_bytes = int(max_message_bytes)
        self.sampler_lock = sampler_lock or threading.Lock()
        self.cluster_handle = cluster_handle
        self.ensure_every = float(ensure_every)
        self.on_event = on_event
        #: Held while a step goes into the buffer and the ledger; hold it to snapshot both.
        self.receive_lock = threading.Lock()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.messages_received = 0
        self._stop = threading.Event()
        self._active: dict[int, _Active] = {}
        self._lock = threading.Lock()
        from distributed import Queue

        self.queue_name = f"wheretolearn-steps-{uuid.uuid4().hex}"
        self._queue = Queue(self.queue_name, client=client, maxsize=int(queue_maxsize))
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
        if self.on_event is not None:
            self.on_event(event)

    # ------------------------------------------------------------------ receiver
    def _receive_loop(self) -> None:
        while not self._stop.is_set():
            msgs = self._queue.get(batch=True)
            if not msgs:
                time.sleep(0.005)
                continue
            for blob in msgs:
                for msg in unpack_messages(blob):
                    self._handle(msg)
                    if self._stop.is_set():
                        return

    def _handle(self, msg: bytes) -> None:
        sim_id, attempt, step, field = decode_step(msg)
        self.messages_received += 1
        self._touch(sim_id, attempt)
        if step < 0:
            self.ledger.set_worker(sim_id, attempt, field)
            return
        params = None
        while not self._stop.is_set():
            with self.receive_lock:
                if not self.ledger.is_new_step(sim_id, step):
                    self.ledger.count_dropped(sim_id)
                    return
                if params is None:
                    params = self.ledger.params(sim_id)
                if self.on_sample(sim_id, step, params, field, 0.05):
                    self.ledger.record_step(sim_id, step)
                    return
            # Buffer full: let the trainer (and a checkpoint) take the lock, then retry.
            # The simulations wait on us (back-pressure), so their silence is no timeout.
            self._touch_all()
            time.sleep(0.001)

    def _touch_all(self) -> None:
        now = time.monotonic()
        with self._lock:
            for act in self._active.values():
                act.last_activity = max(act.last_activity, now)

    def _touch(self, sim_id: int, attempt: int) -> None:
        with self._lock:
            act = self._active.get(sim_id)
            if act is not None and act.attempt == attempt:
                act.last_activity = time.monotonic()
                act.started = True

    # ------------------------------------------------------------------ monitor
    def _monitor_loop(self) -> None:
        last_ensure = time.monotonic()
        while not self._stop.is_set():
            self._check_active()
            self._fill_slots()
            if self._finished():
                self.done.set()
                return
            if self.cluster_handle is not None and time.monotonic() - last_ensure > self.ensure_every:
                last_ensure = time.monotonic()
                self.cluster_handle.ensure_workers()
            time.sleep(0.02)

    def _finished(self) -> bool:
        c = self.ledger.counts()
        return (not self._active and c["pending"] == 0 and c["running"] == 0
                and self.ledger.lineages >= self.n_simulations)

    def _submit(self, sim_id: int) -> None:
        attempt = self.ledger.start_attempt(sim_id)
        params = self.ledger[sim_id].params
        future = self.client.submit(
            run_simulation_attempt, self.problem_spec, sim_id, attempt, list(params),
            self.queue_name, fail_rate=self.fail_rate, seed=self.seed,
            hang_seconds=self.hang_seconds, max_message_bytes=self.max_message_bytes,
            key=f"sim-{sim_id}-attempt-{attempt}-"
            f"{uuid.uuid4().hex[:6]}", pure=False, retries=0)
        with self._lock:
            self._active[sim_id] = _Active(sim_id, attempt, future, time.monotonic())

    def _fill_slots(self) -> None:
        while len(self._active) < self.max_concurrent and not self._stop.is_set():
            pending = [i for i in self.ledger.ids("pending") if i not in self._active]
            if pending:
                self._submit(pending[0])
                continue
            if self.ledger.lineages >= self.n_simulations:
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
                    if result.get("outcome") == "hung":
                        self._fail(act, "timeout", "hung attempt ended without its steps")
                        continue
                if now - act.last_activity > self.simulation_timeout:
                    self._fail(act, "lost", "task ended but some steps never arrived")
            elif fut.status in ("error", "cancelled", "lost"):
                outcome, error = self._classify(fut)
                self._fail(act, outcome, error)
            elif act.started and now - act.last_activity > self.simulation_timeout:
                # Only started attempts time out: a task waiting for a worker (a batch job
                # still queued) is Dask's to schedule, not a hung simulation.
                self._fail(act, "timeout", f"no message for {self.simulation_timeout:g} s")

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
        """End the current attempt badly; relaunch, redraw or give up."""
        self._release(act)
        # Under the receive lock: a step being handed to the buffer right now is recorded
        # before the simulation leaves the running state (else the buffer would hold a step
        # the ledger refused as late, and a checkpoint would see it in one and not the other).
        with self.receive_lock, self.ledger.lock:
            rec = self.ledger[act.sim_id]
            if rec.state == "completed":
                return
            self.ledger.end_attempt(act.sim_id, act.attempt, outcome, error=error)
            lineage_failures = self.ledger.lineage_failures(act.sim_id)
            give_up = lineage_failures > self.max_retries
            redraw = (not give_up and self.crashes_before_redraw is not None
                      and rec.failures >= self.crashes_before_redraw)
            if give_up or redraw:
                self.ledger.mark_failed(act.sim_id)
            else:
                self.ledger.mark_pending(act.sim_id)
        self._emit(sim_id=act.sim_id, attempt=act.attempt, outcome=outcome, error=error,
                   action="failed" if give_up else "redraw" if redraw else "relaunch")
        if give_up:
            self._notify_finished(act.sim_id, False)
            return
        if redraw:
            self._notify_finished(act.sim_id, False)
            new_id = self._new_simulation(replaces=act.sim_id)
            self._submit(new_id)
        else:
            self._submit(act.sim_id)

    def _notify_finished(self, sim_id: int, completed: bool) -> None:
        hook = getattr(self.sampler, "simulation_finished", None)
        if hook is not None:
            with self.sampler_lock:
                hook(sim_id, completed=completed)
