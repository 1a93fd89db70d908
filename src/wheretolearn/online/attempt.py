"""One simulation attempt, run where it can be killed (SPEC §5, "Ensemble executor").

The Dask task :func:`run_simulation_attempt` does not run the simulation itself: it hands
it to an :class:`AttemptProcess`, a child process in its **own session** (so its process
group holds it and everything it starts, e.g. an external solver), and relays the steps the
child writes to its pipe into the ``distributed.Queue`` of the study. Meanwhile the task
polls its own Dask state: when the server cancels the attempt (timeout) the task kills the
child's whole process group and returns, so the worker slot is free at once even when the
simulation hangs in C code or spins without ever polling (a thread cannot be killed; a
process can). A killed child is replaced by a fresh one at the next attempt; healthy
children are reused (one per worker thread), so the problem is built once.

Back-pressure: when the queue is full, ``put`` waits; every ``heartbeat_seconds`` of waiting
(:class:`~wheretolearn.online.messages.Streaming`) the task sends a small heartbeat on a
second, unbounded queue, so the server pauses the
timer of this attempt only -- its messages are really waiting -- and not that of a hung one.
The attempt's first message, its hello (which worker runs it), goes on that queue too: the
server's monitor reads it at once, even while the receiver waits on a full buffer.

Child protocol (stdin: one JSON request per line; stdout: frames ``kind (1 byte), length
(int64), payload``): ``R`` ready (problem built), ``S`` one encoded step, ``D`` done (JSON
``{"outcome": ...}``), ``E`` error (text). Anything the simulation prints goes to stderr.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

import numpy as np

from .faults import FaultInjection, SimulatedCrash, fault_plan, resend_plan
from .messages import Streaming, encode_heartbeat, encode_hello, encode_step, pack_messages

__all__ = ["AttemptProcess", "run_simulation_attempt", "kill_process_group"]

_FRAME = struct.Struct("<cq")
_PROBLEMS: dict[str, Any] = {}      # per process: problems built once, reused
_POOL: list["AttemptProcess"] = []  # idle healthy children of this worker process
_POOL_LOCK = threading.Lock()


def kill_process_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (a child started with
    ``start_new_session=True``); no error when it is already gone."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _get_problem(spec_json: str) -> Any:
    problem = _PROBLEMS.get(spec_json)
    if problem is None:
        from wheretolearn.problems import get_problem

        spec = json.loads(spec_json)
        problem = get_problem(spec["name"], **spec.get("options", {}))
        _PROBLEMS[spec_json] = problem
    return problem


# ---------------------------------------------------------------------------- parent side
class AttemptProcess:
    """A child Python process, in its own session, that runs simulation attempts.

    Parameters
    ----------
    problem_spec : str
        JSON ``{"name", "options"}`` of the problem; the child builds it before it
        reports ready (so the import cost is paid outside any attempt's timer).
    ready_timeout : float
        Seconds to wait for the child to be ready.

    Use :meth:`run` to stream one attempt's frames, :meth:`kill` to end it (with its whole
    process group).
    """

    def __init__(self, problem_spec: str, *, ready_timeout: float = 300.0):
        self.problem_spec = problem_spec
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wheretolearn.online._attempt_main"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, bufsize=0, start_new_session=True, env=env)
        self._buf = bytearray()
        self._send({"load": problem_spec})
        frame = self.read_frame(ready_timeout)
        if frame is None or frame[0] != b"R":
            self.kill()
            raise RuntimeError(f"the simulation process did not start: {frame!r}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _send(self, request: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()

    def start(self, request: dict) -> None:
        """Send one attempt request (see :func:`_child_run`)."""
        self._send(request)

    def read_frame(self, timeout: float) -> tuple[bytes, bytes] | None | str:
        """The next frame ``(kind, payload)``; ``None`` when none came within ``timeout``;
        ``"eof"`` when the child died."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            if len(self._buf) >= _FRAME.size:
                kind, n = _FRAME.unpack_from(self._buf, 0)
                if len(self._buf) >= _FRAME.size + n:
                    payload = bytes(self._buf[_FRAME.size:_FRAME.size + n])
                    del self._buf[:_FRAME.size + n]
                    return kind, payload
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return "eof"
            self._buf += chunk

    def kill(self) -> None:
        """SIGKILL the child and every process of its group; reap it."""
        kill_process_group(self.proc.pid)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass


def _take_process(problem_spec: str) -> AttemptProcess:
    with _POOL_LOCK:
        while _POOL:
            p = _POOL.pop()
            if p.alive() and p.problem_spec == problem_spec:
                return p
            p.kill()
    return AttemptProcess(problem_spec)


def _give_back(p: AttemptProcess) -> None:
    with _POOL_LOCK:
        _POOL.append(p)


