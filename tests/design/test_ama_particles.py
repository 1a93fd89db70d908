"""Particle AMA on radiative transport (issue 22): the first-variation gradient against finite
differences of J, the step control of the Wasserstein gradient flow, the labelled inputs
being the particles themselves, and the W2 part against POT."""

import math

import numpy as np
import ot
import pytest
import torch

from wheretolearn.design.ama import AMAConfig, AMAObjective, run_ama
from wheretolearn.design.ama_particles import check_flow, particle_flow_update
from wheretolearn.design.ama_problems import ama_setup, prepare_setup
from wheretolearn.design.labelling import Labeller
from wheretolearn.design.operator_metatest import MetaTestDraws, make_operator_metatest
from wheretolearn.measures import FieldParticles
from wheretolearn.models import DeepONet
from wheretolearn.models.operator_training import TrainConfig


def tiny(start="mixture", m=6, knudsen=2.0):
    """A 9 x 9 grid, 3 x 3 modes, ``m`` particles, the K = 3 meta-test (float64 model)."""
    s = ama_setup("radiative", n=9, n_modes=3, n_particles=m, particle_start=start,
                  knudsen=knudsen)
    lab = Labeller(s.problem)
    ms, ps = s.family(3, 0)
    mt = make_operator_metatest(lab, ms, MetaTestDraws(2, 3), params=ps,
                                output_weights=s.output_weights)
    s = prepare_setup(s, mt)

    def factory(seed):
        return DeepONet([81, 16], [2, 16], s.points, output_shape=(9, 9), seed=seed,
                        dtype="float64")

    return s, lab, mt, factory


def objective(s, mt, model):
    return AMAObjective(s, mt, model, None, 1.0, 1.0, s.g0_true_sq(), 0.01)


