"""Tests of the streaming ensemble executor on a real LocalCluster (no mocks)."""

import threading
from dataclasses import fields

import numpy as np
import pytest

from wheretolearn.online.executor import (EnsembleExecutor, EnsemblePlan, ExecutorHooks,
                                          FaultInjection, Streaming, decode_step, encode_step,
                                          fault_plan, pack_messages, unpack_messages)
from wheretolearn.online.ledger import SimulationLedger
from wheretolearn.online.sampler_registry import make_sampler
from wheretolearn.problems import get_problem

SPEC = {"name": "heat2d", "options": {"n": 8, "n_steps": 6}}
BOUNDS = np.array([[100.0, 500.0]] * 5)


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as c:
        # Import the solver on the workers first: on a loaded machine that takes longer
        # than the short simulation timeouts used below.
        c.run(_warm_up)
        yield c


def _warm_up():
    from wheretolearn.problems import get_problem

    get_problem("heat2d", **SPEC["options"])


class Collector:
    """on_sample callback that stores fields; optionally refuses every k-th offer."""

    def __init__(self, refuse_every=0):
        self.fields, self.order, self.lock = {}, [], threading.Lock()
        self.refuse_every, self.offers = refuse_every, 0

    def __call__(self, sim_id, step, params, field, timeout):
        with self.lock:
            self.offers += 1
            if self.refuse_every and self.offers % self.refuse_every == 0:
                return False                     # "buffer full": must be offered again
            assert (sim_id, step) not in self.fields
            self.fields[(sim_id, step)] = (params.copy(), field)
            self.order.append((sim_id, step))
            return True


def options(**kw):
    """Flat keywords (``fail_rate=0.5, max_message_bytes=1, ...``) -> the executor's option
    objects (``plan``, ``faults``, ``streaming``)."""
    out = {}
    for name, cls in (("plan", EnsemblePlan), ("faults", FaultInjection),
                      ("streaming", Streaming)):
        keys = {f.name for f in fields(cls)}
        mine = {k: kw.pop(k) for k in list(kw) if k in keys}
        if mine:
            out[name] = cls(**mine)
    assert not kw, f"unknown executor options {kw}"
    return out


def run(client, n_sims, *, collector=None, timeout=60, **kw):
    ledger = SimulationLedger(SPEC["options"]["n_steps"])
    sampler = make_sampler("uniform", BOUNDS, seed=3)
    collector = collector or Collector()
    opts = dict(n_simulations=n_sims, max_concurrent=2, simulation_timeout=20.0, max_retries=3)
    opts.update(kw)
    ex = EnsembleExecutor(client, SPEC, ledger, sampler, hooks=ExecutorHooks(collector),
                          **options(**opts)).start()
    assert ex.done.wait(timeout), ledger.summary()
    ex.stop()
    assert ex.error is None
    return ledger, collector


def test_message_round_trip_and_fault_plan_is_reproducible():
    field = np.arange(12, dtype=np.float64).reshape(3, 4)
    sim, att, step, back = decode_step(encode_step(7, 2, 5, field))
    assert (sim, att, step) == (7, 2, 5)
    np.testing.assert_array_equal(back, field.astype(np.float32))
    parts = [encode_step(1, 1, s, field * s) for s in range(3)]
    for s, part in enumerate(unpack_messages(pack_messages(parts))):
        assert decode_step(part)[2] == s
        np.testing.assert_array_equal(decode_step(part)[3], field * s)
    plans = [fault_plan(1, s, 1, 0.4, 10) for s in range(4000)]
    assert plans == [fault_plan(1, s, 1, 0.4, 10) for s in range(4000)]
    kinds = [k for k, _ in plans]
    # P(crash) = P(hang) = 0.2: binomial standard deviation ~0.0063
    assert abs(kinds.count("crash") / 4000 - 0.2) < 0.03
    assert abs(kinds.count("hang") / 4000 - 0.2) < 0.03
    assert fault_plan(1, 0, 1, 0.0, 10) == (None, -1)


