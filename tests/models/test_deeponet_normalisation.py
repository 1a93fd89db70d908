"""DeepONet input/output normalisation (issue 26): the composed map, the fitted statistics,
the training split they come from, warm starts, and persistence (files of the layout before
normalisation are refused by name)."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from wheretolearn.models import DeepONet, TrainConfig, relative_l2_loss, train_operator
from wheretolearn.models.deeponet import STD_FLOOR
from wheretolearn.models.operator_training import _split


def _points(p: int) -> np.ndarray:
    return np.stack([np.linspace(0, 1, p), np.linspace(1, 0, p)], axis=1)


def _sd(v):
    """Independent floored std: numpy's population std, at least STD_FLOOR x its mean."""
    sd = v.std(0)
    return np.maximum(sd, STD_FLOOR * sd.mean())


def _data(n=40, d=10, p=6, seed=0):
    """Inputs with very different means / scales per point, outputs offset and scaled."""
    g = np.random.default_rng(seed)
    x = 3.0 + g.normal(size=(n, d)) * np.linspace(0.5, 20.0, d)
    y = -7.0 + 0.01 * g.normal(size=(n, p)) * np.linspace(1.0, 5.0, p)
    return x, y


def test_forward_is_standardise_net_destandardise():
    x, y = _data()
    m = DeepONet([10, 16, 8], [2, 16, 8], _points(6), seed=0, dtype="float64", activation="tanh")
    m.fit_normalization(x, y)
    u = torch.as_tensor(x[:5])
    # independent: the statistics from numpy, the nets applied by hand
    mu, sd = x.mean(0), _sd(x)
    mo, so = y.mean(0), _sd(y)
    z = m.branch((u - torch.as_tensor(mu)) / torch.as_tensor(sd)) @ m.trunk(m.points).T + m.bias
    want = torch.as_tensor(mo) + torch.as_tensor(so) * z
    torch.testing.assert_close(m(u), want)
    # and the network without the statistics is a different map
    assert not torch.allclose(m(u), z)


def test_statistics_are_pointwise_floored_and_leave_the_input_alone():
    x, y = _data(n=30, d=5, p=4)
    x[:, 2] = 4.0                           # a constant input point (Darcy's boundary)
    y[:, 0] = 0.0                           # an output that is always zero
    x0, y0 = x.copy(), y.copy()
    m = DeepONet([5, 8, 4], [2, 8, 4], _points(4), seed=0, dtype="float64")
    assert m.needs_normalization
    assert m.fit_normalization(x, y) is m and not m.needs_normalization
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_allclose(m.in_mean.numpy(), x.mean(0))
    sd = x.std(0)
    assert sd[2] == 0
    np.testing.assert_allclose(m.in_std.numpy(), _sd(x))
    assert float(m.in_std[2]) == pytest.approx(STD_FLOOR * sd.mean())
    assert float(m.out_std[0]) == pytest.approx(STD_FLOOR * y.std(0).mean())
    # an output point that is always 0 is predicted as 0 up to the floored scale
    assert float(m.out_mean[0]) == 0.0
    # all points constant: nothing to scale, std 1
    m2 = DeepONet([5, 8, 4], [2, 8, 4], _points(4), seed=0)
    m2.fit_normalization(np.ones((3, 5)), np.zeros((3, 4)))
    assert torch.equal(m2.in_std, torch.ones(5)) and torch.equal(m2.out_std, torch.ones(4))
    assert m2.in_std.dtype == torch.float32


