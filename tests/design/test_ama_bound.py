"""AMA bound: W2 terms against POT, Lipschitz power iteration against exact spectral norms,
the 1 - cos sampler against its CDF, and meta-test labelling/caching."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from wheretolearn.design.ama_bound import (BoundConstants, LipschitzOptions, ama_bound,
                                           estimate_lipschitz, lipschitz_or_fixed,
                                           w2_squared_to_family)
from wheretolearn.design.ama_problems import ama_setup
from wheretolearn.design.labelling import Labeller
from wheretolearn.design.operator_metatest import (MetaTestDraws, empirical_operator_metatest,
                                                   make_operator_metatest,
                                                   one_minus_cos_samples)
from wheretolearn.measures import Empirical, GaussianRandomField, NtDInputMeasure, SineBasis2D


def _pot_w2sq_fields(a, b):
    """Independent W2^2: Bures-Wasserstein (POT) of the grid Gaussians in sqrt(q)-scaled
    coordinates (where the quadrature norm is Euclidean), on the nodes where the fields vary
    (full-rank covariances), plus the mean difference on the nodes where they are constant."""
    import ot

    q = a.basis.quadrature_weights.double().reshape(-1)
    r = q.sqrt()
    var = a.covariance_matrix().double().diagonal() > 1e-14

    def moments(f):
        m = f.mean_field().double().reshape(-1) * r
        c = f.covariance_matrix().double() * r[:, None] * r[None, :]
        return m, c[var][:, var]

    ma, ca = moments(a)
    mb, cb = moments(b)
    assert torch.linalg.matrix_rank(ca) == ca.shape[0]
    fixed = float(((ma - mb)[~var] ** 2).sum())
    bw = float(ot.gaussian.bures_wasserstein_distance(ma[var].numpy(), mb[var].numpy(),
                                                      ca.numpy(), cb.numpy()))
    return bw ** 2 + fixed


def test_w2_between_darcy_fields_matches_pot():
    basis = SineBasis2D(8, 6)
    nu = GaussianRandomField(basis, alpha=2.0, tau=3.0, sigma=3.0, mean=0.3, dtype="float64")
    qs = [GaussianRandomField(basis, alpha=a, tau=t, sigma=t ** (a - 1), mean=m, dtype="float64")
          for a, t, m in [(2.5, 1.5, 0.8), (2.2, 3.5, 0.1)]]
    ours = w2_squared_to_family(nu, qs)
    for j, q in enumerate(qs):
        assert float(ours[j]) == pytest.approx(_pot_w2sq_fields(nu, q), rel=1e-6)


def test_w2_between_ntd_measures_uses_their_fields_and_matches_pot():
    nu = NtDInputMeasure(4 * math.pi, n_boundary=20, n_modes=18, dtype="float64")
    q = NtDInputMeasure(-2.0, tau=7.0, alpha=1.5, sigma=7.0, n_boundary=20, n_modes=18,
                        dtype="float64")
    ours = float(w2_squared_to_family(nu, [q])[0])
    assert ours == pytest.approx(_pot_w2sq_fields(nu.field, q.field), rel=1e-6)


def test_w2_between_empirical_measures_matches_pot_emd():
    import ot

    g = torch.Generator().manual_seed(0)
    w = torch.rand(6, generator=g, dtype=torch.float64) + 0.5
    a = torch.randn(7, 6, generator=g, dtype=torch.float64)
    b = torch.randn(5, 6, generator=g, dtype=torch.float64) + 1.0
    ours = float(w2_squared_to_family(Empirical(a, quadrature_weights=w),
                                      [Empirical(b, quadrature_weights=w)])[0])
    an, bn, wn = a.numpy(), b.numpy(), w.numpy()
    M = ((an[:, None, :] - bn[None, :, :]) ** 2 * wn).sum(-1)
    ref = ot.emd2(np.full(7, 1 / 7), np.full(5, 1 / 5), M)
    assert ours == pytest.approx(ref, rel=1e-9)


def test_bound_formula():
    part1 = torch.tensor(0.5, dtype=torch.float64)
    m2 = torch.tensor(2.0, dtype=torch.float64)
    m2q = torch.tensor([1.0, 3.0], dtype=torch.float64)
    w2 = torch.tensor([0.25, 1.0], dtype=torch.float64)
    b = ama_bound(part1, m2_nu=m2, m2_family=m2q, w2sq=w2,
                  constants=BoundConstants(0.5, 1.0, g0_true_sq=0.1, g0_model_sq=0.2))
    s = 1.5 ** 2
    part2 = math.sqrt(np.mean([s * (4 * s * (2 + q) + 16 * 0.3) for q in (1.0, 3.0)]))
    part3 = math.sqrt(np.mean([0.25, 1.0]))
    assert float(b.value) == pytest.approx(0.5 + part2 * part3, rel=1e-12)
    with pytest.raises(ValueError, match="lipschitz_model must be a finite number >= 0"):
        BoundConstants(0.5, -1.0, 0.1, 0.2)
    with pytest.raises(ValueError, match="g0_true_sq must be a number >= 0"):
        BoundConstants(0.5, 1.0, torch.tensor(-0.1), 0.2)


def test_lipschitz_of_a_linear_map_with_weights():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(9, 7, generator=g, dtype=torch.float64)
    w_in = torch.rand(7, generator=g, dtype=torch.float64) + 0.1
    w_out = torch.rand(9, generator=g, dtype=torch.float64) + 0.1
    exact = float(torch.linalg.matrix_norm(w_out.sqrt()[:, None] * A / w_in.sqrt()[None, :], 2))
    x = torch.randn(3, 7, generator=g, dtype=torch.float64)
    for mode in ("forward", "fd"):
        est = estimate_lipschitz(lambda u: u @ A.T, x, input_weights=w_in, output_weights=w_out,
                                 options=LipschitzOptions(iterations=200, safety=2.0, jvp=mode))
        assert est.max_norm == pytest.approx(exact, rel=1e-6)
        assert est.value == pytest.approx(2.0 * exact, rel=1e-6)
        assert est.max_norm <= exact * (1 + 1e-9)   # power iteration never overshoots


def test_lipschitz_of_the_ntd_matrix_is_its_weighted_spectral_norm():
    s = ama_setup("ntd", n=10)
    M = torch.as_tensor(s.problem.matrix)
    w = s.input_weights.double()
    exact = float(torch.linalg.matrix_norm(w.sqrt()[:, None] * M / w.sqrt()[None, :], 2))
    x = s.build(1.0).sample(2, generator=0)
    est = estimate_lipschitz(s.problem, x, input_weights=w, output_weights=w,
                             options=LipschitzOptions(iterations=300, safety=1.0))
    assert est.max_norm == pytest.approx(exact, rel=1e-4)


def test_lipschitz_of_the_darcy_solver_uses_the_adjoint_and_scales_with_the_mean():
    # G*(u + c) = exp(-c) G*(u): the Jacobian norm at u + c is exp(-c) times that at u
    s = ama_setup("darcy", n=8)
    u = s.build(0.0).sample(1, generator=0).double()
    kw = dict(input_weights=s.input_weights.double(), output_weights=s.output_weights.double(),
              options=LipschitzOptions(iterations=40, safety=1.0, jvp="fd"))
    e0 = estimate_lipschitz(s.problem, u, **kw).max_norm
    e1 = estimate_lipschitz(s.problem, u + 1.0, **kw).max_norm
    assert e1 == pytest.approx(math.exp(-1.0) * e0, rel=1e-3)


def test_lipschitz_fixed_or_bad():
    assert lipschitz_or_fixed(0.1, lambda: None).to_dict()["fixed"] is True
    with pytest.raises(ValueError, match="'auto' or a number"):
        lipschitz_or_fixed("often", lambda: None)


def test_one_minus_cos_sampler_matches_its_cdf():
    rng = np.random.default_rng(0)
    lo, hi = 0.0, 50.0
    x = one_minus_cos_samples(4000, lo, hi, rng)
    assert x.min() >= lo and x.max() <= hi
    cdf = lambda t: ((t - np.sin(t)) - (lo - np.sin(lo))) / ((hi - np.sin(hi)) - (lo - np.sin(lo)))
    assert stats.kstest(x, cdf).pvalue > 1e-3
    with pytest.raises(ValueError, match="low < high"):
        one_minus_cos_samples(3, 1.0, 1.0, rng)


def test_metatest_families_label_once_and_cache_by_content(tmp_path):
    s = ama_setup("darcy", n=8)
    ms, ps = s.family(3, 0)
    assert len(ms) == 3 and all(0 <= p["mean"] <= 1 and 2 <= p["alpha"] <= 3 for p in ps)
    assert all(p["sigma"] == pytest.approx(p["tau"] ** (p["alpha"] - 1)) for p in ps)
    lab = Labeller(s.problem, cache_dir=tmp_path)
    mt = make_operator_metatest(lab, ms, MetaTestDraws(4, 6), params=ps,
                                output_weights=s.output_weights)
    assert mt.seen_x.shape == (3, 4, 8, 8) and mt.unseen_y.shape == (3, 6, 8, 8)
    # labels are the solver's outputs on the stored inputs
    torch.testing.assert_close(mt.unseen_y[1], s.problem(mt.unseen_x[1].double()).float(),
                               rtol=1e-4, atol=1e-7)
    computed = lab.n_labelled
    lab2 = Labeller(s.problem, cache_dir=tmp_path)
    mt2 = make_operator_metatest(lab2, ms, MetaTestDraws(4, 6))
    assert lab2.n_labelled == 0 and torch.equal(mt2.seen_x, mt.seen_x)   # reused from disk
    changed = [ms[0].detach()] + ms[1:]
    changed[0] = GaussianRandomField(ms[0].basis, alpha=2.9, tau=1.0, sigma=1.0, mean=0.5,
                                     dtype="float64")
    make_operator_metatest(lab2, changed, MetaTestDraws(4, 6))
    assert lab2.n_labelled == 10            # only the changed measure is labelled again
    assert computed == 30
    # the error of the ground truth itself is 0, of the zero map 1
    assert mt.error(lambda u: s.problem(u.double())) == pytest.approx(0.0, abs=1e-3)
    assert mt.error(lambda u: torch.zeros(u.shape[0], 8, 8)) == pytest.approx(1.0)


def test_ntd_family_parameters_and_empirical_family():
    s = ama_setup("ntd", n=6)
    ms, ps = s.family(20, 1)
    assert all(-4 * math.pi <= p["omega"] <= 4 * math.pi and 0 <= p["tau"] <= 50 for p in ps)
    assert all(p["sigma"] == p["tau"] and p["alpha"] == 1.5 for p in ps)
    g = torch.Generator().manual_seed(0)
    pools_x = [torch.randn(12, 20, generator=g), torch.randn(15, 20, generator=g)]
    pools_y = [x @ torch.as_tensor(s.problem.matrix).float() for x in pools_x]
    mt = empirical_operator_metatest(pools_x, pools_y, MetaTestDraws(4, 6),
                                     input_weights=s.input_weights, output_weights=s.output_weights)
    assert mt.seen_x.shape == (2, 4, 20) and isinstance(mt.measures[0], Empirical)
    with pytest.raises(ValueError, match="pool 0 must hold"):
        empirical_operator_metatest(pools_x, pools_y, MetaTestDraws(10, 6))
    with pytest.raises(ValueError, match="n_unseen must be"):
        MetaTestDraws(4, 0)
    with pytest.raises(TypeError, match="draws must be a MetaTestDraws"):
        empirical_operator_metatest(pools_x, pools_y, (4, 6))
