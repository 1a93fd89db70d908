"""Bilevel gradient descent: the adjoint gradient against autograd / finite differences, and
the descent loop (paper §4.1, SM D.2; SPEC §3)."""

import math

import numpy as np
import pytest
import torch

from wheretolearn.design import (BilevelSchedule, KRRSettings, StepControl, bilevel_descent,
                                 make_metatest)
from wheretolearn.design.bilevel import adjoint_gradient, cosine_schedule
from wheretolearn.design.bilevel_families import gaussian_update as _update
from wheretolearn.measures import Gaussian
from wheretolearn.models import gaussian_kernel
from wheretolearn.problems import get_problem

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _small_case(seed=0):
    problem = get_problem("sobol-g", dim=2)
    mt = make_metatest(problem, n_measures=2, n_seen=15, n_unseen=5, seed=seed, dtype=F64)
    mean = torch.tensor([0.3, -0.2], dtype=F64)
    tril = torch.tensor([[0.9, 0.0], [0.4, 1.3]], dtype=F64)
    z = torch.randn(20, 2, dtype=F64, generator=torch.Generator().manual_seed(seed))
    return problem, mt, mean, tril, z


def _ref_kernel(a, b, s, kind):
    """Independent kernel matrices: explicit differences, no augmented-factor trick."""
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return torch.exp(-d2 / (2 * s * s)) if kind == "gaussian" else torch.exp(-d2.sqrt() / s)


def _weighted_objective(problem, mt, x, logp0, mean, tril, *, bandwidth, ridge,
                        kernel="gaussian"):
    """Seen loss of KRR fitted with importance weights w_i = p_theta'(x_i) / (N p_theta(x_i)).

    Unrolled: a = (W K + eps I)^{-1} W y (equals (K + N eps I)^{-1} y at theta' = theta).
    """
    n = x.shape[0]
    w = torch.exp(Gaussian(mean, scale_tril=tril).log_prob(x) - logp0) / n
    y = problem(x)
    k = _ref_kernel(x, x, bandwidth, kernel)
    a = torch.linalg.solve(w[:, None] * k + ridge * torch.eye(n, dtype=F64), w * y)
    v, yv = mt.seen_x.reshape(-1, 2), mt.seen_y.reshape(-1)
    return 0.5 * ((yv - _ref_kernel(v, x, bandwidth, kernel) @ a) ** 2).mean()


@pytest.mark.parametrize("kernel", ["gaussian", "laplace"])
@pytest.mark.parametrize("ridge, bandwidth", [(1e-3, 1.0), (1e-2, 0.7)])
def test_adjoint_gradient_equals_autograd_of_weighted_unrolled_solve(ridge, bandwidth, kernel):
    problem, mt, mean, tril, z = _small_case()
    nu = Gaussian(mean, scale_tril=tril)
    got = adjoint_gradient(problem, mt, nu, z, ridge=ridge,
                           krr=KRRSettings(bandwidth=bandwidth, kernel=kernel))
    x = (mean + z @ tril.T).detach()
    logp0 = nu.log_prob(x).detach()
    m_req, l_req = mean.clone().requires_grad_(True), tril.clone().requires_grad_(True)
    loss = _weighted_objective(problem, mt, x, logp0, m_req, l_req, bandwidth=bandwidth,
                               ridge=ridge, kernel=kernel)
    gm, gl = torch.autograd.grad(loss, (m_req, l_req))
    scale = float(torch.cat([gm, gl.reshape(-1)]).abs().max())
    assert scale > 1e-6  # a real, non-zero gradient
    np.testing.assert_allclose(got.grad_mean.numpy(), gm.numpy(), atol=1e-9 * scale, rtol=1e-7)
    np.testing.assert_allclose(got.grad_scale_tril.numpy(), torch.tril(gl).numpy(),
                               atol=1e-9 * scale, rtol=1e-7)
    assert got.grad_scale_tril[0, 1] == 0.0
    # the seen error reported with it is the KRR fit's relative error
    krr_f = _ref_kernel(mt.seen_x.reshape(-1, 2), x, bandwidth, kernel) @ got.coef
    ref_err = float(((mt.seen_y.reshape(-1) - krr_f).norm() / mt.seen_y.norm()))
    assert got.seen_error == pytest.approx(ref_err, rel=1e-10)


