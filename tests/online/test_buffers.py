"""Tests of the FIFO / FIRO / reservoir training buffers (SPEC §5)."""

import threading
import time
from collections import Counter

import numpy as np
import pytest

from wheretolearn.online.buffers import (FIFOBuffer, FIROBuffer, ReservoirBuffer, Sample,
                                         make_buffer, stack_samples)


def sample(i, step=0, f=2, o=3):
    return Sample(i, step, np.full(f, i, np.float32), np.full(o, 10 * i + step, np.float32))


def fill(buf, ids, **kw):
    for i in ids:
        assert buf.put(sample(i), **kw)


def ids_of(batch):
    return [s.sim_id for s in batch]


def drain_all(buf, batch_size):
    out = []
    while (batch := buf.get_batch(batch_size, timeout=1.0)) is not None:
        assert batch, "get_batch timed out on a closed buffer"
        out.append(ids_of(batch))
    return out


# -- Sample ---------------------------------------------------------------------------------
def test_sample_copies_flattens_and_freezes_caller_arrays():
    x = np.arange(3, dtype=np.float64)
    y = np.ones((2, 2))
    s = Sample(np.int64(4), 7, x, y)
    x[0] = 99.0
    y[0, 0] = -1.0
    assert s.x[0] == 0.0 and s.y.shape == (4,) and s.y[0] == 1.0
    assert s.x.dtype == np.float32 and not s.x.flags.writeable
    with pytest.raises(ValueError):
        s.x[0] = 1.0
    with pytest.raises(TypeError, match="sim_id must be an integer"):
        Sample(1.5, 0, x, y)


# -- FIFO -----------------------------------------------------------------------------------
def test_fifo_serves_oldest_first_exactly_once():
    buf = FIFOBuffer(10, watermark=2)
    fill(buf, range(7))
    assert ids_of(buf.get_batch(3)) == [0, 1, 2]
    fill(buf, [7, 8])
    assert ids_of(buf.get_batch(3)) == [3, 4, 5]
    assert ids_of(buf.get_batch(3)) == [6, 7, 8]
    assert len(buf) == 0 and buf.samples_served == 9


def test_fifo_back_pressure_put_times_out_when_full_then_unblocks():
    buf = FIFOBuffer(3, watermark=1)
    fill(buf, range(3))
    t0 = time.monotonic()
    assert buf.put(sample(3), timeout=0.05) is False
    assert time.monotonic() - t0 >= 0.04
    assert len(buf) == 3 and buf.samples_put == 3

    result = {}
    producer = threading.Thread(target=lambda: result.update(ok=buf.put(sample(3), timeout=5)))
    producer.start()
    time.sleep(0.05)
    assert producer.is_alive()  # blocked on the full buffer
    assert ids_of(buf.get_batch(2)) == [0, 1]
    producer.join(2)
    assert result == {"ok": True} and ids_of(buf.get_batch(2)) == [2, 3]


def test_watermark_blocks_consumer_until_enough_samples_arrive():
    buf = FIFOBuffer(20, watermark=5)
    got = {}
    consumer = threading.Thread(target=lambda: got.update(batch=buf.get_batch(2, timeout=5)))
    consumer.start()
    fill(buf, range(4))
    time.sleep(0.1)
    assert consumer.is_alive() and not buf.ready(2)
    fill(buf, [4])
    consumer.join(2)
    assert not consumer.is_alive()
    assert ids_of(got["batch"]) == [0, 1]
    # the watermark holds at every batch: 3 left < 5
    assert buf.get_batch(2, timeout=0.01) == []


def test_batch_waits_for_a_full_batch_above_the_watermark():
    buf = FIFOBuffer(20, watermark=1)
    fill(buf, range(3))
    assert buf.get_batch(4, timeout=0.01) == []
    fill(buf, [3])
    assert ids_of(buf.get_batch(4)) == [0, 1, 2, 3]


