"""W2 distances and barycenters checked against POT, finite differences and closed forms."""

import numpy as np
import ot
import pytest
import torch

from wheretolearn.measures import (
    BarycenterResult, Empirical, Gaussian, Uniform, barycenter, sqrtm_psd, wasserstein2,
    wasserstein2_squared,
)

f64 = torch.float64


def _spd(d, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=f64)
    return a @ a.T + 0.2 * torch.eye(d, dtype=f64)


def _vec(d, seed):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=f64)


# ------------------------------------------------------------------ sqrtm
def test_sqrtm_psd_squares_back_and_batches():
    c = torch.stack([_spd(4, 0), _spd(4, 1)])
    s = sqrtm_psd(c)
    assert torch.allclose(s @ s, c, atol=1e-10)
    assert torch.allclose(s, s.mT)


def test_sqrtm_gradient_matches_finite_differences_with_repeated_eigenvalues():
    c = torch.eye(3, dtype=f64).requires_grad_()  # triple eigenvalue: eigh's backward is NaN
    sym = _spd(3, 2)
    (sqrtm_psd(c) * sym).sum().backward()
    # d/dC <S, G> at C = I: dS = dC / 2, so grad = sym(G) / 2
    assert torch.allclose(c.grad, 0.5 * sym, atol=1e-12)
    c2 = _spd(3, 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: sqrtm_psd(0.5 * (a + a.T)), (c2,))


# ------------------------------------------------------------------ Gaussian W2
@pytest.mark.parametrize("d", [1, 3, 5])
def test_gaussian_w2_matches_pot(d):
    for seed in range(3):
        m1, m2 = _vec(d, seed), _vec(d, seed + 10)
        c1, c2 = _spd(d, seed + 20), _spd(d, seed + 30)
        ours = wasserstein2(Gaussian(m1, c1), Gaussian(m2, c2))
        ref = ot.gaussian.bures_wasserstein_distance(m1.numpy(), m2.numpy(), c1.numpy(),
                                                     c2.numpy())
        assert float(ours) == pytest.approx(float(np.squeeze(ref)), rel=1e-9)
        sq = wasserstein2_squared(Gaussian(m1, c1), Gaussian(m2, c2))
        assert float(sq) == pytest.approx(float(ours) ** 2, rel=1e-12)


def test_gaussian_w2_commuting_case_closed_form():
    l1, l2 = torch.tensor([1.0, 4.0, 9.0], dtype=f64), torch.tensor([4.0, 1.0, 0.25], dtype=f64)
    m1, m2 = _vec(3, 0), _vec(3, 1)
    w2sq = wasserstein2_squared(Gaussian(m1, torch.diag(l1)), Gaussian(m2, torch.diag(l2)))
    expected = ((m1 - m2) ** 2).sum() + ((l1.sqrt() - l2.sqrt()) ** 2).sum()
    assert float(w2sq) == pytest.approx(float(expected), rel=1e-12)


def test_gaussian_w2_gradient_finite_at_equal_covariances():
    c = _spd(3, 4)
    L = torch.linalg.cholesky(c).requires_grad_()
    m = _vec(3, 5).requires_grad_()
    w2sq = wasserstein2_squared(Gaussian(m, scale_tril=L), Gaussian(_vec(3, 5), c))
    w2sq.backward()
    assert torch.isfinite(L.grad).all() and torch.isfinite(m.grad).all()
    assert float(L.grad.abs().max()) < 1e-8  # minimum: gradient 0
    # identity covariances too (repeated eigenvalues)
    L2 = torch.eye(2, dtype=f64).requires_grad_()
    w = wasserstein2(Gaussian(torch.zeros(2, dtype=f64), scale_tril=L2),
                     Gaussian(torch.ones(2, dtype=f64), torch.eye(2, dtype=f64)))
    w.backward()
    assert torch.isfinite(L2.grad).all()


def test_gaussian_w2_gradient_matches_finite_differences():
    c2, m2 = _spd(3, 6), _vec(3, 7)
    L0, m0 = torch.linalg.cholesky(_spd(3, 8)), _vec(3, 9)
    tril = torch.tril_indices(3, 3)

    def f(mean, Lvals):
        L = torch.zeros(3, 3, dtype=f64).index_put((tril[0], tril[1]), Lvals)
        return wasserstein2(Gaussian(mean, scale_tril=L), Gaussian(m2, c2))

    args = (m0.clone().requires_grad_(), L0[tril[0], tril[1]].clone().requires_grad_())
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-6)
    # also at equal covariances but different means (squared form is smooth there)
    args_eq = (m0.clone().requires_grad_(),
               torch.linalg.cholesky(c2)[tril[0], tril[1]].clone().requires_grad_())

    def g(mean, Lvals):
        L = torch.zeros(3, 3, dtype=f64).index_put((tril[0], tril[1]), Lvals)
        return wasserstein2_squared(Gaussian(mean, scale_tril=L), Gaussian(m2, c2))

    assert torch.autograd.gradcheck(g, args_eq, eps=1e-6, atol=1e-6)


def test_w2_unsupported_pair_raises_type_error():
    g = Gaussian(torch.zeros(2), torch.eye(2))
    with pytest.raises(TypeError, match=r"\(Gaussian, Uniform\)"):
        wasserstein2(g, Uniform(0.0, 1.0, dim=2))
    with pytest.raises(ValueError, match="same dimension"):
        wasserstein2(g, Gaussian(torch.zeros(3), torch.eye(3)))


# ------------------------------------------------------------------ barycenter
def _family(J, d, seed):
    return [Gaussian(_vec(d, seed + j), _spd(d, seed + 100 + j)) for j in range(J)]


