"""Bilevel descent of a Gaussian-mixture training distribution (issue 25): the mixture's
adjoint gradient against autograd, K = 1 against the Gaussian run, a bimodal family where a
mixture must beat one Gaussian, step control and floors, initialisation, study and CLI."""

import json
import math
import tomllib

import numpy as np
import pytest
import torch

from wheretolearn.design import (BilevelSchedule, KRRSettings, StepControl, bilevel_descent,
                                 make_metatest, mixture_start)
from wheretolearn.design.bilevel import adjoint_gradient
from wheretolearn.design.bilevel_families import (DIAG_CLAMP, WEIGHT_FLOOR,
                                                  GaussianMixtureFamily)
from wheretolearn.design.evaluation import fit_and_score
from wheretolearn.design.metatest import MetaTest
from wheretolearn.design.bilevel_study import run_bilevel_study
from wheretolearn.measures import (Gaussian, GaussianMixture, Mixture, Uniform,
                                   empirical_gaussians)
from wheretolearn.problems import get_problem

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _kernel(a, b, s):
    return torch.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * s * s))


def _two_component(dtype=F64):
    weights = torch.tensor([0.35, 0.65], dtype=dtype)
    means = torch.tensor([[0.3, -0.2], [-0.5, 0.8]], dtype=dtype)
    trils = torch.tensor([[[0.9, 0.0], [0.4, 1.3]], [[0.6, 0.0], [-0.2, 0.7]]], dtype=dtype)
    return GaussianMixture(weights, means, scale_tril=trils)


@pytest.mark.parametrize("ridge, bandwidth", [(1e-3, 1.0), (1e-2, 0.7)])
def test_mixture_adjoint_gradient_equals_autograd_of_weighted_unrolled_solve(ridge, bandwidth):
    """For one fixed draw the adjoint gradient is the exact gradient of the seen loss of the
    importance-weighted KRR fit, w_i = p_theta'(x_i) / (N p_theta(x_i)), at theta' = theta
    (bilevel module docstring) -- here through the mixture's log-density and its softmax."""
    problem = get_problem("sobol-g", dim=2)
    mt = make_metatest(problem, n_measures=2, n_seen=15, n_unseen=5, seed=0, dtype=F64)
    mix = _two_component()
    x = mix.sample(24, generator=3)
    got = adjoint_gradient(problem, mt, mix, x=x, ridge=ridge, krr=KRRSettings(bandwidth=bandwidth))
    logp0 = mix.log_prob(x)
    params = [torch.log(mix.weights).clone().requires_grad_(True),
              mix.means.clone().requires_grad_(True), mix.scale_trils.clone().requires_grad_(True)]
    n = x.shape[0]
    w = torch.exp(GaussianMixture(torch.softmax(params[0], 0), params[1],
                                  scale_tril=params[2]).log_prob(x) - logp0) / n
    a = torch.linalg.solve(w[:, None] * _kernel(x, x, bandwidth) + ridge * torch.eye(n, dtype=F64),
                           w * problem(x))
    v, yv = mt.seen_x.reshape(-1, 2), mt.seen_y.reshape(-1)
    loss = 0.5 * ((yv - _kernel(v, x, bandwidth) @ a) ** 2).mean()
    ref = torch.autograd.grad(loss, params)
    names = ("logits", "means", "scale_trils")
    scale = max(float(r.abs().max()) for r in ref)
    assert scale > 1e-6 and got.grad_mean is None
    for name, r in zip(names, (ref[0], ref[1], torch.tril(ref[2]))):
        np.testing.assert_allclose(got.grads[name].numpy(), r.numpy(), atol=1e-9 * scale,
                                   rtol=1e-7)
    with pytest.raises(ValueError, match="applies to a Gaussian only"):
        adjoint_gradient(problem, mt, mix, torch.zeros(3, 2, dtype=F64))