def test_fifo_close_drains_rest_in_short_last_batch_then_none():
    buf = FIFOBuffer(10, watermark=8)
    fill(buf, range(7))
    assert buf.get_batch(3, timeout=0.01) == []  # below the watermark
    buf.close()
    assert drain_all(buf, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert buf.get_batch(3, timeout=0) is None
    with pytest.raises(RuntimeError, match="closed"):
        buf.put(sample(9))


def test_close_wakes_a_waiting_consumer():
    buf = FIFOBuffer(10, watermark=5)
    got = {}
    consumer = threading.Thread(target=lambda: got.update(batch=buf.get_batch(2, timeout=5)))
    consumer.start()
    time.sleep(0.05)
    buf.close()
    consumer.join(2)
    assert not consumer.is_alive() and got["batch"] is None


def test_threaded_producers_and_consumer_lose_and_duplicate_nothing():
    buf = FIFOBuffer(16, watermark=4)

    def produce(offset):
        for i in range(300):
            assert buf.put(sample(offset + i), timeout=5)

    producers = [threading.Thread(target=produce, args=(k * 1000,)) for k in range(2)]
    for p in producers:
        p.start()
    received = []

    def consume():
        while (batch := buf.get_batch(5, timeout=5)) is not None:
            received.extend(ids_of(batch))

    consumer = threading.Thread(target=consume)
    consumer.start()
    for p in producers:
        p.join(10)
    buf.close()
    consumer.join(10)
    assert sorted(received) == sorted(list(range(300)) + list(range(1000, 1300)))
    assert len(buf) == 0


# -- FIRO -----------------------------------------------------------------------------------
def test_firo_serves_each_sample_pseudo_epochs_times_then_removes_it():
    buf = FIROBuffer(12, watermark=1, seed=0, pseudo_epochs=3)
    fill(buf, range(12))
    batches = [ids_of(buf.get_batch(4)) for _ in range(3)]
    assert all(len(set(b)) == 4 for b in batches)  # distinct samples within a batch
    buf.close()
    batches += drain_all(buf, 4)
    counts = Counter(i for b in batches for i in b)
    assert counts == {i: 3 for i in range(12)}
    assert len(buf) == 0 and buf.samples_served == 36


def test_firo_order_is_random_not_fifo():
    buf = FIROBuffer(50, watermark=1, seed=1)
    fill(buf, range(50))
    first = ids_of(buf.get_batch(10))
    assert first != list(range(10))
    assert buf.stats()["size"] == 40  # pseudo_epochs=1: served samples are gone


def test_firo_blocks_when_full():
    buf = FIROBuffer(2, watermark=1, seed=0, pseudo_epochs=2)
    fill(buf, range(2))
    assert buf.put(sample(2), timeout=0.02) is False


# -- reservoir ------------------------------------------------------------------------------
def _inclusion_frequencies(policy, capacity, n, streams, seed):
    rng = np.random.default_rng(seed)
    hits = np.zeros(n)
    for _ in range(streams):
        buf = ReservoirBuffer(capacity, watermark=1, seed=rng, policy=policy)
        fill(buf, range(n))
        hits[ids_of(buf.samples())] += 1
        assert len(buf) == capacity
    return hits / streams


def test_uniform_reservoir_keeps_a_uniform_random_subset():
    c, n, streams = 8, 40, 1500
    freq = _inclusion_frequencies("uniform", c, n, streams, seed=0)
    se = np.sqrt(c / n * (1 - c / n) / streams)
    assert np.abs(freq - c / n).max() < 4.5 * se
    # early and late halves of the stream are equally represented
    assert abs(freq[: n // 2].mean() - freq[n // 2:].mean()) < 2 * se


def test_replace_reservoir_matches_the_random_eviction_survival_law():
    # Melissa's rule: every new sample enters and evicts a uniform stored one. Sample i
    # (1-based) survives each of the later evictions with probability 1 - 1/C:
    #   P(in) = (1 - 1/C)^(n - max(i, C)).
    c, n, streams = 8, 40, 1500
    freq = _inclusion_frequencies("replace", c, n, streams, seed=1)
    i = np.arange(1, n + 1)
    p = (1 - 1 / c) ** (n - np.maximum(i, c))
    se = np.sqrt(p * (1 - p) / streams) + 1e-3
    assert np.all(np.abs(freq - p) < 4.5 * se)
    assert freq[-1] == 1.0  # the newest sample is always in


def test_reservoir_counts_seen_and_does_not_remove_on_read():
    buf = ReservoirBuffer(10, watermark=10, seed=3)
    fill(buf, range(10))
    served = Counter()
    for _ in range(30):
        batch = ids_of(buf.get_batch(4))
        assert len(set(batch)) == 4
        served.update(batch)
    assert len(buf) == 10 and buf.samples_served == 120
    stored = ids_of(buf.samples())
    np.testing.assert_array_equal(buf.seen_counts(), [served[i] for i in stored])
    stats = buf.stats()
    assert stats["seen_max"] == max(served.values()) and stats["never_seen"] == 0
    # an evicting put resets the count of the slot it fills
    buf.put(sample(99))
    assert buf.samples_evicted == 1 and buf.seen_counts()[ids_of(buf.samples()).index(99)] == 0


def test_reservoir_put_never_blocks():
    buf = ReservoirBuffer(3, watermark=1, seed=0)
    t0 = time.monotonic()
    fill(buf, range(100), timeout=0)
    assert time.monotonic() - t0 < 1.0 and len(buf) == 3 and buf.samples_evicted == 97


def test_reservoir_close_serves_every_stored_sample_once_more_then_none():
    buf = ReservoirBuffer(10, watermark=10, seed=4)
    fill(buf, range(7))
    before = dict(zip(ids_of(buf.samples()), buf.seen_counts()))
    buf.close()  # lifts the watermark (7 < 10)
    batches = drain_all(buf, 3)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert sorted(i for b in batches for i in b) == list(range(7))
    after = dict(zip(ids_of(buf.samples()), buf.seen_counts()))
    assert all(after[i] == before[i] + 1 for i in range(7))


# -- shared rules ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fifo", "firo", "reservoir"])
def test_state_dict_round_trip_continues_identically(kind):
    a = make_buffer(kind, 12, watermark=3, seed=5)
    fill(a, range(10))
    a.get_batch(3)
    state = a.state_dict()
    assert state["x"].shape == (len(a), 2) and state["y"].shape == (len(a), 3)
    assert state["x"].dtype == np.float32 and state["sim_id"].dtype == np.int64
    b = make_buffer(kind, 12, watermark=3, seed=123)
    b.load_state_dict(state)
    assert ids_of(b.samples()) == ids_of(a.samples())
    np.testing.assert_array_equal(b.seen_counts(), a.seen_counts())
    assert b.stats() == a.stats()
    for buf in (a, b):
        fill(buf, range(20, 22))
    for _ in range(3):
        ba, bb = a.get_batch(3), b.get_batch(3)
        assert ids_of(ba) == ids_of(bb)
        np.testing.assert_array_equal(stack_samples(ba)["y"], stack_samples(bb)["y"])


def test_state_dict_of_empty_buffer_round_trips():
    a = make_buffer("firo", 4, watermark=1, seed=0, pseudo_epochs=2)
    b = make_buffer("firo", 4, watermark=1, seed=0, pseudo_epochs=2)
    b.load_state_dict(a.state_dict())
    assert len(b) == 0 and not b.closed


def test_load_state_rejects_wrong_kind_and_overflow():
    a = make_buffer("fifo", 10, watermark=1)
    fill(a, range(6))
    with pytest.raises(ValueError, match="'fifo' buffer, not 'firo'"):
        make_buffer("firo", 10, watermark=1).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="more than capacity 5"):
        make_buffer("fifo", 5, watermark=1).load_state_dict(a.state_dict())


def test_validation_messages():
    with pytest.raises(ValueError, match="watermark must be <= capacity"):
        FIFOBuffer(5, watermark=6)
    with pytest.raises(ValueError, match="capacity must be a positive integer"):
        FIFOBuffer(0, watermark=1)
    buf = FIFOBuffer(5, watermark=1)
    with pytest.raises(ValueError, match="buffer capacity 5 is smaller than batch_size 10"):
        buf.check_batch_size(10)
    with pytest.raises(ValueError, match="buffer capacity 5 is smaller than batch_size 10"):
        buf.get_batch(10)
    with pytest.raises(ValueError, match="timeout"):
        buf.put(sample(0), timeout=-1)
    with pytest.raises(TypeError, match="must be a Sample"):
        buf.put((0, 0, [1.0], [1.0]))
    fill(buf, [0])
    with pytest.raises(ValueError, match=r"sample sizes \(x, y\) must match"):
        buf.put(sample(1, f=5))
    with pytest.raises(ValueError, match="buffer kind must be one of"):
        make_buffer("lifo", 5, watermark=1)
    with pytest.raises(TypeError):
        make_buffer("fifo", 5, watermark=1, pseudo_epochs=2)
    with pytest.raises(ValueError, match="policy must be one of"):
        make_buffer("reservoir", 5, watermark=1, policy="oldest")
