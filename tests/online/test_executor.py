"""Tests of the streaming ensemble executor on a real LocalCluster (no mocks)."""

import threading

import numpy as np
import pytest

from wheretolearn.online.executor import (EnsembleExecutor, decode_step, encode_step,
                                          fault_plan, pack_messages, unpack_messages)
from wheretolearn.online.ledger import SimulationLedger
from wheretolearn.online.samplers import make_sampler
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


def run(client, n_sims, *, collector=None, timeout=60, **kw):
    ledger = SimulationLedger(SPEC["options"]["n_steps"])
    sampler = make_sampler("uniform", BOUNDS, seed=3)
    collector = collector or Collector()
    opts = dict(n_simulations=n_sims, max_concurrent=2, simulation_timeout=20.0, max_retries=3)
    opts.update(kw)
    ex = EnsembleExecutor(client, SPEC, ledger, sampler, collector, **opts).start()
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


def test_crashes_before_redraw_gives_new_parameters(client):
    ledger, _ = run(client, 3, fail_rate=0.6, seed=5, simulation_timeout=0.8, max_retries=6,
                    crashes_before_redraw=1)
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
    ex = EnsembleExecutor(client, SPEC, ledger, sampler, on_sample, n_simulations=1,
                          max_concurrent=1, max_retries=0)
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