def test_fit_normalization_refuses_bad_input():
    m = DeepONet([5, 8, 4], [2, 8, 4], _points(4), seed=0)
    with pytest.raises(ValueError, match="5 values per sample"):
        m.fit_normalization(np.zeros((3, 6)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="one per point"):
        m.fit_normalization(np.zeros((3, 5)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="finite"):
        m.fit_normalization(np.full((3, 5), np.nan), np.zeros((3, 4)))
    plain = DeepONet([5, 8, 4], [2, 8, 4], _points(4), seed=0, normalize=False)
    with pytest.raises(ValueError, match="normalize=False"):
        plain.fit_normalization(np.zeros((3, 5)), np.zeros((3, 4)))
    with pytest.raises(TypeError, match="normalize"):
        DeepONet([5, 8, 4], [2, 8, 4], _points(4), normalize="yes")


def test_normalize_false_is_the_plain_network():
    x, y = _data()
    plain = DeepONet([10, 16, 8], [2, 16, 8], _points(6), seed=3, normalize=False)
    fresh = DeepONet([10, 16, 8], [2, 16, 8], _points(6), seed=3)
    u = torch.as_tensor(x[:4], dtype=torch.float32)
    # the expression of the network before normalisation existed
    z = torch.einsum("bp,qp->bq", plain.branch(u), plain.trunk(plain.points)) + plain.bias
    torch.testing.assert_close(plain(u), z, rtol=0, atol=0)
    # identity statistics before fitting: the same map bit for bit
    assert torch.equal(fresh(u), plain(u))
    cfg = TrainConfig(steps=30, batch_size=8, eval_every=10, patience=0)
    train_operator(plain, x, y, config=cfg, seed=1)
    assert not bool(plain.norm_fitted) and not plain.needs_normalization
    assert torch.equal(plain.in_mean, torch.zeros(10)) and torch.equal(plain.out_std, torch.ones(6))


def test_train_operator_fits_on_the_training_split_only():
    x, y = _data(n=50)
    g = torch.Generator().manual_seed(5)
    tr, va = _split(50, 0.2, g)
    x, y = x.copy(), y.copy()
    x[va.numpy()] += 1e4                    # a held-out split from another world
    y[va.numpy()] *= -1e3
    m = DeepONet([10, 16, 8], [2, 16, 8], _points(6), seed=0, dtype="float64")
    train_operator(m, x, y, config=TrainConfig(steps=5, batch_size=8, eval_every=5), seed=5)
    assert bool(m.norm_fitted)
    xt, yt = x[tr.numpy()], y[tr.numpy()]
    np.testing.assert_allclose(m.in_mean.numpy(), xt.mean(0))
    np.testing.assert_allclose(m.in_std.numpy(), _sd(xt))
    np.testing.assert_allclose(m.out_mean.numpy(), yt.mean(0))
    np.testing.assert_allclose(m.out_std.numpy(), _sd(yt))


def test_warm_start_keeps_the_statistics_and_a_fresh_state_refits():
    x, y = _data(n=40, seed=0)
    x2, y2 = _data(n=40, seed=1)
    x2, y2 = 10 * x2 + 5, 3 * y2
    cfg = TrainConfig(steps=20, batch_size=8, eval_every=10, patience=0)
    m = DeepONet([10, 16, 8], [2, 16, 8], _points(6), seed=0)
    fresh_state = {k: v.clone() for k, v in m.state_dict().items()}
    train_operator(m, x, y, config=cfg, seed=0)
    stats = [getattr(m, k).clone() for k in ("in_mean", "in_std", "out_mean", "out_std")]
    before = copy.deepcopy(m)
    res = train_operator(m, x2, y2, config=dataclasses.replace(cfg, steps=1), seed=1)
    for k, s in zip(("in_mean", "in_std", "out_mean", "out_std"), stats):
        assert torch.equal(getattr(m, k), s)
    # the reference of a warm retrain is the model as it was, not a refitted one
    _, va = _split(40, 0.2, torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = relative_l2_loss(before(torch.as_tensor(x2[va.numpy()], dtype=torch.float32)),
                               torch.as_tensor(y2[va.numpy()], dtype=torch.float32))
    assert res.initial_val_loss == pytest.approx(float(ref), rel=1e-6)
    # a fresh initialisation loaded into the model carries unfitted statistics: refit
    m.load_state_dict(fresh_state)
    assert m.needs_normalization
    train_operator(m, x2, y2, config=cfg, seed=1)
    assert not torch.allclose(m.in_mean, stats[0])


def test_save_load_keeps_statistics_and_predictions(tmp_path):
    x, y = _data()
    m = DeepONet([10, 16, 8], [2, 16, 8], _points(6), seed=0)
    train_operator(m, x, y, config=TrainConfig(steps=20, batch_size=8, eval_every=10), seed=0)
    path = m.save(tmp_path / "m.pt")
    blob = torch.load(path, weights_only=True)
    assert blob["config"]["normalize"] is True
    c = DeepONet.load(path)
    assert c.normalize and bool(c.norm_fitted) and not c.needs_normalization
    for k in ("in_mean", "in_std", "out_mean", "out_std"):
        assert torch.equal(getattr(c, k), getattr(m, k))
    assert not torch.equal(c.in_std, torch.ones(10))
    u = torch.as_tensor(x[:5], dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(c(u), m(u))
    plain = DeepONet([10, 16, 8], [2, 16, 8], _points(6), seed=0, normalize=False)
    assert DeepONet.load(plain.save(tmp_path / "p.pt")).normalize is False


def test_a_file_of_the_layout_before_normalisation_is_refused_naming_what_it_lacks(tmp_path):
    """0.x reads only the current layout: a file without ``normalize`` or the statistics
    gets a ValueError naming the missing entries, not a silently different model."""
    m = DeepONet([10, 16, 8], [2, 16, 8], _points(6), seed=2, normalize=False)
    cfg = {k: v for k, v in m.config.items() if k != "normalize"}
    stats = ("in_mean", "in_std", "out_mean", "out_std", "norm_fitted")
    state = {k: v for k, v in m.state_dict().items() if k not in stats}
    torch.save({"kind": "deeponet", "config": cfg, "state_dict": state}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match=r"config lacks normalize;.*older wheretolearn"):
        DeepONet.load(tmp_path / "old.pt")
    torch.save({"kind": "deeponet", "config": m.config, "state_dict": state},
               tmp_path / "nostats.pt")
    with pytest.raises(ValueError, match="state_dict lacks " + ", ".join(stats)):
        DeepONet.load(tmp_path / "nostats.pt")
    # a half-written file is refused the same way
    torch.save({"kind": "deeponet", "config": m.config,
                "state_dict": {**state, "in_mean": torch.zeros(10)}}, tmp_path / "half.pt")
    with pytest.raises(ValueError, match="state_dict lacks in_std, out_mean, out_std"):
        DeepONet.load(tmp_path / "half.pt")
    with pytest.raises(ValueError, match="holds unknown extra"):
        torch.save({"kind": "deeponet", "config": m.config,
                    "state_dict": {**m.state_dict(), "extra": torch.zeros(1)}},
                   tmp_path / "extra.pt")
        DeepONet.load(tmp_path / "extra.pt")
