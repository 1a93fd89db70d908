"""Tests of the online trainer (SPEC §5 surrogate, SPEC §1 tail metrics)."""

import threading

import numpy as np
import pytest
import torch

from wheretolearn.models import MLP
from wheretolearn.online.buffers import FIFOBuffer, Sample
from wheretolearn.online.trainer import (AdamSchedule, BufferDataset, OnlineTrainer,
                                         collate_samples, normalised_step_features,
                                         target_scaling)

F, O = 3, 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def toy_data(n, seed=0):
    """y = smooth nonlinear map of x in [0, 1]^3 -> R^4."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, F)).astype(np.float32)
    a = np.array([[1.0, -2.0, 0.5, 0.0], [0.3, 1.0, -1.0, 2.0], [0.0, 0.5, 1.5, -0.5]])
    y = (np.sin(2 * x @ a) + 0.5).astype(np.float32)
    return x, y


def make_trainer(seed=0, **kw):
    return OnlineTrainer(MLP(F, O, hidden=(32, 32), seed=seed), **kw)


def test_defaults_follow_melissa():
    t = OnlineTrainer(MLP(6, 10, seed=0))
    assert isinstance(t.optimizer, torch.optim.Adam)
    group = t.optimizer.param_groups[0]
    assert group["lr"] == 1e-3 and group["weight_decay"] == 1e-4
    assert dict(t.scheduler.milestones) == {1000: 1, 2000: 1} and t.scheduler.gamma == 0.5


def test_fused_adam_default_follows_the_plain_adam_trajectory():
    x, y = toy_data(60)
    fused, plain = make_trainer(seed=4), make_trainer(seed=4, fused=False)
    assert fused.optimizer.param_groups[0]["fused"] and not plain.optimizer.param_groups[0]["fused"]
    for i in range(6):
        sl = slice(10 * i, 10 * i + 10)
        assert fused.train_arrays(x[sl], y[sl])["loss"] == pytest.approx(
            plain.train_arrays(x[sl], y[sl])["loss"], rel=1e-5)
    np.testing.assert_allclose(fused.predict(x), plain.predict(x), rtol=1e-5, atol=1e-6)


def test_loss_decreases_on_a_tiny_synthetic_problem():
    x, y = toy_data(2000)
    xv, yv = toy_data(200, seed=1)
    t = make_trainer(schedule=AdamSchedule(lr=3e-3))
    before = t.validate(xv, yv)
    rng = np.random.default_rng(0)
    for _ in range(400):
        idx = rng.integers(0, len(x), 10)
        t.train_arrays(x[idx], y[idx])
    after = t.validate(xv, yv)
    assert after["loss"] < 0.05 * before["loss"]
    assert after["mean"] < 0.3 * before["mean"]
    assert t.batches_seen == 400 and t.samples_seen == 4000


def test_scheduler_halves_lr_at_milestone_batches():
    t = make_trainer(schedule=AdamSchedule(milestones=(5, 3), gamma=0.5))   # sorted
    x, y = toy_data(10)
    lrs = [t.train_arrays(x, y)["lr"] for _ in range(7)]
    np.testing.assert_allclose(lrs, [1e-3] * 3 + [5e-4] * 2 + [2.5e-4] * 2)
    assert t.lr == pytest.approx(2.5e-4)


def test_per_sample_losses_match_hand_computation_before_the_step():
    x, y = toy_data(10)
    shift, scale = 0.5, 2.0
    t = make_trainer(y_shift=shift, y_scale=scale)
    with torch.no_grad():
        pred = t.model(torch.from_numpy(x)).double().numpy()
    expected = ((pred - (y - shift) / scale) ** 2).mean(axis=1)
    out = t.train_arrays(x, y, sim_ids=np.arange(10) + 100, steps=np.arange(10) % 3)
    np.testing.assert_allclose(out["per_sample_loss"], expected, rtol=1e-5)
    assert out["loss"] == pytest.approx(expected.mean(), rel=1e-5)
    np.testing.assert_array_equal(out["sim_ids"], np.arange(10) + 100)
    np.testing.assert_array_equal(out["steps"], np.arange(10) % 3)
    assert out["batch"] == 1 and out["per_sample_loss"].shape == (10,)


def test_target_scaling_is_equivalent_to_training_on_normalised_targets():
    # Training on y = shift + scale * z with (shift, scale) must follow exactly the same
    # trajectory as training on z without scaling; predictions map back to physical units.
    x, z = toy_data(50)
    shift, scale = 300.0, 200.0
    a = make_trainer(seed=1)
    b = make_trainer(seed=1, y_shift=shift, y_scale=scale)
    for i in range(20):
        sl = slice((i % 5) * 10, (i % 5) * 10 + 10)
        la = a.train_arrays(x[sl], z[sl])["loss"]
        lb = b.train_arrays(x[sl], shift + scale * z[sl])["loss"]
        assert lb == pytest.approx(la, rel=1e-4)
    np.testing.assert_allclose(b.predict(x), shift + scale * a.predict(x), rtol=1e-5)


def test_validation_metrics_match_hand_computation():
    t = OnlineTrainer(MLP(F, O, hidden=(8,), seed=2), y_shift=1.0, y_scale=3.0)
    xv, yv = toy_data(101, seed=5)
    yv = yv + 1.0
    with torch.no_grad():
        pred = 1.0 + 3.0 * t.model(torch.from_numpy(xv)).double().numpy()
    err = np.linalg.norm(pred - yv, axis=1) / np.linalg.norm(yv, axis=1)
    out = t.validate(xv, yv, batch_size=7, return_errors=True)
    np.testing.assert_allclose(out["errors"], err, rtol=1e-5)
    for key, value in {"mean": err.mean(), "median": np.median(err),
                       "p95": np.percentile(err, 95), "p99": np.percentile(err, 99),
                       "max": err.max()}.items():
        assert out[key] == pytest.approx(value, rel=1e-5), key
    assert out["loss"] == pytest.approx((((pred - yv) / 3.0) ** 2).mean(), rel=1e-5)
    assert out["n"] == 101


def test_validate_accepts_field_shaped_targets_and_checks_size():
    t = OnlineTrainer(MLP(F, 4, hidden=(8,), seed=2))
    xv, yv = toy_data(6)
    a = t.validate(xv, yv.reshape(6, 2, 2) + 1)
    b = t.validate(xv, yv + 1)
    assert a["mean"] == pytest.approx(b["mean"])
    with pytest.raises(ValueError, match=r"y_val must have shape \(6, 4\)"):
        t.validate(xv, np.ones((6, 5)))


def test_caller_arrays_and_tensors_are_not_mutated():
    x, y = toy_data(10)
    xt, yt = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
    x0, y0 = x.copy(), y.copy()
    t = make_trainer(y_shift=0.5, y_scale=2.0)
    t.train_arrays(x, y)
    t.train_arrays(xt, yt)
    t.validate(x, y)
    t.predict(xt)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(xt.numpy(), x0)
    np.testing.assert_array_equal(yt.numpy(), y0)


def test_train_batch_consumes_buffer_samples():
    x, y = toy_data(5)
    batch = [Sample(10 + i, i, x[i], y[i]) for i in range(5)]
    out = make_trainer().train_batch(batch)
    np.testing.assert_array_equal(out["sim_ids"], [10, 11, 12, 13, 14])
    np.testing.assert_array_equal(out["steps"], [0, 1, 2, 3, 4])
    xb, yb, ids, steps = collate_samples(batch)
    assert xb.shape == (5, F) and yb.shape == (5, O) and xb.dtype == torch.float32
    with pytest.raises(ValueError, match="empty batch"):
        collate_samples([])


def test_buffer_dataset_yields_batches_until_closed_and_drained():
    x, y = toy_data(25)
    buf = FIFOBuffer(30, watermark=5)
    for i in range(25):
        buf.put(Sample(i, 0, x[i], y[i]))
    buf.close()
    loader = torch.utils.data.DataLoader(BufferDataset(buf, 10), batch_size=None)
    sizes, ids = [], []
    for xb, yb, sim_ids, steps in loader:
        sizes.append(xb.shape[0])
        ids.extend(np.asarray(sim_ids).tolist())
    assert sizes == [10, 10, 5] and ids == list(range(25))


def test_buffer_dataset_stops_on_event_when_starved():
    buf = FIFOBuffer(30, watermark=5)
    stop = threading.Event()
    stop.set()
    assert list(BufferDataset(buf, 2, timeout=0.01, stop=stop)) == []
    with pytest.raises(ValueError, match="buffer capacity 30 is smaller than batch_size 40"):
        BufferDataset(buf, 40)


def test_normalised_step_features_normalise_parameters_and_step():
    bounds = np.array([[100.0, 500.0]] * 5)
    params = np.array([[100.0, 500.0, 300.0, 200.0, 400.0], [500.0] * 5])
    p0 = params.copy()
    f = normalised_step_features(params, [0, 99], bounds=bounds, n_steps=100)
    np.testing.assert_allclose(f, [[0, 1, 0.5, 0.25, 0.75, 0], [1, 1, 1, 1, 1, 1]])
    assert f.dtype == np.float32 and f.shape == (2, 6)
    np.testing.assert_array_equal(params, p0)
    with pytest.raises(ValueError, match="steps must have shape"):
        normalised_step_features(params, [0], bounds=bounds, n_steps=100)
    # the target scaling: a declared field range (heat: maximum principle), else the fields'
    from wheretolearn.problems import get_problem

    heat = get_problem("heat2d", n=8, n_steps=2)
    assert target_scaling(heat, bounds, np.zeros(3)) == (300.0, 200.0)     # fields unused
    gs = get_problem("grayscott", n=8, n_steps=2, every=1)
    assert target_scaling(gs, gs.parameter_bounds, np.zeros(3)) == (0.5, 0.5)

    class Undeclared:
        def field_range(self, bounds):
            return None

    assert target_scaling(Undeclared(), bounds, np.array([[-2.0, 4.0], [0.0, 1.0]])) == (1.0, 3.0)
    assert target_scaling(Undeclared(), bounds, np.full(4, 7.0)) == (7.0, 1e-12)


def test_bad_trainer_arguments():
    m = MLP(F, O, hidden=(4,))
    with pytest.raises(ValueError, match="lr"):
        AdamSchedule(lr=0)
    with pytest.raises(ValueError, match="weight_decay"):
        AdamSchedule(weight_decay=-1e-4)
    with pytest.raises(ValueError, match="milestones"):
        AdamSchedule(milestones=(100, 0))
    with pytest.raises(TypeError, match="milestones"):
        AdamSchedule(milestones=1000)
    with pytest.raises(TypeError, match="schedule must be an AdamSchedule"):
        OnlineTrainer(m, {"lr": 1e-3})
    assert AdamSchedule(milestones=[20, 10]).milestones == (10, 20)
    with pytest.raises(ValueError, match="y_scale must be > 0"):
        OnlineTrainer(m, y_scale=[1.0, 0.0, 1.0, 1.0])
    with pytest.raises(TypeError, match="model must be"):
        OnlineTrainer(lambda x: x)
    t = OnlineTrainer(m)
    with pytest.raises(ValueError, match="same number"):
        t.train_arrays(np.zeros((3, F)), np.zeros((2, O)))
    with pytest.raises(ValueError, match=r"sim_ids must have shape \(3,\)"):
        t.train_arrays(np.zeros((3, F)), np.zeros((3, O)), sim_ids=[1, 2])
    with pytest.raises(ValueError, match="dimension 1"):
        normalised_step_features(np.zeros((1, 2)), [0], bounds=[[0.0, 1.0], [1.0, 1.0]], n_steps=3)