def prewarm(problem_spec: str) -> None:
    """Start one child (problem built) for this worker process before any attempt runs."""
    _give_back(AttemptProcess(problem_spec))


def _cancelled() -> bool:
    """Whether the Dask task running in this thread was cancelled (or forgotten)."""
    from distributed import get_worker
    from distributed.worker import thread_state

    key = getattr(thread_state, "key", None)
    if key is None:
        return False
    try:
        ts = get_worker().state.tasks.get(key)
    except ValueError:       # not in a worker
        return False
    return ts is None or ts.state in ("cancelled", "released", "forgotten")


class _Cancelled(Exception):
    pass


class _Relay:
    """Groups steps into queue messages and puts them, with heartbeats under back-pressure."""

    def __init__(self, queue: Any, heartbeat_queue: Any, sim_id: int, attempt: int, *,
                 streaming: Streaming, resend_index: int):
        self.queue, self.hb = queue, heartbeat_queue
        self.sim_id, self.attempt = sim_id, attempt
        self.max_bytes, self.flush_seconds = streaming.max_message_bytes, streaming.flush_seconds
        self.hb_seconds, self.resend_index = streaming.heartbeat_seconds, resend_index
        self.group: list[bytes] = []
        self.group_bytes, self.t_group = 0, time.monotonic()
        self.sent = self.messages = 0

    def put(self, blob: bytes) -> None:
        """Put ``blob`` into the queue; while it waits for room, send a heartbeat every
        ``heartbeat_seconds`` (the put runs in a helper thread: a ``put`` with a timeout
        would make the scheduler log an error each time it expires)."""
        done, error = threading.Event(), []

        def target() -> None:
            try:
                self.queue.put(blob)
            except BaseException as exc:  # noqa: BLE001 -- re-raised in the task thread
                error.append(exc)
            finally:
                done.set()

        threading.Thread(target=target, daemon=True, name="wheretolearn-put").start()
        while not done.wait(self.hb_seconds):
            # Still waiting for room: our steps are queued behind others, not hung.
            if _cancelled():
                raise _Cancelled
            self.hb.put(pack_messages([encode_heartbeat(self.sim_id, self.attempt)]))
        if error:
            raise error[0]

    def add(self, msg: bytes) -> None:
        if self.group and self.group_bytes + len(msg) > self.max_bytes:
            self.flush()
        self.group.append(msg)
        self.group_bytes += len(msg)
        if time.monotonic() - self.t_group > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self.group:
            blob = pack_messages(self.group)
            self.put(blob)
            if self.messages == self.resend_index:
                self.put(blob)                  # fault injection: a retried message
            self.messages += 1
            self.sent += len(self.group)
        self.group, self.group_bytes, self.t_group = [], 0, time.monotonic()

    def flush_if_old(self) -> None:
        if self.group and time.monotonic() - self.t_group > self.flush_seconds:
            self.flush()


def run_simulation_attempt(problem_spec: str, sim_id: int, attempt: int, params: list[float],
                           queue_name: str, *, faults: FaultInjection = FaultInjection(),
                           streaming: Streaming = Streaming()) -> dict:
    """Dask task: run one attempt of simulation ``sim_id`` in a killable child process and
    stream its steps to the queue ``queue_name`` (heartbeats to ``queue_name + "-hb"``).

    Steps are sent as soon as the child computed them, grouped into one queue message
    while the group stays below ``streaming.max_message_bytes`` and younger than
    ``streaming.flush_seconds``.

    Parameters
    ----------
    problem_spec : str
        JSON ``{"name": ..., "options": {...}}`` for :func:`wheretolearn.problems.get_problem`.
    sim_id, attempt : int
    params : list of float (d,)
    queue_name : str
        Name of the study's ``distributed.Queue`` of steps.
    faults : FaultInjection
        Fault injection (:mod:`wheretolearn.online.faults`); an injected hang sleeps
        (``"sleep"``) or spins (``"spin"``) in the child for ``faults.hang_seconds``
        (60 s when None).
    streaming : Streaming
        Message size, flush age, heartbeat and cancellation-poll periods
        (:class:`~wheretolearn.online.messages.Streaming`; ``queue_maxsize`` is the
        server's).

    Returns
    -------
    dict ``{"sim_id", "attempt", "steps_sent", "outcome"}``; ``outcome`` is ``"ok"``,
    ``"hung"`` (an injected hang that ended by itself) or ``"cancelled"`` (the server
    cancelled the attempt; its process group was killed). A crash of the simulation raises
    (:class:`SimulatedCrash` for an injected one) after the steps it computed were sent.
    """
    from distributed import Queue, get_worker

    queue, hb = Queue(queue_name), Queue(queue_name + "-hb")
    child = _take_process(problem_spec)
    kind, fault_step = (fault_plan(faults.seed, sim_id, attempt, faults.fail_rate,
                                   int(_get_problem(problem_spec).n_steps))
                        if faults.fail_rate > 0 else (None, -1))
    relay = _Relay(queue, hb, sim_id, attempt, streaming=streaming,
                   resend_index=resend_plan(faults.seed, sim_id, attempt, faults.fail_rate))

    reusable = False

    def result(outcome: str) -> dict:
        return {"sim_id": sim_id, "attempt": attempt, "steps_sent": relay.sent,
                "outcome": outcome}

    try:
        # The hello goes on the unbounded control queue the monitor reads: on the step queue
        # it could wait behind another attempt's step the full buffer holds back, and the
        # server would not know this attempt started (nor time it out) until the buffer freed.
        hb.put(pack_messages([encode_hello(sim_id, attempt, get_worker().address)]))
        child.start({"sim_id": sim_id, "attempt": attempt, "params": list(params),
                     "spec": problem_spec, "fault": [kind, fault_step],
                     "hang_seconds": faults.hang_seconds or 60.0,
                     "hang_mode": faults.hang_mode})
        for frame in _frames(child, streaming.poll_seconds, relay):
            if frame[0] == b"S":
                relay.add(frame[1])
                continue
            relay.flush()                       # steps computed before the end are sent
            reusable = True
            if frame[0] == b"D":
                return result(json.loads(frame[1])["outcome"])
            text = frame[1].decode(errors="replace")
            if text.startswith("SimulatedCrash"):
                raise SimulatedCrash(text.split(": ", 1)[-1])
            raise RuntimeError(f"simulation {sim_id} attempt {attempt} failed: {text}")
        relay.flush()
        raise RuntimeError(f"simulation {sim_id} attempt {attempt}: its process died "
                           f"(exit code {child.proc.poll()})")
    except _Cancelled:
        return result("cancelled")
    finally:
        if reusable and child.alive():
            _give_back(child)
        else:
            child.kill()                        # with its whole process group


