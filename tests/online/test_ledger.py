"""Tests of the simulation ledger: states, attempts, deduplication, lineages, persistence."""

import json
import threading

import numpy as np
import pytest

from wheretolearn.online.ledger import SimulationLedger


def test_lifecycle_completes_when_every_step_arrived():
    led = SimulationLedger(3)
    sid = led.new_simulation([1.0, 2.0])
    assert sid == 0 and led[sid].state == "pending"
    assert led.start_attempt(sid, worker="w1") == 1
    assert led[sid].state == "running"
    assert led.record_step(sid, 0) and led.record_step(sid, 2)
    assert led[sid].state == "running" and led[sid].steps_received == 2
    assert led.record_step(sid, 1)
    rec = led[sid]
    assert rec.state == "completed"
    assert rec.attempts[0].outcome == "ok" and rec.attempts[0].worker == "w1"
    assert led.samples_received == 3


def test_duplicates_and_late_steps_are_counted_not_accepted():
    led = SimulationLedger(4)
    sid = led.new_simulation([0.0])
    led.start_attempt(sid)
    assert led.record_step(sid, 1)
    assert not led.record_step(sid, 1)             # redelivery (worker recomputed)
    assert not led.is_new_step(sid, 1) and led.is_new_step(sid, 0)
    for s in (0, 2, 3):
        led.record_step(sid, s)
    assert not led.record_step(sid, 0)             # completed already
    assert (led.samples_received, led.redeliveries_dropped, led.late_dropped) == (4, 1, 1)


def test_retry_then_fail_counts_attempts_and_retries():
    led = SimulationLedger(2)
    sid = led.new_simulation([5.0])
    for outcome in ("crash", "timeout", "lost"):
        n = led.start_attempt(sid)
        led.end_attempt(sid, n, outcome, error="boom")
        led.mark_pending(sid)
    led.mark_failed(sid)
    rec = led[sid]
    assert [a.outcome for a in rec.attempts] == ["crash", "timeout", "lost"]
    assert rec.failures == 3 and led.retries == 2 and rec.state == "failed"
    with pytest.raises(ValueError, match="failed"):
        led.start_attempt(sid)


def test_late_report_of_an_old_attempt_is_ignored():
    led = SimulationLedger(2)
    sid = led.new_simulation([0.0])
    led.start_attempt(sid)
    led.end_attempt(sid, 1, "timeout")
    led.start_attempt(sid)
    led.end_attempt(sid, 1, "crash")               # attempt 1 already closed
    assert [a.outcome for a in led[sid].attempts] == ["timeout", None]
    with pytest.raises(ValueError, match="outcome"):
        led.end_attempt(sid, 2, "exploded")


def test_redraw_continues_the_lineage():
    led = SimulationLedger(2)
    a = led.new_simulation([1.0])
    led.start_attempt(a)
    led.end_attempt(a, 1, "crash")
    led.mark_failed(a)
    b = led.new_simulation([2.0], replaces=a)
    led.start_attempt(b)
    led.end_attempt(b, 1, "crash")
    assert led[a].replaced_by == b and led[b].lineage == a
    assert led.lineages == 1 and len(led) == 2
    assert led.lineage_failures(b) == 2
    assert led.summary()["simulations_redrawn"] == 1


def test_interrupt_running_sets_pending_and_keeps_received_steps():
    led = SimulationLedger(3)
    sid = led.new_simulation([0.0])
    led.start_attempt(sid)
    led.record_step(sid, 0)
    assert led.interrupt_running() == [sid]
    rec = led[sid]
    assert rec.state == "pending" and rec.attempts[0].outcome == "interrupted"
    assert rec.failures == 0                       # interruptions are not failures
    led.start_attempt(sid)
    assert not led.record_step(sid, 0) and led.record_step(sid, 1)


def test_json_round_trip_preserves_everything(tmp_path):
    led = SimulationLedger(10)
    rng = np.random.default_rng(0)
    for i in range(5):
        sid = led.new_simulation(rng.uniform(size=3))
        led.start_attempt(sid)
        for s in rng.choice(10, size=i * 2, replace=False):
            led.record_step(sid, int(s))
    led.record_step(4, int(np.flatnonzero([not led[4].has_step(s) for s in range(10)])[0]))
    path = tmp_path / "ledger.json"
    led.save_json(path)
    back = SimulationLedger.load_json(path)
    assert json.loads(path.read_text())["n_steps"] == 10
    assert back.state_dict() == led.state_dict()
    for rec in back:
        assert [rec.has_step(s) for s in range(10)] == [led[rec.sim_id].has_step(s)
                                                       for s in range(10)]
    assert not list(tmp_path.glob(".*tmp*"))       # atomic write left nothing behind


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SimulationLedger.load_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        SimulationLedger.load_json(bad)
    with pytest.raises(ValueError, match="n_steps"):
        SimulationLedger(0)
    with pytest.raises(ValueError, match="n_steps"):
        SimulationLedger(3).load_state_dict(SimulationLedger(4).state_dict())


def test_concurrent_record_step_accepts_each_step_once():
    led = SimulationLedger(200)
    sids = [led.new_simulation([float(i)]) for i in range(5)]
    for s in sids:
        led.start_attempt(s)
    accepted = []

    def worker():
        n = 0
        for s in sids:
            for step in range(200):
                n += led.record_step(s, step)
        accepted.append(n)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(accepted) == 1000 and led.samples_received == 1000
    assert led.redeliveries_dropped + led.late_dropped == 3000
    assert led.counts()["completed"] == 5
