"""Tests of atomic checkpoints and of restoring trainer / buffer / sampler from them (SPEC §5)."""

import numpy as np
import pytest
import torch

from wheretolearn.models import MLP
from wheretolearn.online import checkpoint as ckpt
from wheretolearn.online.buffers import Sample, make_buffer
from wheretolearn.online.checkpoint import load_checkpoint, save_checkpoint
from wheretolearn.online.sampler_registry import make_sampler
from wheretolearn.online.trainer import AdamSchedule, OnlineTrainer


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.random((10, 6), dtype=np.float32), rng.random((10, 8), dtype=np.float32))
            for _ in range(n)]


def trained_trainer():
    t = OnlineTrainer(MLP(6, 8, hidden=(16, 16), seed=0), AdamSchedule(milestones=(3, 6)),
                      y_shift=0.5, y_scale=0.25)
    for x, y in batches(4):
        t.train_arrays(x, y)
    return t


def test_trainer_round_trip_restores_outputs_optimiser_and_continues_identically(tmp_path):
    t = trained_trainer()
    save_checkpoint(tmp_path / "ck.pt", {"trainer": t.state_dict()})
    state = load_checkpoint(tmp_path / "ck.pt")["trainer"]
    r = OnlineTrainer.from_state_dict(state)
    x = np.random.default_rng(1).random((5, 6), dtype=np.float32)
    np.testing.assert_array_equal(r.predict(x), t.predict(x))
    assert (r.batches_seen, r.samples_seen, r.lr) == (4, 40, t.lr)
    for pa, pb in zip(t.optimizer.state.values(), r.optimizer.state.values()):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(pa[key], pb[key], rtol=0, atol=0)
    # the next steps (crossing the milestone at batch 6) are bit-identical
    for x, y in batches(4, seed=2):
        assert t.train_arrays(x, y)["loss"] == r.train_arrays(x, y)["loss"]
    assert r.lr == t.lr == pytest.approx(1e-3 * 0.25)
    np.testing.assert_array_equal(r.predict(x), t.predict(x))


def test_load_state_into_existing_trainer_checks_architecture():
    t = trained_trainer()
    other = OnlineTrainer(MLP(6, 8, hidden=(16, 16), seed=9), AdamSchedule(milestones=(3, 6)))
    other.load_state_dict(t.state_dict())
    assert other.batches_seen == 4
    with pytest.raises(ValueError, match="does not match"):
        OnlineTrainer(MLP(6, 8, hidden=(32,))).load_state_dict(t.state_dict())


def test_buffer_and_sampler_state_survive_the_file(tmp_path):
    buf = make_buffer("firo", 20, watermark=2, seed=3, pseudo_epochs=2)
    for i in range(15):
        buf.put(Sample(i, i % 4, np.full(6, i), np.full(8, -i)))
    buf.get_batch(5)
    sampler = make_sampler("halton", [[100.0, 500.0]] * 5, seed=4)
    sampler.ask(9)
    save_checkpoint(tmp_path / "ck.pt", {"buffer": buf.state_dict(),
                                         "sampler": sampler.state_dict()})
    state = load_checkpoint(tmp_path / "ck.pt")
    assert isinstance(state["buffer"]["x"], torch.Tensor)  # numpy arrays come back as tensors
    buf2 = make_buffer("firo", 20, watermark=2, seed=0, pseudo_epochs=2)
    buf2.load_state_dict(state["buffer"])
    s2 = make_sampler("halton", [[100.0, 500.0]] * 5, seed=0)
    s2.load_state_dict(state["sampler"])
    np.testing.assert_array_equal(s2.ask(3), sampler.ask(3))
    assert buf2.stats() == buf.stats()
    for _ in range(3):
        assert ([s.sim_id for s in buf2.get_batch(4)]
                == [s.sim_id for s in buf.get_batch(4)])


def test_failure_during_save_keeps_previous_checkpoint_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"version": 1, "w": np.arange(3.0)})

    def broken_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"version": 2})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["version"] == 1
    torch.testing.assert_close(state["w"], torch.arange(3.0, dtype=torch.float64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]


def test_unsupported_state_is_rejected_before_touching_the_file(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"version": 1})
    with pytest.raises(TypeError, match=r"state\['bad'\] has unsupported type object"):
        save_checkpoint(path, {"bad": object()})
    assert load_checkpoint(path) == {"version": 1}
    with pytest.raises(TypeError, match="state must be a dict"):
        save_checkpoint(path, [1, 2])