def _paired_runs(problem, mt, dim, dtype, **kw):
    init = Gaussian(torch.full((dim,), 0.5, dtype=dtype), torch.eye(dim, dtype=dtype))
    one = GaussianMixture(torch.ones(1, dtype=dtype), init.mean[None],
                          scale_tril=init.scale_tril[None])
    return bilevel_descent(problem, mt, init, **kw), bilevel_descent(problem, mt, one, **kw)


@pytest.mark.parametrize("optimizer, lr", [("sgd", 5e-4), ("sgd", 5e-3), ("adam", 0.05)])
def test_one_component_reproduces_the_gaussian_run_in_float64(optimizer, lr):
    """Same seed, same draws, same steps: trust-region cuts, overshoot shrinks and diagonal
    clamps included (Friedman 1 at 1x and 10x the paper's lr hits all three)."""
    problem = get_problem("friedman1", dim=5)
    mt = make_metatest(problem, n_measures=10, n_seen=60, n_unseen=60, seed=0, dtype=F64)
    g, m = _paired_runs(problem, mt, 5, F64, schedule=BilevelSchedule(n_train=60, steps=40, lr=lr),
                        krr=KRRSettings(bandwidth=3.0), control=StepControl(optimizer=optimizer),
                        generator=3)
    np.testing.assert_allclose([h["seen_error"] for h in m.history],
                               [h["seen_error"] for h in g.history], rtol=1e-9)
    np.testing.assert_allclose([h["unseen_error"] for h in m.history],
                               [h["unseen_error"] for h in g.history], rtol=1e-9)
    np.testing.assert_allclose(m.final.means[0].numpy(), g.final.mean.numpy(), rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(m.final.scale_trils[0].numpy(), g.final.scale_tril.numpy(),
                               rtol=1e-9, atol=1e-12)
    assert m.best_step == g.best_step and m.final.weights.tolist() == [1.0]
    for key in ("clipped_steps", "radius_shrinks", "events", "floors"):
        assert m.collapse[key] == g.collapse[key]
    assert m.options["family"] == "mixture" and g.options["family"] == "gaussian"


def test_one_component_reproduces_the_gaussian_run_in_float32():
    problem = get_problem("sobol-g", dim=2)
    mt = make_metatest(problem, n_measures=10, n_seen=100, n_unseen=100, seed=0)
    g, m = _paired_runs(problem, mt, 2, torch.float32,
                        schedule=BilevelSchedule(n_train=80, steps=60), generator=4)
    assert g.collapse["clipped_steps"] > 0
    np.testing.assert_allclose([h["seen_error"] for h in m.history],
                               [h["seen_error"] for h in g.history], rtol=1e-5)
    np.testing.assert_allclose(m.final.means[0].numpy(), g.final.mean.numpy(), atol=1e-5)


# ------------------------------------------------------------------------ bimodal family
def _bump(x):
    return torch.sin(4 * x[:, 0]) + 0.5 * x[:, 0]


def _bimodal_metatest(seed, n_seen=100, n_unseen=300):
    """Two far-apart Q_j in 1-D, N(-3, 0.25^2) and N(3, 0.25^2): the best training measure
    puts its draws on both and none in between, which no single Gaussian can."""
    g = torch.Generator().manual_seed(seed)
    qs = [Gaussian(torch.tensor([c], dtype=F64), torch.tensor([[0.0625]], dtype=F64))
          for c in (-3.0, 3.0)]
    sx = torch.stack([q.sample(n_seen, generator=g) for q in qs])
    ux = torch.stack([q.sample(n_unseen, generator=g) for q in qs])
    return MetaTest(qs, sx, _bump(sx.reshape(-1, 1)).reshape(2, -1), ux,
                    _bump(ux.reshape(-1, 1)).reshape(2, -1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixture_beats_one_gaussian_when_the_optimum_is_bimodal(seed):
    mt = _bimodal_metatest(seed)
    kw = dict(schedule=BilevelSchedule(n_train=30, steps=150, lr=0.05, eval_unseen=False,
                                       ridge_end=1e-6),
              krr=KRRSettings(bandwidth=0.3), control=StepControl(optimizer="adam"),
              generator=seed)
    # the single Gaussian starts from the family's own moments (mean 0, variance ~9)
    gauss = bilevel_descent(_bump, mt, Gaussian(torch.zeros(1, dtype=F64),
                                                torch.tensor([[9.0]], dtype=F64)), **kw)
    start = mixture_start(mt.seen_x, 2, method="kmeans", generator=seed)
    mix = bilevel_descent(_bump, mt, start, **kw)
    errors = {}
    for name, res in (("gaussian", gauss), ("mixture", mix)):
        errs = [fit_and_score(_bump, mt, res.best.sample(30, generator=100 * seed + r),
                              bandwidth=0.3, ridge=1e-6)[0] for r in range(3)]
        errors[name] = float(np.mean(errs))
    # measured 0.12-0.57 (Gaussian) against 0.017-0.053 (mixture) over seeds 0-4
    assert errors["mixture"] < 0.4 * errors["gaussian"], errors
    means = sorted(mix.best.means[:, 0].tolist())
    assert abs(means[0] + 3) < 0.5 and abs(means[1] - 3) < 0.5
    assert min(mix.best.weights.tolist()) > 0.3


# ------------------------------------------------------------------------ step control
def test_mixture_update_trust_region_logit_cap_and_floors():
    fam = GaussianMixtureFamily(dtype=F64, spread=2.0)
    mix = _two_component()
    state = fam.initial_state(mix)
    w = mix.weights
    # a plain small step is taken as is; its move is the synchronous-coupling W2 bound
    d = (torch.tensor([1e-3, -1e-3], dtype=F64), 1e-3 * torch.ones(2, 2, dtype=F64),
         1e-3 * torch.ones(2, 2, 2, dtype=F64))
    up = fam.update(state, d, 1.0, 0.5)
    lower = torch.ones(2, 2, dtype=F64).tril()
    bound = math.sqrt(float(w @ (d[1].pow(2).sum(1) + (d[2] * lower).pow(2).sum((1, 2)))))
    assert up.move == pytest.approx(bound) and not up.clipped and up.floors == ()
    np.testing.assert_allclose(up.state[1].numpy(), (state[1] - d[1]).numpy())
    # a huge step is cut to the radius (means / factors) and to 2 radius / R (logits)
    big = (torch.tensor([40.0, -40.0], dtype=F64), 50 * torch.ones(2, 2, dtype=F64),
           torch.zeros(2, 2, 2, dtype=F64))
    up = fam.update(state, big, 1.0, 0.5)
    assert up.clipped and up.move == pytest.approx(0.5)
    moved = np.sqrt((w.numpy() * ((up.state[1] - state[1]).numpy() ** 2).sum(1)).sum())
    assert moved == pytest.approx(0.5)
    assert float((up.state[0] - state[0]).abs().max()) == pytest.approx(2 * 0.5 / 2.0)
    # without a trust region: a diagonal pushed below zero is clamped, a dying weight is held
    # at WEIGHT_FLOOR of the largest, and both are reported
    crash = (torch.tensor([-30.0, 30.0], dtype=F64), torch.zeros(2, 2, dtype=F64),
             torch.diag_embed(torch.tensor([[0.0, 5.0], [0.0, 0.0]], dtype=F64)))
    up = fam.update(state, crash, 1.0, None)
    assert set(up.floors) == {"scale_floor", "weight_floor"}
    assert float(up.state[2][0, 1, 1]) == DIAG_CLAMP
    wn = torch.softmax(up.state[0], 0)
    assert float(wn.min() / wn.max()) == pytest.approx(WEIGHT_FLOOR)
    assert torch.equal(state[2], mix.scale_trils)       # the old state is never modified


def test_floors_are_recorded_in_the_run():
    problem = get_problem("friedman1", dim=5)
    mt = make_metatest(problem, n_measures=10, n_seen=60, n_unseen=10, seed=0)
    start = mixture_start(mt.seen_x, 3, method="kmeans", generator=0)
    res = bilevel_descent(problem, mt, start,
                          schedule=BilevelSchedule(n_train=60, steps=30, lr=5e-3,
                                                   eval_unseen=False),
                          krr=KRRSettings(bandwidth=3.0),
                          control=StepControl(max_move=None, backtrack=False), generator=0)
    floors = res.collapse["floors"]
    assert floors["counts"].get("scale_floor", 0) > 0 and floors["first_step"] is not None
    assert bool((torch.diagonal(res.final.scale_trils, dim1=1, dim2=2) > 0).all())
    assert {"weights", "mean"} <= set(res.history[0])


# ------------------------------------------------------------------------ initialisation
def test_mixture_start_methods_and_errors():
    problem = get_problem("sobol-g", dim=2)
    mt = make_metatest(problem, n_measures=3, n_seen=40, n_unseen=5, seed=2, dtype=F64)
    q = mixture_start(mt.seen_x, 3)                       # auto, K = J: the Q_j themselves
    ref = empirical_gaussians(mt.seen_x, dtype=F64)
    for k in range(3):
        np.testing.assert_allclose(q.covs[k].numpy(), ref[k].cov.numpy(), rtol=1e-10)
    np.testing.assert_allclose(q.weights.numpy(), [1 / 3] * 3)
    km = mixture_start(mt.seen_x, 2, generator=5)         # auto, K != J: k-means
    assert km.n_components == 2 and float(km.weights.sum()) == pytest.approx(1.0)
    assert torch.equal(km.means, mixture_start(mt.seen_x, 2, generator=5).means)
    g = Gaussian(torch.tensor([0.5, 0.5], dtype=F64), torch.eye(2, dtype=F64))
    one = mixture_start(mt.seen_x, 1, method="split", start=g)
    assert torch.equal(one.means[0], g.mean) and torch.equal(one.scale_trils[0], g.scale_tril)
    split = mixture_start(mt.seen_x, 4, method="split", start=g, generator=1)
    np.testing.assert_allclose(split.covs.numpy(), 0.75 * np.eye(2)[None].repeat(4, 0))
    with pytest.raises(ValueError, match="needs components = 3, got 2"):
        mixture_start(mt.seen_x, 2, method="metatest")
    with pytest.raises(ValueError, match="at most the 120 pooled seen samples"):
        mixture_start(mt.seen_x, 121, method="kmeans")
    with pytest.raises(ValueError, match="components must be a positive integer"):
        mixture_start(mt.seen_x, 0)
    with pytest.raises(ValueError, match="needs the start Gaussian"):
        mixture_start(mt.seen_x, 2, method="split")
    with pytest.raises(ValueError, match="n_train is 2"):
        bilevel_descent(problem, mt, q, schedule=BilevelSchedule(n_train=2, steps=1))
    with pytest.raises(ValueError, match="init must be one of Gaussian, GaussianMixture"):
        bilevel_descent(problem, mt, Mixture([Uniform(torch.zeros(2), torch.ones(2))]),
                        schedule=BilevelSchedule(steps=1))
    with pytest.raises(ValueError, match="needs a positive weight"):
        bilevel_descent(problem, mt, GaussianMixture(torch.tensor([1.0, 0.0]), torch.zeros(2, 2),
                                                     torch.eye(2).expand(2, 2, 2)),
                        schedule=BilevelSchedule(steps=1))
    with pytest.raises(ValueError, match="GaussianMixture of dimension 2"):
        bilevel_descent(problem, mt, GaussianMixture(torch.ones(1), torch.zeros(1, 3),
                                                     torch.eye(3)[None]),
                        schedule=BilevelSchedule(steps=1))


# ------------------------------------------------------------------------ study and CLI
TINY = dict(problem="sobol-g", dim=2, n_train=24, steps=4, eval_n=[16, 32], repeats=1,
            n_measures=3, n_seen=30, n_unseen=60, seed=1, baselines=["normal", "mixture"])


def test_mixture_study_records_family_and_reloads(tmp_path):
    import wheretolearn as wtl

    out = tmp_path / "run"
    run_bilevel_study({**TINY, "family": "mixture", "components": 2}, out, progress=False)
    cfg = tomllib.loads((out / "config.toml").read_text())
    assert (cfg["family"], cfg["components"], cfg["mixture_init"]) == ("mixture", 2, "auto")
    written = json.loads((out / "summary.json").read_text())
    assert (written["family"], written["components"]) == ("mixture", 2)
    learned = written["learned"]
    assert len(learned["weights"]) == 2 and np.array(learned["covs"]).shape == (2, 2, 2)
    assert sum(learned["weights"]) == pytest.approx(1.0)
    assert len(written["initial"]["weights"]) == 2
    assert (out / "figures" / "covariances.png").read_bytes()[:4] == b"\x89PNG"
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(steps[0]["weights"]) == 2
    # load_model: the recorded training set (N = 32) and a refit at another N from the
    # learned mixture in summary.json
    from wheretolearn.design.bilevel_study import final_training_inputs, read_training_record

    model = wtl.load_model(out)
    rec = read_training_record(out / "model.pt")
    assert rec["n"] == 32 and torch.equal(model.x_train_, rec["x"])
    x16 = final_training_inputs(learned, 16, seed=1)
    refit = wtl.load_model(out, n=16, trust=True)
    assert torch.equal(refit.x_train_, x16)
    # ... the draws the evaluation fitted for "optimized" at N = 16 (rebuilt from summary.json)
    problem = get_problem("sobol-g", dim=2)
    mt = make_metatest(problem, n_measures=3, n_seen=30, n_unseen=60, seed=1)
    err, _ = fit_and_score(problem, mt, x16, bandwidth=1.0, ridge=1e-7)
    assert written["baselines"]["optimized"]["16"] == pytest.approx(err, rel=1e-4)
    assert torch.isfinite(torch.as_tensor(model.predict(torch.rand(5, 2, dtype=F64)))).all()
    # default K: one component per meta-test measure, started from them
    d = run_bilevel_study({**TINY, "family": "mixture", "steps": 1, "eval_n": [16],
                           "baselines": []}, tmp_path / "d", progress=False).summary
    assert d["components"] == 3 and d["mixture_init"] == "auto"
    gauss = run_bilevel_study({**TINY, "steps": 1, "eval_n": [16], "baselines": []},
                              tmp_path / "g", progress=False).summary
    assert gauss["family"] == "gaussian" and gauss["components"] is None
    assert set(gauss["learned"]) == {"mean", "cov"}


@pytest.mark.parametrize("bad, match", [
    ({"components": 2}, "applies to family = 'mixture' only"),
    ({"family": "mixture", "components": 0}, "positive integer"),
    ({"family": "mixture", "components": 25}, "at most n_train = 24"),
    ({"family": "mixture", "components": 2, "mixture_init": "metatest"}, "needs components = 3"),
    ({"family": "particle"}, "family"),
])
def test_mixture_config_errors(bad, match):
    from pydantic import ValidationError

    from wheretolearn.design.bilevel_study import BilevelStudyConfig

    with pytest.raises(ValidationError, match=match):
        BilevelStudyConfig(**{**TINY, **bad})


def test_cli_family_flags(tmp_path):
    from typer.testing import CliRunner

    from wheretolearn.cli import app

    cfg = tmp_path / "tiny.toml"
    cfg.write_text("n_train = 20\nsteps = 2\neval_n = [16]\nrepeats = 1\nn_measures = 2\n"
                   "n_seen = 30\nn_unseen = 60\nbaselines = ['normal']\n")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["bilevel", "--problem", "sobol-g", "--config", str(cfg),
                                   "--family", "mixture", "--components", "3",
                                   "--mixture-init", "kmeans", "--out", str(out),
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "mixture K=3" in res.output
    s = json.loads((out / "summary.json").read_text())
    assert (s["family"], s["components"], s["mixture_init"]) == ("mixture", 3, "kmeans")
    bad = CliRunner().invoke(app, ["bilevel", "--problem", "sobol-g", "--config", str(cfg),
                                   "--components", "3", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "components applies to family = 'mixture' only" in bad.output