@pytest.mark.parametrize("kernel", ["gaussian", "laplace"])
def test_adjoint_gradient_matches_finite_differences(kernel):
    problem, mt, mean, tril, z = _small_case(seed=1)
    nu = Gaussian(mean, scale_tril=tril)
    got = adjoint_gradient(problem, mt, nu, z, ridge=1e-3, krr=KRRSettings(kernel=kernel))
    x = (mean + z @ tril.T).detach()
    logp0 = nu.log_prob(x)
    h = 1e-6

    def obj(m, t):
        return float(_weighted_objective(problem, mt, x, logp0, m, t, bandwidth=1.0, ridge=1e-3,
                                         kernel=kernel))

    for k in range(2):
        e = torch.zeros(2, dtype=F64)
        e[k] = h
        fd = (obj(mean + e, tril) - obj(mean - e, tril)) / (2 * h)
        assert float(got.grad_mean[k]) == pytest.approx(fd, rel=1e-5, abs=1e-9)
    for i, j in [(0, 0), (1, 0), (1, 1)]:
        e = torch.zeros(2, 2, dtype=F64)
        e[i, j] = h
        fd = (obj(mean, tril + e) - obj(mean, tril - e)) / (2 * h)
        assert float(got.grad_scale_tril[i, j]) == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_adjoint_gradient_is_consistent_with_pathwise_gradient_on_average():
    """Averaged over draws, the score-function adjoint gradient agrees with the reparametrised
    (pathwise) autograd gradient of the same seen loss -- so no pathwise term is missing (adding
    it would double the gradient) and the sign is right. Finite N leaves a bias of ~10 %."""
    problem = get_problem("friedman1", dim=5)
    mt = make_metatest(problem, n_measures=3, n_seen=200, n_unseen=1, seed=0, dtype=F64)
    mean = torch.full((5,), 0.5, dtype=F64)
    tril = 0.8 * torch.eye(5, dtype=F64)
    tril[1, 0] = 0.3
    nu = Gaussian(mean, scale_tril=tril)
    n, ridge, s = 200, 1e-2, 3.0
    v, yv = mt.seen_x.reshape(-1, 5), mt.seen_y.reshape(-1)
    idx = torch.tril_indices(5, 5).unbind()
    gen = torch.Generator().manual_seed(0)
    adj, path = [], []
    for _ in range(100):
        z = torch.randn(n, 5, generator=gen, dtype=F64)
        g = adjoint_gradient(problem, mt, nu, z, ridge=ridge, krr=KRRSettings(bandwidth=s))
        adj.append(torch.cat([g.grad_mean, g.grad_scale_tril[idx]]))
        m, t = mean.clone().requires_grad_(True), tril.clone().requires_grad_(True)
        x = m + z @ t.T
        k = gaussian_kernel(x, x, s) + n * ridge * torch.eye(n, dtype=F64)
        a = torch.linalg.solve(k, problem(x))
        loss = 0.5 * ((yv - gaussian_kernel(v, x, s) @ a) ** 2).mean()
        gm, gt = torch.autograd.grad(loss, (m, t))
        path.append(torch.cat([gm, gt[idx]]))
    a_mean, p_mean = torch.stack(adj).mean(0), torch.stack(path).mean(0)
    cosine = float(a_mean @ p_mean / (a_mean.norm() * p_mean.norm()))
    assert cosine > 0.98
    assert float((a_mean - p_mean).norm() / p_mean.norm()) < 0.25