def test_streams_every_step_with_the_solver_values(client):
    ledger, col = run(client, 5, collector=Collector(refuse_every=7))
    assert ledger.counts() == {"pending": 0, "running": 0, "completed": 5, "failed": 0}
    assert len(col.fields) == 5 * 6 and ledger.samples_received == 30
    params = np.array([ledger.params(i) for i in range(5)])
    truth = get_problem("heat2d", **SPEC["options"])(params)     # batched solve, (5, 6, 8, 8)
    for (sim, step), (p, field) in col.fields.items():
        np.testing.assert_array_equal(p, params[sim])
        np.testing.assert_allclose(field, truth[sim, step], rtol=1e-6)
    # steps of one simulation arrive in order (the queue is FIFO per producer)
    for sim in range(5):
        steps = [s for i, s in col.order if i == sim]
        assert steps == sorted(steps)
    # parameters come from the sampler, in order of the ids (just-in-time ask(1))
    np.testing.assert_allclose(params, make_sampler("uniform", BOUNDS, seed=3).ask(5))


class WorkerKnown(Collector):
    """Collector that records, at each accepted step, the worker the ledger names for the
    step's attempt (the monitor's polling period must not matter)."""

    def __init__(self):
        super().__init__()
        self.ledger, self.workers = None, []

    def __call__(self, sim_id, step, params, field, timeout):
        self.workers.append(self.ledger[sim_id].current_attempt.worker)
        return super().__call__(sim_id, step, params, field, timeout)


def test_the_worker_of_an_attempt_is_known_before_its_first_step(client):
    # Slow monitor: the control queue is read by the monitor only every 30 s; the receiver
    # must still read an attempt's hello before recording its first step.
    ledger = SimulationLedger(SPEC["options"]["n_steps"])
    col = WorkerKnown()
    col.ledger = ledger
    ex = EnsembleExecutor(client, SPEC, ledger, make_sampler("uniform", BOUNDS, seed=3),
                          hooks=ExecutorHooks(col),
                          **options(n_simulations=4, max_concurrent=2, simulation_timeout=120.0,
                                    heartbeat_seconds=60.0)).start()
    assert ex.done.wait(120), ledger.summary()
    ex.stop()
    assert ex.error is None
    addresses = set(client.scheduler_info()["workers"])
    assert len(col.workers) == 4 * 6
    assert set(col.workers) <= addresses, col.workers


def test_injected_faults_are_retried_and_recorded_as_planned(client):
    seed, rate = 1, 0.5
    # timeout long enough that a slow but healthy attempt is never taken for a hang
    ledger, col = run(client, 8, fail_rate=rate, seed=seed, simulation_timeout=2.5,
                      max_retries=10)
    s = ledger.summary()
    assert s["simulations_completed"] == 8 and s["simulations_failed"] == 0
    assert len(col.fields) == 8 * 6
    for rec in ledger:
        for a in rec.attempts:
            kind, _ = fault_plan(seed, rec.sim_id, a.number, rate, 6)
            want = {"crash": "crash", "hang": "timeout", None: "ok"}[kind]
            assert a.outcome == want, (rec.sim_id, a.number, kind, a.outcome)
    assert s["retries"] == sum(len(r.attempts) - 1 for r in ledger) > 0


def test_simulation_failed_after_its_retries(client):
    # fail_rate 0.99: nearly every attempt fails; max_retries=1 -> two attempts, then failed
    ledger, _ = run(client, 4, fail_rate=0.99, seed=2, simulation_timeout=0.8, max_retries=1)
    for rec in ledger:
        if rec.state == "failed":
            assert len(rec.attempts) == 2
            assert all(a.outcome in ("crash", "timeout") for a in rec.attempts)
    assert ledger.counts()["failed"] >= 3
    assert ledger.counts()["completed"] + ledger.counts()["failed"] == 4


def test_failures_before_redraw_gives_new_parameters(client):
    ledger, _ = run(client, 3, fail_rate=0.6, seed=5, simulation_timeout=0.8, max_retries=6,
                    failures_before_redraw=1)
    redrawn = [r for r in ledger if r.replaced_by is not None]
    assert redrawn, "with fail rate 0.6 some simulation must have been redrawn"
    for r in redrawn:
        new = ledger[r.replaced_by]
        assert r.state == "failed" and new.replaces == r.sim_id and new.lineage == r.lineage
        assert not np.allclose(new.params, r.params)
    assert ledger.lineages == 3
    # every lineage ends completed or failed, exactly once
    ends = [r for r in ledger if r.replaced_by is None]
    assert len(ends) == 3 and all(r.state in ("completed", "failed") for r in ends)


