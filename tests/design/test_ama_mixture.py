"""The mixture training family of AMA (issue 21): ``nu(theta) = (1/K) sum_k nu_k(theta_k)``
started at the ``Q_j``'s own parameters."""

import math

import numpy as np
import pytest
import torch

from wheretolearn.design.ama import AMAConfig, AMAObjective, run_ama
from wheretolearn.design.ama_bound import w2_squared_to_family
from wheretolearn.design.ama_problems import MixtureField, ama_setup, mixture_setup
from wheretolearn.design.labelling import Labeller
from wheretolearn.design.operator_metatest import MetaTestDraws, make_operator_metatest
from wheretolearn.measures import Mixture
from wheretolearn.models import DeepONet, TrainConfig

from ama_small import small_ama


def _mixture(name, n=8, k=4):
    return small_ama(name, n, k, prepare=True, family="mixture")


@pytest.mark.parametrize("name", ["ntd", "darcy"])
def test_the_initial_mixture_is_the_mixture_of_the_metatest_measures(name):
    s, lab, mt, _ = _mixture(name, k=5)
    nu = s.build(s.theta0)
    assert isinstance(nu, MixtureField) and nu.n_components == 5
    assert len(s.theta0) == 5 * 4 and len(s.parameter) == 20
    # component k on its rows is Q_k itself: the same latent draws give the same samples
    xi = nu.sample_coefficients(23, torch.Generator().manual_seed(1))
    u = nu.from_coefficients(xi)
    for k, q in enumerate(mt.measures):
        ref = q.from_coefficients(xi[k::5]).double()
        torch.testing.assert_close(u[k::5], ref, rtol=1e-10, atol=1e-10)
    # moments: m2 is the mixture's exactly, and the empirical mean / m2 agree
    mix = Mixture(mt.measures)
    assert float(nu.second_moment()) == pytest.approx(float(mix.second_moment()), rel=1e-12)
    big = nu.sample(5 * 3000, generator=0)
    w = s.input_weights.double().reshape(1, -1)
    m2_emp = float((w * big.reshape(len(big), -1) ** 2).sum(1).mean())
    assert m2_emp == pytest.approx(float(mix.second_moment()), rel=0.05)
    mean_emp = big.mean(0)
    mean_mix = torch.stack([q.sample(3000, generator=k).double().mean(0)
                            for k, q in enumerate(mt.measures)]).mean(0)
    assert float((w * (mean_emp - mean_mix).reshape(1, -1) ** 2).sum()) < 0.01 * m2_emp


def test_w2_is_the_mixture_coupling_upper_bound():
    s, lab, mt, _ = _mixture("ntd", k=4)
    nu = s.build(s.theta0)
    w2 = w2_squared_to_family(nu, mt.measures)
    per = torch.stack([torch.stack([c.w2_squared_to(q) for q in mt.measures])
                       for c in nu.components])                 # (K, J)
    torch.testing.assert_close(w2, per.mean(0))
    # each component sits on its own Q_j: the bound at Q_j is (1/K) sum_k W2(Q_k, Q_j)^2
    assert torch.all(torch.diagonal(per).abs() < 1e-20)
    # a one-component mixture is its component (closed form, no slack)
    one = MixtureField([nu.components[0]])
    torch.testing.assert_close(w2_squared_to_family(one, mt.measures), per[0])


@pytest.mark.parametrize("name", ["ntd", "darcy"])
def test_the_gradient_of_J_matches_finite_differences(name):
    s, lab, mt, factory = _mixture(name, k=3)
    model = factory(0)
    xi = s.build(s.theta0).sample_coefficients(9, torch.Generator().manual_seed(0))
    obj = AMAObjective(s, mt, model, xi, 0.5, 1.0, s.g0_true_sq())
    theta = torch.tensor(s.theta0, dtype=torch.float64) + 0.05
    t = theta.clone().requires_grad_(True)
    obj(t).value.backward()
    h = 1e-3                                     # the model is float32: a larger step
    for i in (0, 1, 2, 3, 5, 10):                         # location and spectrum, 3 components
        e = torch.zeros_like(theta)
        e[i] = h
        fd = (obj.value(theta + e) - obj.value(theta - e)) / (2 * h)
        assert float(t.grad[i]) == pytest.approx(fd, rel=3e-3, abs=2e-4), i


@pytest.mark.parametrize("bound", ["component", "coupling"])
def test_a_tiny_mixture_ama_run_has_a_monotone_J(bound):
    s = ama_setup("ntd", n=8, family="mixture", mixture_bound=bound)
    lab = Labeller(s.problem)
    ms, ps = s.family(4, 0)
    mt = make_operator_metatest(lab, ms, MetaTestDraws(3, 4), params=ps,
                                output_weights=s.output_weights)

    def factory(seed):
        return DeepONet([s.branch[0], 32, 16], [2, 32, 16], s.points,
                        output_shape=s.problem.output_shape, seed=seed)

    cfg = AMAConfig(n_train=40, iterations=3, n_opt=16,
                    train=TrainConfig(steps=40, batch_size=20, eval_every=20, patience=0),
                    retrain_rounds=1, retrain_steps=20, update="adam",
                    adam={"lr": 0.05, "steps": 5, "rounds": 2}, lipschitz_samples=1,
                    lipschitz_iterations=5)
    res = run_ama(s, mt, cfg, lab, model_factory=factory)
    loss = [r["ama_loss"] for r in res.history]
    assert all(b <= a * (1 + 1e-12) for a, b in zip(loss, loss[1:]))
    assert len(res.theta) == 16 and isinstance(res.learned, MixtureField)
    assert res.learned.to_dict()["kind"] == "spectrum_mixture"
    assert res.learned.bound == bound
    h0 = res.history[0]
    if bound == "component":
        # every component sits on its Q_j: W2 = 0, J = part1, and any move costs
        # part2 * W2 > the part1 it could save -- the mixture of the Q_j is kept
        assert h0["part3"] < 1e-12 and h0["ama_loss"] == pytest.approx(h0["part1"])
        assert res.theta == pytest.approx(s.theta0) and "theta_tol" in res.stop_reason
    else:
        # the whole-mixture coupling bound pulls the components together
        assert h0["part3"] > 0.1 and loss[-1] < loss[0]