def test_normalize_labels_rescales_the_gradient():
    problem, mt, mean, tril, z = _small_case()
    nu = Gaussian(mean, scale_tril=tril)
    plain = adjoint_gradient(problem, mt, nu, z)
    scaled = adjoint_gradient(problem, mt, nu, z, krr=KRRSettings(normalize_labels=True))
    ms = float(mt.seen_y.square().mean())
    np.testing.assert_allclose(scaled.grad_mean.numpy(), plain.grad_mean.numpy() / ms, rtol=1e-12)


def test_cosine_schedule_endpoints():
    assert cosine_schedule(1e-3, 1e-7, 0, 100) == pytest.approx(1e-3)
    assert cosine_schedule(1e-3, 1e-7, 99, 100) == pytest.approx(1e-7)
    assert cosine_schedule(2.0, 0.0, 50, 101) == pytest.approx(1.0)


def test_update_clamps_non_positive_diagonal():
    mean, tril = torch.zeros(2), torch.tensor([[1.0, 0.0], [0.5, 0.1]])
    gm, gl = torch.zeros(2), torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    lower = torch.ones(2, 2).tril()
    _, new, _ = _update(mean, tril, gm, gl, 0.5, None, lower)
    assert float(new[1, 1]) == pytest.approx(1e-7) and float(new[0, 0]) == 1.0
    assert float(tril[1, 1]) == pytest.approx(0.1)  # caller's tensor untouched


@pytest.fixture(scope="module")
def sobol_setup():
    problem = get_problem("sobol-g", dim=2)
    mt = make_metatest(problem, n_measures=10, n_seen=200, n_unseen=800, seed=0)
    init = Gaussian(torch.full((2,), 0.5), torch.eye(2))
    return problem, mt, init


def test_descent_reduces_unseen_error_on_sobol_g(sobol_setup):
    problem, mt, init = sobol_setup
    before = (mt.seen_x.clone(), mt.seen_y.clone(), init.mean.clone(), init.scale_tril.clone())
    calls = []
    res = bilevel_descent(problem, mt, init, schedule=BilevelSchedule(n_train=100, steps=100),
                          generator=0, callback=calls.append)
    unseen = [h["unseen_error"] for h in res.history]
    assert unseen[0] > 0.8
    assert min(unseen) < 0.35 and np.mean(unseen[-10:]) < 0.5 * unseen[0]
    # callback once per step, with the history records
    assert len(calls) == 100 == len(res.history)
    assert [c["step"] for c in calls] == list(range(100))
    assert set(calls[0]) >= {"step", "lr", "ridge", "seen_error", "unseen_error", "grad_norm",
                             "seconds"}
    assert calls[0]["ridge"] == pytest.approx(1e-3) and calls[-1]["ridge"] == pytest.approx(1e-7)
    assert calls[-1]["lr"] == pytest.approx(0.0)
    # best iterate: lowest seen error
    seen = [h["seen_error"] for h in res.history]
    assert res.best_step == int(np.argmin(seen))
    np.testing.assert_allclose(res.best.mean.numpy(), res.history[res.best_step]["mean"],
                               rtol=1e-6)
    assert res.seconds_per_step > res.grad_seconds_per_step > 0
    # nothing the caller passed was modified
    assert torch.equal(before[0], mt.seen_x) and torch.equal(before[1], mt.seen_y)
    assert torch.equal(before[2], init.mean) and torch.equal(before[3], init.scale_tril)
    assert torch.equal(res.initial.mean, init.mean)