def test_back_pressure_is_not_mistaken_for_a_hang(client):
    """A full buffer for longer than the timeout stalls the simulations (queue back-pressure)
    but must not time them out."""
    import time

    class SlowBuffer(Collector):
        def __init__(self):
            super().__init__()
            self.t0 = time.monotonic()

        def __call__(self, sim_id, step, params, field, timeout):
            if time.monotonic() - self.t0 < 3.0:      # "full" for 3 s
                time.sleep(timeout)
                return False
            return super().__call__(sim_id, step, params, field, timeout)

    ledger, col = run(client, 4, collector=SlowBuffer(), simulation_timeout=1.0,
                      queue_maxsize=2, max_message_bytes=1)
    assert ledger.summary()["retries"] == 0
    assert ledger.counts()["completed"] == 4 and len(col.fields) == 4 * 6


def test_step_accepted_while_the_attempt_is_given_up_is_in_buffer_and_ledger(client):
    """The monitor may give a simulation up while the receiver is handing one of its steps to
    the buffer. The step must then end in both the buffer and the ledger (or in neither):
    before the fix the ledger refused it as "late" although the buffer already held it."""
    from wheretolearn.online.executor import _Active

    class ErroredFuture:
        status = "error"

    ledger = SimulationLedger(SPEC["options"]["n_steps"])
    sampler = make_sampler("uniform", BOUNDS, seed=3)
    accepted = []

    def on_sample(sim_id, step, params, field, timeout):
        # The monitor gives up on the simulation (no retries left) at this very moment.
        monitor = threading.Thread(target=ex._fail, args=(act, "crash", "injected"))
        monitor.start()
        monitor.join(1.0)
        accepted.append((sim_id, step))
        monitor_threads.append(monitor)
        return True

    monitor_threads = []
    ex = EnsembleExecutor(client, SPEC, ledger, sampler, hooks=ExecutorHooks(on_sample),
                          plan=EnsemblePlan(n_simulations=1, max_concurrent=1, max_retries=0))
    sim_id = ledger.new_simulation(BOUNDS[:, 0])
    attempt = ledger.start_attempt(sim_id)
    act = _Active(sim_id, attempt, ErroredFuture(), 0.0, started=True)
    ex._active[sim_id] = act
    ex._handle(encode_step(sim_id, attempt, 0, np.zeros((8, 8))))
    for t in monitor_threads:
        t.join(10)
    assert accepted == [(sim_id, 0)]
    assert ledger[sim_id].state == "failed" and ledger[sim_id].has_step(0)
    assert ledger.samples_received == 1 and ledger.late_dropped == 0


# ------------------------------------------------------------------ issue 14: real faults
@pytest.fixture(scope="module")
def one_worker():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as c:
        c.run(_warm_up)
        yield c


def test_a_hang_that_never_polls_frees_its_slot(one_worker):
    """A simulation spinning in a tight loop (it never polls for cancellation) on the only
    worker: the timeout must kill it, so that the relaunch runs at once. Before, the
    timeout only cancelled the Dask future: the relaunch queued behind the hung thread
    until the hang ended by itself (here after 120 s)."""
    import time

    seed, rate = 12, 0.5
    assert fault_plan(seed, 0, 1, rate, 6) == ("hang", 2)
    assert fault_plan(seed, 0, 2, rate, 6) == (None, -1)
    t0 = time.monotonic()
    ledger, col = run(one_worker, 1, fail_rate=rate, seed=seed, simulation_timeout=1.0,
                      hang_seconds=120.0, hang_mode="spin", max_concurrent=1, timeout=100)
    assert time.monotonic() - t0 < 90                  # well before the hang would end
    attempts = ledger[0].attempts
    assert [a.outcome for a in attempts] == ["timeout", "ok"]
    assert len(col.fields) == 6


