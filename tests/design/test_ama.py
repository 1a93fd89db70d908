"""The AMA loop: monotone J, each distribution update on a small case, the ablation."""

import math

import numpy as np
import pytest
import torch

from wheretolearn.design.ama import AMAConfig, AMAObjective, adam_update, de_update, run_ama
from wheretolearn.design.labelling import Labeller
from wheretolearn.models import TrainConfig

from ama_small import small_ama


def _small(name, n, k=4):
    return small_ama(name, n, k)


def _objective(s, mt, model, n_opt=16, L=0.5, Lp=1.0):
    xi = s.build(s.theta0).sample_coefficients(n_opt, torch.Generator().manual_seed(0))
    return AMAObjective(s, mt, model, xi, L, Lp, s.g0_true_sq())


def test_loop_logs_a_monotone_J_and_is_reproducible():
    s, lab, mt, factory = _small("ntd", 8)
    cfg = AMAConfig(n_train=40, iterations=3, n_opt=16,
                    train=TrainConfig(steps=40, batch_size=20, eval_every=20, patience=0),
                    retrain_rounds=1, retrain_steps=20, update="de",
                    de={"popsize": 6, "tol": 1e-6, "maxiter": 8}, lipschitz_samples=1,
                    lipschitz_iterations=5)
    records = []
    res = run_ama(s, mt, cfg, lab, model_factory=factory, callback=records.append)
    loss = [r["ama_loss"] for r in res.history]
    assert len(loss) == 4 and records == res.history
    assert all(b <= a * (1 + 1e-12) for a, b in zip(loss, loss[1:]))
    for r in res.history[1:]:
        assert r["ama_loss_after_update"] <= res.history[r["iteration"] - 1]["ama_loss"] * (1 + 1e-12)
        assert r["ama_loss"] <= r["ama_loss_after_update"] * (1 + 1e-12)
    assert loss[-1] < loss[0]
    assert res.lipschitz_true.value > 0 and not res.lipschitz_true.fixed
    # same seed, same run
    res2 = run_ama(s, mt, cfg, Labeller(s.problem), model_factory=factory)
    assert [r["ama_loss"] for r in res2.history] == loss


def test_differential_evolution_finds_the_global_minimum_over_omega():
    s, lab, mt, factory = _small("ntd", 8)
    obj = _objective(s, mt, factory(0))
    grid = np.linspace(-4 * math.pi, 4 * math.pi, 401)
    values = np.array([obj.value(float(w)) for w in grid])
    out = de_update(obj, 4 * math.pi, bounds=s.bounds, seed=0, popsize=10, tol=1e-10, maxiter=60)
    # independent check: a dense grid; DE (with polishing) must not be worse than its minimum
    assert obj.value(out["theta"]) <= values.min() + 1e-9
    assert abs(out["theta"] - grid[values.argmin()]) < 2 * (grid[1] - grid[0])


def test_darcy_gradient_goes_through_model_and_solver():
    s, lab, mt, factory = _small("darcy", 8)
    model = factory(0)
    obj = _objective(s, mt, model, n_opt=6)
    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    obj(t).value.backward()
    h = 1e-4
    fd = (obj.value(0.3 + h) - obj.value(0.3 - h)) / (2 * h)
    assert float(t.grad) == pytest.approx(fd, rel=1e-3, abs=1e-8)
    # the solver's share: with the solver output detached the gradient differs
    xi = obj.xi
    t2 = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    u = s.build(t2).from_coefficients(xi)
    from wheretolearn.design.ama_bound import quadrature_norm_sq
    part1 = quadrature_norm_sq(s.problem(u).detach() - model(u).double(), obj.w_out).mean()
    (g_detached,) = torch.autograd.grad(part1, t2)
    u = s.build(torch.tensor(0.3, dtype=torch.float64, requires_grad=True)).from_coefficients(xi)
    # d/dm G*(u + m) = -G*(u + m) exactly (a -> e^m a scales the solution by e^-m)
    uu = u.detach().requires_grad_(True)
    y = s.problem(uu)
    (jv,) = torch.autograd.grad(y, uu, grad_outputs=torch.ones_like(y) * s.output_weights.double())
    assert float(jv.sum()) == pytest.approx(-float((y.detach() * s.output_weights.double()).sum()),
                                            rel=1e-6)
    assert abs(float(g_detached) - float(t.grad)) > 1e-6 * abs(float(t.grad))


def test_adam_update_lowers_J_and_a_too_large_step_is_reverted():
    s, lab, mt, factory = _small("darcy", 8)
    obj = _objective(s, mt, factory(0), n_opt=6)
    j0 = obj.value(0.0)
    good = adam_update(obj, 0.0, lr=0.05, steps=8, rounds=2)
    assert obj.value(good["theta"]) < j0
    bad = adam_update(obj, 0.0, lr=200.0, steps=3, rounds=2)   # jumps far from every Q_j
    assert obj.value(bad["theta"]) <= j0


def test_inflated_lipschitz_keeps_nu_near_the_barycenter():
    """Ablation (paper's third suggested experiment): with L, L' inflated the product
    part2 * part3 dominates J, so the learned mean goes to the minimiser of
    F(m) = sqrt(mean_j (m2(nu_m) + m2(Q_j))) * sqrt(mean_j W2(nu_m, Q_j)^2) -- the W2
    barycenter's mean mean_j m_j pulled slightly towards 0 by the second moment."""
    from wheretolearn.design.ama_bound import w2_squared_to_family

    s, lab, mt, factory = _small("darcy", 8, k=5)
    bary = float(np.mean([p["mean"] for p in mt.params]))
    m2q = torch.stack([q.second_moment() for q in mt.measures])

    def F(m):
        nu = s.build(m)
        return float(torch.sqrt((nu.second_moment() + m2q).mean())
                     * torch.sqrt(w2_squared_to_family(nu, mt.measures).mean()))

    grid = np.linspace(0.0, 1.0, 2001)
    m_star = grid[np.argmin([F(float(m)) for m in grid])]
    model = factory(0)
    found = {}
    for factor in (1.0, 100.0):
        obj = _objective(s, mt, model, n_opt=6, L=0.05 * factor, Lp=1.0 * factor)
        found[factor] = adam_update(obj, 0.0, lr=0.1, steps=100, rounds=1)["theta"]
    assert abs(found[100.0] - m_star) < 0.01
    assert abs(m_star - bary) < 0.1
    assert abs(found[1.0] - m_star) > 2 * abs(found[100.0] - m_star)   # L matters
