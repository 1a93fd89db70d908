"""Kernel ridge regression against numpy/scipy solves (paper Lemma D.4)."""

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import torch

from wheretolearn.models import KernelRidge, gaussian_kernel, kernel_matvec


def _data(n=40, d=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = np.sin(x[:, 0]) + x[:, 1] ** 2
    return x, y


def test_gaussian_kernel_against_formula_both_paths():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    expected = np.exp(-((x[:, None] - y[None]) ** 2).sum(-1) / (2 * 0.7 ** 2))
    got = gaussian_kernel(torch.from_numpy(x), torch.from_numpy(y), 0.7)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-14)
    # the large-matrix path (norm expansion) agrees too
    xb, yb = rng.normal(size=(2100, 3)), rng.normal(size=(700, 3))
    big = gaussian_kernel(torch.from_numpy(xb), torch.from_numpy(yb), 0.7).numpy()
    ref = np.exp(-scipy.spatial.distance.cdist(xb, yb, "sqeuclidean") / (2 * 0.7 ** 2))
    np.testing.assert_allclose(big, ref, atol=1e-12)


def test_fit_matches_scipy_solve_float64():
    x, y = _data()
    ridge, s = 1e-3, 1.3
    krr = KernelRidge(bandwidth=s, ridge=ridge, dtype="float64").fit(x, y)
    k = np.exp(-scipy.spatial.distance.cdist(x, x, "sqeuclidean") / (2 * s * s))
    a = scipy.linalg.solve(k + len(y) * ridge * np.eye(len(y)), y, assume_a="pos")
    np.testing.assert_allclose(krr.coef_.numpy(), a, rtol=1e-9)
    v = np.random.default_rng(5).normal(size=(300, 2))
    kv = np.exp(-scipy.spatial.distance.cdist(v, x, "sqeuclidean") / (2 * s * s))
    np.testing.assert_allclose(krr.predict(v).numpy(), kv @ a, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(krr.cholesky_ @ krr.cholesky_.T,
                               k + len(y) * ridge * np.eye(len(y)), atol=1e-12)


def test_interpolates_at_tiny_ridge():
    x, y = _data(n=15)
    krr = KernelRidge(bandwidth=1.0, ridge=1e-12, dtype="float64").fit(x, y)
    np.testing.assert_allclose(krr.predict(x).numpy(), y, atol=1e-6)


def test_float32_working_dtype_and_chunking():
    x, y = _data(n=60)
    ref = KernelRidge(bandwidth=1.0, ridge=1e-4, dtype="float64").fit(x, y)
    v = np.random.default_rng(2).normal(size=(1000, 2))
    krr = KernelRidge(bandwidth=1.0, ridge=1e-4, dtype="float32", chunk_rows=37).fit(x, y)
    out = krr.predict(v)
    assert out.dtype == torch.float32 and out.shape == (1000,)
    np.testing.assert_allclose(out.numpy(), ref.predict(v).numpy(), atol=2e-4)


def test_kernel_matvec_matches_dense():
    rng = np.random.default_rng(3)
    v, x, c = (torch.from_numpy(rng.normal(size=s)) for s in ((513, 4), (31, 4), (31,)))
    dense = gaussian_kernel(v, x, 2.0) @ c
    np.testing.assert_allclose(kernel_matvec(v, x, c, bandwidth=2.0, chunk_rows=100).numpy(),
                               dense.numpy(), rtol=1e-12, atol=1e-13)


def test_errors_are_clear():
    x, y = _data(n=10)
    y_nan = y.copy()
    y_nan[3] = np.nan
    with pytest.raises(ValueError, match="y must be finite"):
        KernelRidge().fit(x, y_nan)
    with pytest.raises(ValueError, match=r"y must have shape \(10,\)"):
        KernelRidge().fit(x, y[:9])
    with pytest.raises(ValueError, match="not fitted"):
        KernelRidge().predict(x)
    with pytest.raises(ValueError, match=r"v must have shape \(M, 2\)"):
        KernelRidge().fit(x, y).predict(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="bandwidth"):
        KernelRidge(bandwidth=-1.0)
    # duplicated inputs with zero ridge: singular kernel matrix
    xd = np.repeat(x[:2], 2, axis=0)
    with pytest.raises(ValueError, match="Cholesky.*ridge=0"):
        KernelRidge(ridge=0.0).fit(xd, np.arange(4.0))


def test_failed_refit_keeps_the_previous_fit_whole():
    x, y = _data(n=10)
    krr = KernelRidge(ridge=0.0).fit(torch.from_numpy(x), torch.from_numpy(y))
    before = krr.predict(x[:3])
    xd = torch.from_numpy(np.repeat(x[:2], 2, axis=0)).float()  # singular, float32
    with pytest.raises(ValueError, match="Cholesky"):
        krr.fit(xd, torch.arange(4.0))
    after = krr.predict(x[:3])
    assert after.dtype == torch.float64 and torch.equal(after, before)


def test_does_not_modify_inputs():
    x, y = _data(n=20)
    xt, yt = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
    krr = KernelRidge(dtype="float64").fit(xt, yt)
    krr.predict(xt)
    assert torch.equal(xt, torch.from_numpy(x)) and torch.equal(yt, torch.from_numpy(y))
    assert krr.x_train_.data_ptr() != xt.data_ptr()


def test_laplace_kernel_fit_and_predict_match_scipy():
    """kernel="laplace": exp(-|x - x'| / s); fit and chunked prediction against a dense
    scipy solve with scipy's distances."""
    from wheretolearn.models import laplace_kernel

    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 3))
    y = np.sin(x).sum(1)
    v = rng.normal(size=(2500, 3))
    s, eps = 1.7, 1e-4
    k = np.exp(-scipy.spatial.distance.cdist(x, x) / s)
    a = scipy.linalg.solve(k + 60 * eps * np.eye(60), y, assume_a="pos")
    ref = np.exp(-scipy.spatial.distance.cdist(v, x) / s) @ a
    np.testing.assert_allclose(laplace_kernel(torch.from_numpy(x), torch.from_numpy(x), s).numpy(),
                               k, rtol=1e-12)
    model = KernelRidge(bandwidth=s, ridge=eps, kernel="laplace", chunk_rows=700)
    model.fit(torch.from_numpy(x), torch.from_numpy(y))
    np.testing.assert_allclose(model.coef_.numpy(), a, rtol=1e-8)
    np.testing.assert_allclose(model.predict(torch.from_numpy(v)).numpy(), ref, rtol=1e-5,
                               atol=1e-6 * np.abs(ref).max())
    gauss = KernelRidge(bandwidth=s, ridge=eps).fit(torch.from_numpy(x), torch.from_numpy(y))
    assert np.abs(gauss.predict(torch.from_numpy(v)).numpy() - ref).max() > 1e-2  # not the same
    with pytest.raises(ValueError, match="kernel must be one of gaussian, laplace"):
        KernelRidge(kernel="matern")