def test_a_full_buffer_does_not_hide_a_hang(client):
    """Simulation 0 hangs at step 0 while the buffer is full (simulation 1's steps wait):
    back-pressure must pause the timers of waiting attempts only, so the hang is declared
    after about ``simulation_timeout``, long before the buffer frees. Before, every timer
    was reset while the buffer was full and the hang was found only after the stall."""
    import time

    seed, rate, stall = 146, 0.5, 8.0
    assert fault_plan(seed, 0, 1, rate, 6) == ("hang", 0)
    assert fault_plan(seed, 1, 1, rate, 6) == (None, -1)

    class FullForAWhile(Collector):
        def __init__(self):
            super().__init__()
            self.t_first = None

        def __call__(self, sim_id, step, params, field, timeout):
            self.t_first = self.t_first or time.monotonic()
            if time.monotonic() - self.t_first < stall:
                time.sleep(timeout)
                return False
            return super().__call__(sim_id, step, params, field, timeout)

    col = FullForAWhile()
    ledger, _ = run(client, 2, collector=col, fail_rate=rate, seed=seed,
                    simulation_timeout=1.0, hang_seconds=60.0, max_concurrent=2,
                    max_message_bytes=1)
    first = ledger[0].attempts[0]
    assert first.outcome == "timeout"
    # declared during the stall (wall clock of the ledger: UNIX seconds)
    stall_end_unix = time.time() - (time.monotonic() - (col.t_first + stall))
    assert first.end < stall_end_unix - 2.0, (first.end, stall_end_unix)
    # the healthy simulation, whose steps waited, was never timed out
    assert [a.outcome for a in ledger[1].attempts] == ["ok"]
    assert ledger.counts()["completed"] == 2


def _steps_sent(seed, rate, sim_id, attempt, n_steps):
    from wheretolearn.online.faults import resend_plan

    kind, step = fault_plan(seed, sim_id, attempt, rate, n_steps)
    sent = n_steps if kind is None else step
    return sent + (1 if resend_plan(seed, sim_id, attempt, rate) == 0 and sent > 0 else 0)


def test_injected_faults_resend_steps_and_every_redelivery_is_dropped(client):
    """A crashed or hung attempt sent the steps it computed before the fault; its relaunch
    sends them again; a retried message arrives twice. Every one of these redeliveries
    must be dropped, and counted: total arrivals - distinct steps, computed from the
    fault plan alone (one step per message)."""
    seed, rate, n = 4, 0.5, 6
    ledger, col = run(client, 6, fail_rate=rate, seed=seed, simulation_timeout=1.5,
                      max_retries=20, max_message_bytes=1)
    s = ledger.summary()
    assert s["simulations_completed"] == 6 and len(col.fields) == 6 * n  # Collector asserts once
    arrivals = sum(_steps_sent(seed, rate, r.sim_id, a.number, n)
                   for r in ledger for a in r.attempts)
    dropped = s["redeliveries_dropped"] + s["late_dropped"]
    assert dropped == arrivals - 6 * n
    assert s["redeliveries_dropped"] > 0


def test_failure_noticed_after_completion_tells_the_sampler(client):
    """``_fail`` on a simulation whose last step just arrived: nothing is relaunched, and
    the sampler hears of a completion (before, ``_fail`` returned without telling it)."""
    from wheretolearn.online.executor import _Active

    class ErroredFuture:
        status = "error"

        def cancel(self):
            pass

    class Sampler:
        adaptive = True

        def __init__(self):
            self.finished = []

        def ask(self, n, sim_ids=None):
            return BOUNDS[:, 0][None].repeat(n, 0)

        def simulation_finished(self, sim_id, *, completed):
            self.finished.append((sim_id, completed))

    ledger = SimulationLedger(SPEC["options"]["n_steps"])
    sampler = Sampler()
    ex = EnsembleExecutor(client, SPEC, ledger, sampler, hooks=ExecutorHooks(lambda *a: True),
                          plan=EnsemblePlan(n_simulations=1, max_concurrent=1, max_retries=0))
    sim_id = ledger.new_simulation(BOUNDS[:, 0])
    attempt = ledger.start_attempt(sim_id)
    for step in range(SPEC["options"]["n_steps"]):
        ledger.record_step(sim_id, step)
    act = _Active(sim_id, attempt, ErroredFuture(), 0.0, started=True)
    ex._active[sim_id] = act
    ex._fail(act, "crash", "reported after the last step")
    assert sampler.finished == [(sim_id, True)]
    assert ledger[sim_id].state == "completed" and len(ledger[sim_id].attempts) == 1
    assert not ex._active