def test_save_does_not_mutate_the_callers_state(tmp_path):
    arr = np.arange(4.0)
    state = {"a": arr, "nested": {"t": (1, np.int64(2))}}
    save_checkpoint(tmp_path / "sub" / "ck.pt", state)
    assert state["a"] is arr and isinstance(state["nested"]["t"], tuple)
    np.testing.assert_array_equal(arr, np.arange(4.0))
    loaded = load_checkpoint(tmp_path / "sub" / "ck.pt")
    assert loaded["nested"]["t"] == [1, 2] and type(loaded["nested"]["t"][1]) is int


def test_missing_corrupt_and_foreign_files_raise_value_error_naming_the_path(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(ValueError, match=f"checkpoint {missing} does not exist"):
        load_checkpoint(missing)
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"trainer": trained_trainer().state_dict()})
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match=f"checkpoint {truncated} is corrupt"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ValueError, match=f"checkpoint {garbage} is corrupt"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"a": 1}, foreign)
    with pytest.raises(ValueError, match="not a wheretolearn checkpoint"):
        load_checkpoint(foreign)


# --------------------------------------------------------------------- checkpoint folders
def test_store_publishes_complete_folders_and_keeps_the_last_two(tmp_path):
    store = ckpt.CheckpointStore(tmp_path)
    assert store.latest() is None and store.load_latest() is None
    for v in range(1, 4):
        store.publish({"v": v, "w": np.full(3, float(v))}, ledger_json={"v": v}, info={"batch": v})
    folders = store.complete()
    assert [p.name for p in folders] == ["000002", "000003"]   # older ones deleted
    state, folder = store.load_latest()
    assert state["v"] == 3 and folder == folders[-1]
    manifest = store.verify(folder)
    assert manifest["batch"] == 3 and set(manifest["files"]) == {"checkpoint.pt", "ledger.json"}
    import json

    assert json.loads((folder / "ledger.json").read_text()) == {"v": 3}


def test_store_falls_back_when_the_newest_checkpoint_is_damaged(tmp_path):
    store = ckpt.CheckpointStore(tmp_path)
    store.publish({"v": 1}, ledger_json={"v": 1})
    newest = store.publish({"v": 2}, ledger_json={"v": 2})
    # a ledger that no longer matches its checkpoint (e.g. written by someone else later)
    (newest / "ledger.json").write_text('{"v": 3}')
    with pytest.raises(ValueError, match="ledger.json does not match its manifest"):
        store.verify(newest)
    state, folder = store.load_latest()
    assert state["v"] == 1 and folder.name == "000001"
    (folder / "manifest.json").unlink()                        # no manifest: incomplete
    assert store.latest() is None and store.load_latest() is None


def test_killed_writer_leaves_only_a_staging_folder_that_resume_ignores(tmp_path, monkeypatch):
    store = ckpt.CheckpointStore(tmp_path)
    store.publish({"v": 1})

    def dies(*a, **k):
        raise KeyboardInterrupt                                # killed inside the rename
    monkeypatch.setattr(ckpt.os, "rename", dies)
    with pytest.raises(KeyboardInterrupt):
        store.publish({"v": 2})
    monkeypatch.undo()
    assert store.load_latest()[0] == {"v": 1}
    # a staging folder as a SIGKILL leaves it (the handler above cleaned its own)
    stale = store.root / ".000002.abc"
    stale.mkdir()
    (stale / "checkpoint.pt").write_bytes(b"partial")
    assert store.load_latest()[0] == {"v": 1}
    store.clean_staging()
    assert not stale.exists()


def test_background_writer_writes_a_snapshot_not_the_live_tensor(tmp_path):
    store = ckpt.CheckpointStore(tmp_path)
    writer = ckpt.CheckpointWriter(store)
    w = torch.zeros(4)
    writer.submit(ckpt.snapshot_state({"w": w}))
    w += 1                                                     # training goes on in place
    writer.wait()
    assert torch.equal(store.load_latest()[0]["w"], torch.zeros(4))
    writer.submit({"bad": object()})
    with pytest.raises(TypeError, match="unsupported type"):
        writer.wait()
    with pytest.raises(ValueError, match="keep must be an integer >= 2"):
        ckpt.CheckpointStore(tmp_path, keep=1)
