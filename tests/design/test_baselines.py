"""Baseline training sources: coresets against brute-force references, shapes, seeding."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from wheretolearn.design.baselines import (SOURCE_NAMES, ACoresetOptions, CoresetSource,
                                           DistributionSource, acoreset, empirical_gaussians,
                                           make_sources, ncoreset)
from wheretolearn.measures import Gaussian


def _brute_force_maxmin(dist: np.ndarray, first: int, n: int) -> list[int]:
    """O(n^2 P) max-min selection from a full distance matrix (independent reference)."""
    chosen = [first]
    for _ in range(n - 1):
        score = np.array([min(dist[v, s] for s in chosen) if v not in chosen else -np.inf
                          for v in range(dist.shape[0])])
        chosen.append(int(np.argmax(score)))
    return chosen


def _fake_metatest(j=3, l=40, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(j, l, d, generator=g, dtype=torch.float64) + torch.arange(j)[:, None, None]
    return SimpleNamespace(seen_x=x, seen_y=torch.sin(x).sum(-1))


def test_ncoreset_matches_brute_force_rkhs_maxmin():
    rng = np.random.default_rng(1)
    pool = rng.normal(size=(60, 3))
    s = 0.8
    sq = ((pool[:, None, :] - pool[None, :, :]) ** 2).sum(-1)
    dist = np.sqrt(2.0 - 2.0 * np.exp(-sq / (2 * s * s)))  # RKHS feature distance
    idx = ncoreset(torch.from_numpy(pool), 15, bandwidth=s, generator=3).tolist()
    assert idx == _brute_force_maxmin(dist, idx[0], 15)
    assert len(set(idx)) == 15


def test_ncoreset_is_seeded_and_covers_far_points():
    pool = torch.cat([torch.zeros(50, 2), torch.tensor([[10.0, 0.0], [0.0, 10.0]])])
    a = ncoreset(pool, 3, bandwidth=3.0, generator=5)
    b = ncoreset(pool, 3, bandwidth=3.0, generator=5)
    assert torch.equal(a, b)
    assert {50, 51} <= set(a.tolist())  # the two far points are picked right away


def test_acoreset_sizes_distinct_and_first_batch_is_maxmin_in_weighted_features():
    rng = np.random.default_rng(2)
    pool = torch.from_numpy(rng.normal(size=(80, 2)))
    y = torch.sin(3 * pool[:, 0]) + pool[:, 1] ** 2
    for n in (1, 6, 7, 16, 33):
        idx = acoreset(pool, y, n, bandwidth=1.0, ridge=1e-6, generator=0)
        assert idx.shape == (n,) and len(set(idx.tolist())) == n
    # reference for the first batch: KRR on the 6 initial points (shift n eps with the final
    # n = 16), features a_i k(v, x_i)
    idx = acoreset(pool, y, 16, bandwidth=1.0, ridge=1e-6, generator=0,
                   options=ACoresetOptions(sketch_dim=None)).tolist()
    init = idx[:6]
    xs = pool[init].numpy()
    k = np.exp(-((xs[:, None] - xs[None]) ** 2).sum(-1) / 2)
    a = np.linalg.solve(k + 16 * 1e-6 * np.eye(6), y[init].numpy())
    kp = np.exp(-((pool.numpy()[:, None] - xs[None]) ** 2).sum(-1) / 2)
    phi = kp * a[None, :]
    dist = np.sqrt(((phi[:, None] - phi[None]) ** 2).sum(-1))
    chosen = list(init)
    for _ in range(10):
        score = np.array([min(dist[v, s] for s in chosen) if v not in chosen else -np.inf
                          for v in range(80)])
        chosen.append(int(np.argmax(score)))
    assert idx[6:16] == chosen[6:16]


def test_acoreset_round_cap_grows_batches(monkeypatch):
    import wheretolearn.design.baselines as bl

    takes = []
    real = bl._maxmin_batch
    monkeypatch.setattr(bl, "_maxmin_batch",
                        lambda feats, sel, take: takes.append(take) or real(feats, sel, take))
    pool = torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = pool.sum(1)
    idx = acoreset(pool, y, 206, bandwidth=1.0, generator=1,
                   options=ACoresetOptions(max_rounds=4))
    assert idx.shape == (206,) and len(set(idx.tolist())) == 206
    assert takes == [50, 50, 50, 50]          # ceil((206 - 6) / 4), not the paper's 10
    takes.clear()
    acoreset(pool, y, 56, bandwidth=1.0, generator=1, options=ACoresetOptions(max_rounds=None))
    assert takes == [10] * 5                  # no cap: the paper's batches of 10
    takes.clear()
    acoreset(pool, y, 206, bandwidth=1.0, generator=1)  # default cap of 100 rounds
    assert takes == [10] * 20
    # the options reach acoreset through a source too
    takes.clear()
    src = CoresetSource("acoreset", pool, bandwidth=1.0, labels=y,
                        options=ACoresetOptions(max_rounds=4))
    src.draw(206, generator=1)
    assert takes == [50, 50, 50, 50]
    with pytest.raises(ValueError, match="ACoresetOptions.max_rounds must be a positive integer"):
        ACoresetOptions(max_rounds=0)
    with pytest.raises(TypeError, match="options must be an ACoresetOptions, got dict"):
        acoreset(pool, y, 10, bandwidth=1.0, options={"max_rounds": 4})


def test_acoreset_default_batches_at_n_1024_are_11_and_labelled_approximate():
    """The docstring claimed N = 1024 keeps batches of 10; ceil(1018 / 100) = 11."""
    import math

    from wheretolearn.design.baselines import APPROXIMATE_SOURCES, acoreset_batch_size

    assert acoreset_batch_size(1024) == 11 == math.ceil((1024 - 6) / 100)
    assert acoreset_batch_size(1024, max_rounds=None) == 10
    assert "acoreset" in APPROXIMATE_SOURCES


def test_coreset_rejects_n_larger_than_pool():
    with pytest.raises(ValueError, match="pool size"):
        ncoreset(torch.zeros(5, 2), 6, bandwidth=1.0)


def test_make_sources_draw_shapes_and_reproducibility():
    mt = _fake_metatest()
    init = Gaussian(torch.full((2,), 0.5), torch.eye(2))
    final = Gaussian(torch.zeros(2), 0.3 * torch.eye(2))
    sources = make_sources(SOURCE_NAMES, init=init, final=final, metatest=mt, bandwidth=1.0)
    assert [s.name for s in sources] == list(SOURCE_NAMES)
    pool = mt.seen_x.reshape(-1, 2)
    for src in sources:
        x = src.draw(25, generator=7, metatest=mt)
        assert x.shape == (25, 2), src.name
        assert torch.equal(x, src.draw(25, generator=7, metatest=mt)), src.name
        if isinstance(src, CoresetSource):  # coreset points are pool points
            assert bool((x[:, None, :] == pool[None]).all(-1).any(1).all())
    uniform = dict(zip(SOURCE_NAMES, sources))["uniform"].draw(500, generator=0)
    assert float(uniform.min()) >= 0 and float(uniform.max()) <= 1


def test_barycenter_and_mixture_use_empirical_gaussians():
    mt = _fake_metatest(j=2, l=400)
    comps = empirical_gaussians(mt.seen_x, dtype=torch.float64)
    np.testing.assert_allclose(comps[1].mean.numpy(), mt.seen_x[1].mean(0).numpy(), atol=1e-12)
    np.testing.assert_allclose(comps[0].cov.numpy(), np.cov(mt.seen_x[0].numpy().T), atol=1e-8)
    mixture = make_sources(["mixture"], init=comps[0], metatest=mt, bandwidth=1.0)[0]
    x = mixture.draw(20000, generator=0).double()
    np.testing.assert_allclose(x.mean(0).numpy(), mt.seen_x.mean((0, 1)).numpy(), atol=0.05)


def test_empirical_gaussians_accepts_nested_lists():
    # the dtype used to be read from the raw argument (AttributeError on a list)
    samples = [[[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [3.0, 1.0], [1.0, 5.0]]]
    comps = empirical_gaussians(samples, dtype=torch.float64)
    np.testing.assert_allclose(comps[1].mean.numpy(), [5 / 3, 7 / 3], atol=1e-12)
    np.testing.assert_allclose(comps[0].cov.numpy(), np.cov(np.array(samples[0]).T), atol=1e-8)
    assert empirical_gaussians(samples)[0].dtype == torch.float64  # numpy's default for floats


def test_make_sources_errors():
    mt = _fake_metatest()
    init = Gaussian(torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="unknown baseline 'gauss'"):
        make_sources(["gauss"], init=init, metatest=mt, bandwidth=1.0)
    with pytest.raises(ValueError, match="final"):
        make_sources(["optimized"], init=init, metatest=mt, bandwidth=1.0)
    with pytest.raises(TypeError, match="sample"):
        DistributionSource("x", object())


def test_growing_krr_block_cholesky_matches_direct_solve():
    from wheretolearn.design.baselines import _GrowingKRR

    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(50, 3)))
    y = torch.from_numpy(rng.normal(size=50))
    krr = _GrowingKRR(x, y, bandwidth=1.3, shift=1e-3, capacity=20)
    krr.add(torch.tensor([4, 9, 1]))
    krr.add(torch.tensor([30, 2, 17, 44, 8]))
    krr.add(torch.arange(10, 16))
    sel = krr.selected().numpy()
    xs = x.numpy()[sel]
    k = np.exp(-((xs[:, None] - xs[None]) ** 2).sum(-1) / (2 * 1.3 ** 2))
    ref = np.linalg.solve(k + 1e-3 * np.eye(len(sel)), y.numpy()[sel])
    np.testing.assert_allclose(krr.coefficients().numpy(), ref, rtol=1e-9, atol=1e-9)
    kp = np.exp(-((x.numpy()[:, None] - xs[None]) ** 2).sum(-1) / (2 * 1.3 ** 2))
    np.testing.assert_allclose(krr.columns().numpy(), kp, atol=1e-12)