def test_first_variation_gradient_matches_finite_differences_of_j():
    s, _, mt, factory = tiny()
    obj = objective(s, mt, factory(0))
    c = s.theta0.clone().requires_grad_(True)
    bound = obj(c)
    assert float(bound.part1.detach()) > 0 and float(bound.part3.detach()) > 0  # all active
    (g,) = torch.autograd.grad(bound.value, c)
    d = torch.randn(c.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h = 1e-5
    fd = (obj.value(c.detach() + h * d) - obj.value(c.detach() - h * d)) / (2 * h)
    assert float((g * d).sum()) == pytest.approx(fd, rel=1e-5)
    # the flow's direction is M times dJ/dc (the gradient of the first variation)
    out = particle_flow_update(obj, s.theta0, eta=1e-12, tol=0.0, max_steps=1)
    assert out["flow"]["grad_norm"] == pytest.approx(6 * float(g.norm()), rel=1e-10)


def test_step_control_keeps_j_non_increasing_and_carries_eta_over():
    s, _, mt, factory = tiny(start="paper")
    obj = objective(s, mt, factory(0))
    state = {}
    out = particle_flow_update(obj, s.theta0, state=state, eta=10.0, shrink="divide",
                               tol=1e-12, max_steps=6)
    f = out["flow"]
    traj = f["j_trajectory"]
    assert all(b <= a for a, b in zip(traj, traj[1:]))
    assert out["j"] == traj[-1] == pytest.approx(obj.value(out["theta"]), rel=1e-12)
    assert f["rejected"] >= 1 and f["accepted"] >= 1               # eta = 10 is far too big
    assert f["eta"] == pytest.approx(10.0 / 10 ** f["rejected"]) and state["eta"] == f["eta"]
    # the next call starts from the carried-over step (the initial eta is ignored)
    again = particle_flow_update(obj, out["theta"], state=state, eta=10.0, tol=1e-12,
                                 max_steps=2)
    assert again["flow"]["eta"] <= f["eta"] and again["j"] <= out["j"]
    halved = particle_flow_update(obj, s.theta0, state={}, eta=10.0, shrink="halve", tol=1e-12,
                                  max_steps=3)
    assert halved["flow"]["eta"] == pytest.approx(10.0 / 2 ** halved["flow"]["rejected"])
    # a tiny step stops the flow at once
    stopped = particle_flow_update(obj, s.theta0, state={}, eta=1e-20, tol=1e-6, max_steps=5)
    assert stopped["flow"]["steps"] == 0 and "tol" in stopped["flow"]["stop"]
    assert torch.equal(stopped["theta"], s.theta0)


def test_flow_options_are_checked():
    assert check_flow({})["shrink"] == "divide"
    with pytest.raises(ValueError, match="shrink must be one of divide, halve"):
        check_flow({"shrink": "third"})
    with pytest.raises(ValueError, match="unknown flow option 'lr'"):
        check_flow({"lr": 1.0})


def test_w2_part_matches_pot_emd2():
    s, _, mt, _ = tiny()
    nu = s.build(s.theta0)
    q = mt.measures[1]
    w2 = float(nu.w2_squared_to(q))
    y = nu.reference(q).numpy().reshape(6, -1)            # the fixed samples of Q
    a = nu.fields().numpy().reshape(6, -1)
    w = s.output_weights.double().numpy().reshape(-1)
    cost = ((a[:, None, :] - y[None, :, :]) ** 2 * w).sum(-1)
    assert w2 == pytest.approx(ot.emd2(np.full(6, 1 / 6), np.full(6, 1 / 6), cost), rel=1e-12)
    # the same samples at every call (J is deterministic)
    assert torch.equal(nu.reference(q), s.build(s.theta0).reference(q))


def test_second_moments_about_a_equals_one():
    s, _, mt, _ = tiny()
    q = mt.measures[2]
    x = q.sample(20000, generator=0).double()
    w = s.output_weights.double()
    mc = float(((x - 1) ** 2 * w).reshape(x.shape[0], -1).sum(1).mean())
    assert float(q.second_moment()) == pytest.approx(mc, rel=0.02)
    nu = s.build(s.theta0)
    direct = ((nu.fields() - 1) ** 2 * w).reshape(6, -1).sum(1).mean()
    assert float(nu.second_moment()) == pytest.approx(float(direct), rel=1e-12)
    assert s.g0_true_sq() > 0                   # G*(a = 1): the density is not zero


def test_mixture_start_is_samples_of_every_q():
    s, _, mt, _ = tiny(m=9)
    c = s.theta0
    basis_mean = [float(q.log_field.mean_field().double().mean()) for q in mt.measures]
    assert c.shape == (9, 9)
    # particle i is drawn from Q_{i mod 3}: its spread grows with sigma_k = 1, 2, 3
    spread = [float((c[k::3] - c[k::3].mean(0)).pow(2).sum(1).mean()) for k in range(3)]
    assert spread[0] < spread[2] and np.isfinite(basis_mean).all()
    paper = ama_setup("radiative", n=9, n_modes=3, n_particles=9).theta0
    assert float(paper.abs().max()) < 1e-2                    # 1e-3 N(0, I)


def test_run_ama_labels_exactly_the_particles_and_j_does_not_rise():
    s, lab, mt, factory = tiny()
    cfg = AMAConfig(n_train=6, iterations=2, n_opt=6, update="particles",
                    train=TrainConfig(steps=30, batch_size=6, eval_every=10, val_fraction=0.34),
                    retrain_rounds=0, retrain_steps=10, lipschitz_true=1.0, lipschitz_model=1.0,
                    flow={"eta": 1e-2, "max_steps": 2, "tol": 1e-12}, theta_tol=0.0)
    res = run_ama(s, mt, cfg, lab, model_factory=factory)
    for rec in res.history[1:]:
        assert rec["ama_loss_after_update"] <= res.history[rec["iteration"] - 1]["ama_loss"]
        traj = rec["flow"]["j_trajectory"]
        assert all(b <= a for a, b in zip(traj, traj[1:]))
        assert rec["theta"]["kind"] == "field_particles" and rec["theta"]["M"] == 6
    # eta carried over: iteration 2 starts where iteration 1 ended
    etas = [rec["flow"]["eta"] for rec in res.history[1:]]
    assert etas[1] <= etas[0] <= 1e-2
    # the last training set is the learned particles' fields, in order (no resampling)
    learned = FieldParticles(res.learned.basis, res.theta).fields()
    x, _ = lab.label(res.learned, 6, 10_000 + cfg.seed)
    assert torch.allclose(x.double(), learned, rtol=1e-6, atol=0)
    assert len({tuple(r[1:-1, 1:-1].reshape(-1).tolist()) for r in x}) == 6   # no repeats
    assert not math.isnan(res.history[-1]["ood_error"])