def _frames(child: AttemptProcess, poll_seconds: float, relay: _Relay
            ) -> Iterator[tuple[bytes, bytes]]:
    """Frames of the running attempt until the child dies (then the iterator ends);
    raises :class:`_Cancelled` as soon as the server cancelled the task."""
    while True:
        frame = child.read_frame(poll_seconds)
        if frame == "eof":
            return
        if frame is None:
            if _cancelled():
                raise _Cancelled
            relay.flush_if_old()
            continue
        yield frame


# ---------------------------------------------------------------------------- child side
def _write_frame(out: Any, kind: bytes, payload: bytes) -> None:
    out.write(_FRAME.pack(kind, len(payload)) + payload)


def _child_run(out: Any, req: dict) -> None:
    problem = _get_problem(req["spec"])
    sim_id, attempt = int(req["sim_id"]), int(req["attempt"])
    kind, fault_step = req.get("fault") or [None, -1]
    from contextlib import closing

    from ..problems.simulator import simulate_steps

    # sim_id / attempt reach a simulate() that accepts them (an external command's {sim_id},
    # {attempt}); closing() ends the generator however this attempt ends, so a program it
    # launched is stopped even though this child lives on for the next attempt
    steps = simulate_steps(problem, np.asarray(req["params"], dtype=np.float64),
                           sim_id=sim_id, attempt=attempt)
    with closing(steps):
        _child_steps(out, req, steps, sim_id, attempt, kind, fault_step)


def _child_steps(out: Any, req: dict, steps: Iterator, sim_id: int, attempt: int,
                 kind: Any, fault_step: int) -> None:
    for step, field in steps:
        if step == fault_step and kind == "crash":
            raise SimulatedCrash(f"injected crash of simulation {sim_id} attempt {attempt} "
                                 f"at step {step}")
        if step == fault_step and kind == "hang":
            end = time.monotonic() + float(req.get("hang_seconds", 60.0))
            if req.get("hang_mode") == "spin":
                while time.monotonic() < end:   # a tight loop that never polls anything
                    pass
            else:
                time.sleep(max(0.0, end - time.monotonic()))   # blocked in C
            _write_frame(out, b"D", json.dumps({"outcome": "hung"}).encode())
            return
        _write_frame(out, b"S", encode_step(sim_id, attempt, step, field))
    _write_frame(out, b"D", json.dumps({"outcome": "ok"}).encode())


def _child_main() -> None:
    """Loop of the child: read requests from stdin, write frames to the original stdout."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)                               # prints of the simulation go to stderr
    for line in sys.stdin:
        req = json.loads(line)
        if "load" in req:
            _get_problem(req["load"])
            _write_frame(out, b"R", b"")
            continue
        try:
            _child_run(out, req)
        except BrokenPipeError:
            return
        except Exception as exc:  # noqa: BLE001 -- reported to the relay, which raises it
            _write_frame(out, b"E", f"{type(exc).__name__}: {exc}".encode())
