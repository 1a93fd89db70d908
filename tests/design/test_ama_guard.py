"""Issue 21: the Darcy shift identity, the vector-theta gradient, the guard, the stop rule and
the retrain rule (tiny sizes)."""

import copy

import numpy as np
import pytest
import torch

from wheretolearn.design.ama import AMAConfig, AMAObjective, retrain, run_ama
from wheretolearn.design.ama_problems import ama_setup, barycenter_field
from wheretolearn.design.ama_study import recommend
from wheretolearn.design.labelling import Labeller
from wheretolearn.models import TrainConfig
from wheretolearn.models.operator_training import TrainResult

from ama_small import small_ama


def _small(name, n, k=4, dtype="float32", **options):
    return small_ama(name, n, k, dtype, **options)


def test_darcy_shift_identity_matches_the_solver():
    s, _, _, _ = _small("darcy", 10, offset_sd=0.3)
    nu = s.build([0.4, 0.5, 1.2, 0.8])
    xi = nu.sample_coefficients(5, torch.Generator().manual_seed(1))
    fast = s.truth(nu, xi)
    slow = s.problem(nu.from_coefficients(xi))
    assert torch.allclose(fast, slow, rtol=1e-10, atol=1e-13)
    # moving the mean reuses the cached solves of the KLE parts: still exact
    nu2 = s.build([-0.7, 0.5, 1.2, 0.8])
    assert torch.allclose(s.truth(nu2, xi), s.problem(nu2.from_coefficients(xi)), rtol=1e-10,
                          atol=1e-13)


@pytest.mark.parametrize("name, n, theta", [("ntd", 8, [2.0, 1.4, 1.0, 0.6]),
                                            ("darcy", 8, [0.3, 1.0, 1.1, 0.7])])

def test_vector_theta_gradient_matches_finite_differences_of_J(name, n, theta):
    extra = {"offset_sd": 0.2} if name == "darcy" else {}
    s, _, mt, factory = _small(name, n, dtype="float64", **extra)   # float64: clean differences
    xi = s.build(theta).sample_coefficients(6, torch.Generator().manual_seed(0))
    obj = AMAObjective(s, mt, factory(0), xi, 0.5, 1.0, s.g0_true_sq(), g0_model_sq=0.01)
    t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    obj(t).value.backward()
    h = 1e-5
    for i in range(len(theta)):
        up, down = list(theta), list(theta)
        up[i] += h
        down[i] -= h
        fd = (obj.value(up) - obj.value(down)) / (2 * h)
        assert float(t.grad[i]) == pytest.approx(fd, rel=1e-4, abs=1e-7)
    assert all(abs(float(v)) > 0 for v in t.grad)           # every component is seen


def test_the_guard_recommends_the_best_seen_error_and_not_a_worse_learned_nu():
    seen = {"learned": [0.30, 0.32, 0.31], "initial": [0.5, 0.6, 0.55],
            "barycenter": [0.12, 0.13, 0.11], "mixture": [0.10, 0.09, 0.11]}
    unseen = {k: [v + 0.01 for v in vals] for k, vals in seen.items()}
    rec = recommend(seen, unseen)
    assert rec["source"] == "mixture" and rec["runner_up"] == "barycenter"
    assert rec["margin"] == pytest.approx(0.12 - 0.10)
    assert rec["learned_minus_best"] == pytest.approx(0.31 - 0.10)
    assert rec["unseen_error"] == pytest.approx(0.11)
    assert recommend({"learned": [0.05], "mixture": [0.1]})["source"] == "learned"


def test_barycenter_field_is_the_w2_barycenter():
    s, _, mt, _ = _small("darcy", 8, k=3)
    bary = barycenter_field(s.basis, mt.measures)
    assert float(bary.mean) == pytest.approx(np.mean([p["mean"] for p in mt.params]))
    sq = torch.stack([q.sqrt_eigenvalues for q in mt.measures]).mean(0)
    assert torch.allclose(bary.sqrt_eigenvalues, sq)


def _cfg(**kw):
    base = dict(n_train=30, iterations=3, n_opt=8,
                train=TrainConfig(steps=30, batch_size=15, eval_every=10, patience=0),
                retrain_rounds=1, retrain_steps=10, update="adam",
                adam={"lr": 0.05, "steps": 3, "rounds": 1}, lipschitz_samples=1,
                lipschitz_iterations=3)
    base.update(kw)
    return AMAConfig(**base)