def test_receiver_blocks_instead_of_spinning_and_stops_at_the_end(client):
    import time

    ledger = SimulationLedger(SPEC["options"]["n_steps"])
    ex = EnsembleExecutor(client, SPEC, ledger, make_sampler("uniform", BOUNDS, seed=3),
                          hooks=ExecutorHooks(Collector()),
                          plan=EnsemblePlan(n_simulations=2, max_concurrent=2)).start()
    t0 = time.monotonic()
    assert ex.done.wait(60)
    elapsed = time.monotonic() - t0
    receiver = ex._threads[0]
    receiver.join(5)
    assert not receiver.is_alive()                    # stopped once the ensemble ended
    # two round trips per batch of messages (a blocking get), plus heartbeat polls every
    # 0.25 s; the spinning receiver made about 170 round trips a second
    assert ex.queue_gets <= 2 * ex.messages_received + 6 * elapsed + 10
    ex.stop()


@pytest.mark.parametrize("completed, lineage, sim, retries, redraw, want", [
    (True, 9, 9, 0, 1, "completed"),        # late failure report: nothing to do
    (False, 1, 1, 3, None, "relaunch"),
    (False, 3, 3, 3, None, "relaunch"),     # max_retries relaunches allowed
    (False, 4, 4, 3, None, "give_up"),      # one failure more: failed
    (False, 1, 1, 3, 1, "redraw"),          # Melissa's crashes_before_redraw = 1
    (False, 2, 1, 3, 2, "relaunch"),        # failures counted per parameter set
    (False, 3, 2, 3, 2, "redraw"),
    (False, 4, 2, 3, 2, "give_up"),         # giving up wins over redrawing
    (False, 1, 1, 0, None, "give_up"),      # max_retries = 0: no relaunch at all
])
def test_decide_after_failure_table(completed, lineage, sim, retries, redraw, want):
    from wheretolearn.online.policy import decide_after_failure

    assert decide_after_failure(completed=completed, lineage_failures=lineage,
                                sim_failures=sim, max_retries=retries,
                                failures_before_redraw=redraw) == want


@pytest.mark.parametrize("cls, kw, words", [
    (EnsemblePlan, dict(n_simulations=0, max_concurrent=1), ["n_simulations", "0", ">= 1"]),
    (EnsemblePlan, dict(n_simulations=1, max_concurrent=1, simulation_timeout=-1.0),
     ["simulation_timeout", "-1.0", "> 0"]),
    (EnsemblePlan, dict(n_simulations=1, max_concurrent=1, failures_before_redraw=0),
     ["failures_before_redraw", "0"]),
    (FaultInjection, dict(fail_rate=1.0), ["fail_rate", "1.0", "[0, 1)"]),
    (FaultInjection, dict(hang_mode="nap"), ["hang_mode", "'nap'", "'spin'"]),
    (Streaming, dict(queue_maxsize=0), ["queue_maxsize", "0", ">= 1"]),
    (Streaming, dict(heartbeat_seconds=float("inf")), ["heartbeat_seconds", "inf"]),
    (ExecutorHooks, dict(on_sample=None), ["on_sample", "callable"]),
])
def test_executor_options_reject_bad_values_naming_them(cls, kw, words):
    with pytest.raises(ValueError) as err:
        cls(**kw)
    for word in words:
        assert word in str(err.value)


def test_attempt_options_are_picklable_and_map_the_executor_section():
    import pickle

    from wheretolearn.online.config import ExecutorSection

    ex = ExecutorSection(workers=3, simulation_timeout=5.0, fail_rate=0.25, hang_seconds=7.0,
                         queue_maxsize=8, max_message_bytes=100, failures_before_redraw=2)
    assert ex.plan(10) == EnsemblePlan(n_simulations=10, max_concurrent=3,
                                       simulation_timeout=5.0, max_retries=3,
                                       failures_before_redraw=2)
    faults, streaming = ex.fault_injection(4), ex.streaming()
    assert faults == FaultInjection(fail_rate=0.25, seed=4, hang_seconds=7.0)
    assert streaming == Streaming(queue_maxsize=8, max_message_bytes=100)
    assert pickle.loads(pickle.dumps((faults, streaming))) == (faults, streaming)