def test_same_seed_same_run_and_adam(sobol_setup):
    problem, mt, init = sobol_setup
    schedule = BilevelSchedule(n_train=50, steps=15, eval_unseen=False)
    a = bilevel_descent(problem, mt, init, schedule=schedule, generator=3)
    b = bilevel_descent(problem, mt, init, schedule=schedule, generator=3)
    c = bilevel_descent(problem, mt, init, schedule=schedule, generator=4)
    assert [h["seen_error"] for h in a.history] == [h["seen_error"] for h in b.history]
    assert torch.equal(a.final.scale_tril, b.final.scale_tril)
    assert not torch.equal(a.final.mean, c.final.mean)
    assert all(math.isnan(h["unseen_error"]) for h in a.history)
    torch.set_num_threads(2)
    bilevel_descent(problem, mt, init, schedule=BilevelSchedule(n_train=50, steps=2),
                    krr=KRRSettings(num_threads=1), generator=3)
    assert torch.get_num_threads() == 2  # restored after the run
    torch.set_num_threads(1)
    adam = bilevel_descent(problem, mt, init,
                           schedule=BilevelSchedule(n_train=100, steps=60, lr=0.1,
                                                    eval_unseen=False),
                           control=StepControl(optimizer="adam"), generator=0)
    seen = [h["seen_error"] for h in adam.history]
    assert min(seen) < 0.5 * seen[0]


def test_bad_arguments(sobol_setup):
    problem, mt, init = sobol_setup
    with pytest.raises(ValueError, match="StepControl.optimizer must be one of sgd, adam"):
        StepControl(optimizer="lbfgs")
    with pytest.raises(ValueError, match="init must be a Gaussian of dimension 2"):
        bilevel_descent(problem, mt, Gaussian(torch.zeros(3), torch.eye(3)))
    with pytest.raises(ValueError, match="BilevelSchedule.lr must be a finite number > 0"):
        BilevelSchedule(lr=-1.0)
    with pytest.raises(ValueError, match="StepControl.jump must be > 1, got 1"):
        StepControl(jump=1.0)
    with pytest.raises(ValueError, match="BilevelSchedule.eval_unseen"):
        BilevelSchedule(eval_unseen=0)
    with pytest.raises(ValueError, match="KRRSettings.kernel must be one of"):
        KRRSettings(kernel="cauchy")
    with pytest.raises(ValueError, match="KRRSettings.factor_dtype must be"):
        KRRSettings(factor_dtype="float16")
    with pytest.raises(TypeError, match="control must be a StepControl, got dict"):
        bilevel_descent(problem, mt, init, control={"optimizer": "adam"})
    assert BilevelSchedule(steps=np.int64(3)).steps == 3 and BilevelSchedule().unseen_every == 1


# ----------------------------------------------------------------- step control (issue 15 §1)
def _friedman1_blowup(seed=0):
    """Friedman 1 at 10x the paper's learning rate on a small meta-test: without step control
    the second step throws nu so far from every Q_j that the kernel vanishes there (seen error
    exactly 1, gradient 0 from then on) after a minimum of ~0.65 at step 1."""
    problem = get_problem("friedman1", dim=5)
    mt = make_metatest(problem, n_measures=10, n_seen=100, n_unseen=10, seed=seed)
    init = Gaussian(torch.full((5,), 0.5), scale_tril=torch.eye(5))
    kw = dict(schedule=BilevelSchedule(n_train=100, steps=150, lr=5e-3, eval_unseen=False),
              krr=KRRSettings(bandwidth=3.0), generator=seed)
    return problem, mt, init, kw