@pytest.mark.parametrize("d", [1, 3, 5])
def test_barycenter_matches_pot_and_fixed_point_equation(d):
    fam = _family(4, d, d)
    w = np.array([0.1, 0.2, 0.3, 0.4])
    res = barycenter(fam, w)
    assert isinstance(res, BarycenterResult) and res.converged and res.residual <= 1e-10
    means = np.stack([g.mean.numpy() for g in fam])
    covs = np.stack([g.cov.numpy() for g in fam])
    mb, cb = ot.gaussian.bures_wasserstein_barycenter(means, covs, w, method="fixed_point",
                                                      num_iter=1000, eps=1e-13)
    np.testing.assert_allclose(res.measure.mean.numpy(), mb, atol=1e-12)
    np.testing.assert_allclose(res.measure.cov.numpy(), cb, atol=1e-8)
    # independent residual of S = sum_j w_j (S^1/2 C_j S^1/2)^1/2 via scipy's sqrtm
    import scipy.linalg
    S = res.measure.cov.numpy()
    r = np.real(scipy.linalg.sqrtm(S))
    T = sum(wj * np.real(scipy.linalg.sqrtm(r @ cj @ r)) for wj, cj in zip(w, covs))
    assert np.linalg.norm(T - S) / np.linalg.norm(S) < 1e-8


def test_barycenter_of_one_is_itself_and_weights_validated():
    fam = _family(2, 3, 0)
    res = barycenter(fam, [0.0, 5.0])  # normalised to (0, 1)
    assert torch.allclose(res.measure.cov, fam[1].cov, atol=1e-9)
    assert res.iterations <= 2
    with pytest.raises(ValueError, match=r"weights must have shape \(2,\)"):
        barycenter(fam, [1.0])
    with pytest.raises(ValueError, match="non-negative"):
        barycenter(fam, [1.5, -0.5])
    with pytest.raises(TypeError, match=r"gaussians\[1\]"):
        barycenter([fam[0], Uniform(0.0, 1.0, dim=3)])


def test_barycenter_not_converged_warns():
    with pytest.warns(RuntimeWarning, match="did not reach"):
        res = barycenter(_family(3, 4, 1), max_iter=1, tol=1e-15)
    assert not res.converged and res.iterations == 1


def test_barycenter_differentiable_in_means():
    m = _vec(2, 0).requires_grad_()
    fam = [Gaussian(m, _spd(2, 1)), Gaussian(_vec(2, 2), _spd(2, 3))]
    barycenter(fam).measure.mean.sum().backward()
    assert torch.allclose(m.grad, torch.full((2,), 0.5, dtype=f64))


# ------------------------------------------------------------------ empirical W2
def test_empirical_w2_matches_numpy_emd2():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 3)), rng.normal(loc=1.0, size=(40, 3))
    wx = rng.random(30)
    wx /= wx.sum()
    M = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    ref = ot.emd2(wx, np.full(40, 1 / 40), M)
    ours = wasserstein2_squared(Empirical(torch.tensor(x), wx), Empirical(torch.tensor(y)))
    assert float(ours) == pytest.approx(ref, rel=1e-10)
    sk = wasserstein2_squared(Empirical(torch.tensor(x), wx), Empirical(torch.tensor(y)),
                              method="sinkhorn", reg=0.05)
    assert float(sk) == pytest.approx(ref, rel=0.01)
    assert float(sk) != pytest.approx(ref, rel=1e-6)  # it really is the entropic path


def test_empirical_1d_w2_equals_sorted_samples_formula():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=50), rng.exponential(size=50)
    ref = np.sqrt(np.mean((np.sort(x) - np.sort(y)) ** 2))
    ours = wasserstein2(Empirical(torch.tensor(x)[:, None]), Empirical(torch.tensor(y)[:, None]))
    assert float(ours) == pytest.approx(ref, rel=1e-10)


def test_empirical_w2_gradient_moves_particles_towards_target():
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.normal(size=(20, 2))).requires_grad_()
    y = torch.tensor(rng.normal(size=(20, 2)) + 3.0)
    x0 = x.detach().clone()
    wasserstein2_squared(Empirical(x), Empirical(y)).backward()
    assert torch.equal(x.detach(), x0)
    # uniform equal-size measures: plan is a permutation / n, grad_x = 2 (x - T(x)) / n
    plan = ot.emd(np.full(20, 0.05), np.full(20, 0.05),
                  ((x0.numpy()[:, None] - y.numpy()[None]) ** 2).sum(-1))
    expected = 2 * (x0.numpy() * plan.sum(1)[:, None] - plan @ y.numpy())
    np.testing.assert_allclose(x.grad.numpy(), expected, atol=1e-10)


def test_empirical_w2_mismatch_errors():
    a = Empirical(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="event_shape"):
        wasserstein2(a, Empirical(torch.zeros(3, 3)))
    with pytest.raises(ValueError, match="method"):
        wasserstein2(a, Empirical(torch.ones(3, 2)), method="bogus")


def test_gaussian_w2_float32_inputs_accurate():
    c1, c2 = _spd(4, 40), _spd(4, 41)
    ref = wasserstein2(Gaussian(_vec(4, 0), c1), Gaussian(_vec(4, 0), c2))
    ours = wasserstein2(Gaussian(_vec(4, 0).float(), c1.float()), Gaussian(_vec(4, 0).float(),
                                                                          c2.float()))
    assert ours.dtype == torch.float32
    assert float(ours) == pytest.approx(float(ref), rel=1e-5)
    same = Gaussian(_vec(4, 0).float(), c1.float())
    assert float(wasserstein2(same, same)) < 1e-3