def test_stop_rule_ends_the_loop_when_theta_stops_moving():
    s, lab, mt, factory = _small("darcy", 8, k=3)
    res = run_ama(s, mt, _cfg(theta_tol=10.0), lab, model_factory=factory)
    assert len(res.history) == 1 and "theta_tol" in res.stop_reason
    res = run_ama(s, mt, _cfg(theta_tol=0.0), Labeller(s.problem), model_factory=factory)
    assert len(res.history) == 4 and res.stop_reason == "iterations"
    steps = [r["theta_step"] for r in res.history[1:]]
    assert sum(v > 0 for v in steps) >= 2                       # theta moves more than once
    loss = [r["ama_loss"] for r in res.history]
    assert all(b <= a * (1 + 1e-12) for a, b in zip(loss, loss[1:]))


class _Fake(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))


def _trainer(model, losses):
    """A stand-in for train_operator: sets the weight and reports the scripted losses."""
    calls = iter(losses)

    def train(steps=None):
        before, after = next(calls)
        with torch.no_grad():
            model.w += 1.0
        return TrainResult(best_val_loss=after, best_step=1, steps=steps or 5, seconds=0.0,
                           initial_val_loss=before)

    return train


def test_retrain_keeps_an_improvement_and_reverts_otherwise():
    model = _Fake()
    out = retrain(model, _trainer(model, [(0.5, 0.4)]), rounds=2, retrain_steps=3)
    assert out["train_accepted"] and model.w.item() == 1.0 and out["retrain_rounds"] == 0
    model = _Fake()
    losses = [(0.5, 0.6), (0.6, 0.55), (0.55, 0.52)]
    out = retrain(model, _trainer(model, losses), rounds=2, retrain_steps=3)
    assert not out["train_accepted"] and model.w.item() == 0.0 and out["retrain_rounds"] == 2
    model = _Fake()
    out = retrain(model, _trainer(model, [(0.5, 0.6), (0.6, 0.45)]), rounds=2, retrain_steps=3)
    assert out["train_accepted"] and out["retrain_rounds"] == 1 and out["val_loss"] == 0.45


def test_warm_training_never_restores_the_starting_weights():
    from wheretolearn.models import train_operator

    s, lab, mt, factory = _small("ntd", 8, k=2)
    model = factory(0)
    x, y = lab.label(s.build(s.theta0), 20, 0)
    train_operator(model, x, y, config=TrainConfig(steps=20, batch_size=10, eval_every=10,
                                                   patience=0), weights=s.output_weights)
    start = copy.deepcopy(model.state_dict())
    x2, y2 = lab.label(s.build([0.0, 1.0, 1.0, 0.7]), 20, 1)
    res = train_operator(model, x2, y2, config=TrainConfig(steps=10, lr=1e-6, batch_size=10,
                                                           eval_every=10, patience=0),
                         weights=s.output_weights)
    assert np.isfinite(res.initial_val_loss) and res.best_step == 10
    assert any(not torch.equal(start[k], v) for k, v in model.state_dict().items())


def test_darcy_linearisation_factors_once_and_matches_autograd():
    from wheretolearn.design.ama_bound import LipschitzOptions, estimate_lipschitz

    s = ama_setup("darcy", n=10)
    x = s.build(s.theta0).sample(2, generator=0).double()
    jvp, vjp = s.problem.linearise(x)
    g = torch.Generator().manual_seed(0)
    v, w = torch.randn(x.shape, generator=g, dtype=x.dtype), torch.randn(x.shape, generator=g,
                                                                            dtype=x.dtype)
    h = 1e-6
    fd = (s.problem(x + h * v) - s.problem(x - h * v)) / (2 * h)
    assert torch.allclose(jvp(v), fd, rtol=1e-5, atol=1e-9 * float(fd.abs().max()))
    xr = x.clone().requires_grad_(True)
    (back,) = torch.autograd.grad(s.problem(xr), xr, grad_outputs=w)
    assert torch.allclose(vjp(w), back, rtol=1e-10, atol=1e-14)
    kw = {"input_weights": s.input_weights.double(),
          "output_weights": s.output_weights.double(), "generator": 0}
    a = estimate_lipschitz(s.problem, x, options=LipschitzOptions(10, jvp="fd"), **kw).max_norm
    b = estimate_lipschitz(s.problem, x, options=LipschitzOptions(10, jvp="linearised"),
                           **kw).max_norm
    assert b == pytest.approx(a, rel=1e-6)