def test_mixture_family_options_are_checked():
    from wheretolearn.design.ama_study import resolve_ama_config

    cfg = resolve_ama_config({"problem": "ntd", "family": "mixture"})
    assert cfg.family == "mixture"
    with pytest.raises(ValueError, match="Adam"):
        resolve_ama_config({"problem": "ntd", "family": "mixture", "update": "de"})
    with pytest.raises(ValueError):
        resolve_ama_config({"problem": "ntd", "family": "both"})
    with pytest.raises(ValueError, match="family"):
        ama_setup("ntd", n=8, family="both")
    with pytest.raises(ValueError, match="mixture family"):
        mixture_setup(ama_setup("ntd", n=8).__class__(**{
            **ama_setup("ntd", n=8).__dict__, "component_theta": None}))
    # Darcy's mixture components carry no random offset (the Q_j have none)
    s = ama_setup("darcy", n=8, family="mixture")
    assert s.state["offset_sd"] == 0.0 and s.update == "adam" and s.bounds is None
    assert math.isfinite(float(np.sum(s.single.theta0)))


def test_the_cli_refuses_an_unknown_family(tmp_path):
    from typer.testing import CliRunner

    from wheretolearn.cli import app

    res = CliRunner().invoke(app, ["ama", "--problem", "ntd", "--family", "both", "--out",
                                   str(tmp_path / "x"), "--no-progress"])
    assert res.exit_code == 2 and "--family must be single or mixture" in res.output
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="built-in"):
        ama_setup("tests.design.user_field_problem:make_smoother", family="mixture")


def test_a_tiny_cli_study_with_the_mixture_family(tmp_path):
    import json

    from typer.testing import CliRunner

    from wheretolearn.cli import app

    cfg = tmp_path / "tiny.toml"
    cfg.write_text("\n".join([
        'problem = "darcy"', "n = 6", "n_measures = 3", "n_seen = 2", "n_unseen = 3",
        "n_train = 12", "n_opt = 6", "iterations = 1", "steps = 20", "batch_size = 6",
        "eval_every = 10", "retrain_rounds = 0", "eval_n = [9]", "repeats = 1",
        "lipschitz_samples = 1", "lipschitz_iterations = 3", "branch_hidden = [8]",
        "trunk_hidden = [8]", "width = 4", "adam = {lr = 0.05, steps = 2, rounds = 1}"]) + "\n")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["ama", "--config", str(cfg), "--family", "mixture", "--out",
                                   str(out), "--no-progress", "--num-threads", "1"])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert s["family"] == "mixture" and s["mixture_bound"] == "component"
    assert len(s["parameter"]) == 12 and s["parameter"][:2] == ["mean_0", "log_sigma_0"]
    assert s["learned"]["measures"][0]["kind"] == "spectrum_mixture"
    assert s["ama_loss_monotone"] and s["family_options"]["n_components"] == 3
    assert set(s["baselines"]) == {"learned", "initial", "barycenter", "mixture"}


def test_the_component_bound_by_hand():
    """J of the component bound: each Q_j through the component with the smallest pair
    bound p1_k + c_jk W2_jk, then Cauchy-Schwarz over j (>= the mean of the pair bounds)."""
    from wheretolearn.design.ama_bound import BoundConstants, mixture_component_bound

    g = torch.Generator().manual_seed(3)
    K, J, per = 3, 5, 4
    errors = torch.rand(K * per, generator=g, dtype=torch.float64)
    comp = torch.arange(K * per) % K
    m2c = torch.rand(K, generator=g, dtype=torch.float64) + 1
    m2q = torch.rand(J, generator=g, dtype=torch.float64) + 1
    w2 = torch.rand(K, J, generator=g, dtype=torch.float64)
    L, Lp, g0, g0m = 0.3, 0.7, 0.2, 0.1
    b = mixture_component_bound(errors, comp, m2_components=m2c, m2_family=m2q, w2sq=w2,
                                constants=BoundConstants(L, Lp, g0_true_sq=g0, g0_model_sq=g0m))
    p1 = torch.stack([errors[comp == k].mean() for k in range(K)])
    s = (L + Lp) ** 2
    c = torch.sqrt(s * (4 * s * (m2c[:, None] + m2q[None, :]) + 16 * (g0 + g0m)))
    pair = p1[:, None] + c * torch.sqrt(w2)
    k = pair.argmin(0)
    j = torch.arange(J)
    want = p1[k].mean() + torch.sqrt((c[k, j] ** 2).mean()) * torch.sqrt(w2[k, j].mean())
    assert float(b.value) == pytest.approx(float(want), rel=1e-12)
    assert float(b.value) >= float(pair.min(0).values.mean()) - 1e-12