def test_trust_region_bounds_the_w2_move_and_leaves_small_steps_alone():
    from wheretolearn.measures import wasserstein2

    mean = torch.tensor([0.3, -0.2], dtype=F64)
    tril = torch.tensor([[0.9, 0.0], [0.4, 1.3]], dtype=F64)
    lower = torch.ones(2, 2, dtype=F64).tril()
    gm = torch.tensor([3e4, -1e5], dtype=F64)
    gl = torch.tensor([[2e4, 0.0], [5e3, -7e4]], dtype=F64)
    m1, l1, move = _update(mean, tril, gm, gl, 0.1, None, lower, 0.5)
    assert move == pytest.approx(0.5)
    # the bound is W2 <= sqrt(|dm|^2 + |dL|_F^2): check it against the closed-form W2
    w2 = float(wasserstein2(Gaussian(mean, scale_tril=tril), Gaussian(m1, scale_tril=l1)))
    assert 0.2 < w2 <= 0.5 + 1e-9
    # direction kept: the cut step is a positive multiple of the plain one
    plain_m, _, _ = _update(mean, tril, gm, gl, 0.1, None, lower, None)
    cos = torch.nn.functional.cosine_similarity(m1 - mean, plain_m - mean, dim=0)
    assert float(cos) == pytest.approx(1.0)
    # a step inside the radius is the paper's step, bit for bit
    small = _update(mean, tril, 1e-3 * gm / 1e5, 1e-3 * gl / 1e5, 0.1, None, lower, 0.5)
    ref = _update(mean, tril, 1e-3 * gm / 1e5, 1e-3 * gl / 1e5, 0.1, None, lower, None)
    assert torch.equal(small[0], ref[0]) and torch.equal(small[1], ref[1])


def test_large_lr_collapse_without_control_and_recovery_with_it():
    problem, mt, init, kw = _friedman1_blowup()
    raw = bilevel_descent(problem, mt, init, control=StepControl(max_move=None, backtrack=False),
                          **kw)
    seen = [h["seen_error"] for h in raw.history]
    assert seen[-1] == pytest.approx(1.0, abs=1e-4)          # the fit predicts nothing
    assert raw.collapse["collapsed"] and "vanishing_kernel" in raw.collapse["reasons"]
    assert min(seen) < 0.8 * seen[0]                         # ...after a good start
    safe = bilevel_descent(problem, mt, init, **kw)
    s = [h["seen_error"] for h in safe.history]
    assert not safe.collapse["collapsed"] and safe.collapse["clipped_steps"] > 0
    assert max(s) < 1.0 and np.mean(s[-10:]) < 0.6 * s[0]
    assert safe.best_step == int(np.nanargmin([h["seen_error"] if not h["rejected"] else np.nan
                                               for h in safe.history]))
    radius = safe.options["trust_radius"]
    assert all(h["move"] <= radius * (1 + 1e-9) for h in safe.history)


def test_backtracking_rejects_collapsed_iterates_and_returns_to_the_last_good_one():
    problem, mt, init, kw = _friedman1_blowup()
    res = bilevel_descent(problem, mt, init, control=StepControl(max_move=None), **kw)
    c = res.collapse
    assert c["events"] > 0 and c["lr_factor"] < 1.0 and not c["collapsed"]
    hist = res.history
    rejected = [i for i, h in enumerate(hist) if h["rejected"]]
    assert rejected
    for i in rejected:
        if i + 1 < len(hist):
            # the next step starts from the last accepted iterate, not the collapsed one
            last_ok = max(j for j in range(i) if not hist[j]["rejected"])
            assert hist[i + 1]["mean"] == hist[last_ok]["mean"]
    # no accepted iterate is one whose fit predicts nothing on the seen samples
    assert min(h["pred_ratio"] for h in hist if not h["rejected"]) > 1e-3
    assert any(h["pred_ratio"] < 1e-3 for h in hist if h["rejected"])
    assert res.best_step not in rejected


def test_unseen_error_every_k_steps_logs_only_and_changes_nothing(sobol_setup):
    problem, mt, init = sobol_setup
    full = bilevel_descent(problem, mt, init, schedule=BilevelSchedule(n_train=50, steps=12),
                           generator=5)
    sparse = bilevel_descent(problem, mt, init, generator=5,
                             schedule=BilevelSchedule(n_train=50, steps=12, eval_unseen=5))
    logged = [h["step"] for h in sparse.history if not math.isnan(h["unseen_error"])]
    assert logged == [0, 5, 10, 11]
    for i in logged:
        assert sparse.history[i]["unseen_error"] == full.history[i]["unseen_error"]
    assert torch.equal(sparse.final.mean, full.final.mean)   # logging never steers the run
