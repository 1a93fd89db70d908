"""AMA sees the DeepONet as the user calls it (issue 26): the Lipschitz estimate ``L'`` and
``||G(0)||`` are those of the normalised map, and warm retraining keeps the statistics."""

from types import SimpleNamespace

import pytest
import torch

from wheretolearn.design.ama import AMAConfig, AMAObjective, _constants, run_ama
from wheretolearn.design.ama_bound import quadrature_norm_sq
from wheretolearn.models import DeepONet, TrainConfig

from ama_small import small_ama

STATS = ("in_mean", "in_std", "out_mean", "out_std")


def _fitted(s, lab, factory):
    model = factory(0)
    x, y = lab.label(s.build(s.theta0), 30, 0)
    model.fit_normalization(x, y)
    assert float((model.out_std - 1).abs().min()) > 0.5      # far from the identity
    return model, x


def _plain_copy(model):
    """The same weights without the statistics (normalize=False)."""
    plain = DeepONet(model.config["branch"], model.config["trunk"], model.points.numpy(),
                     output_shape=model.output_shape, dtype="float64", normalize=False)
    plain.load_state_dict(model.state_dict())
    return plain


def _exact_operator_norm(fn, u, w_in, w_out):
    """``||W_out^1/2 J(u) W_in^-1/2||_2`` from the explicit Jacobian (SVD)."""
    jac = torch.autograd.functional.jacobian(lambda v: fn(v[None])[0].double(), u)
    jac = jac.reshape(w_out.numel(), w_in.numel())
    k = w_out.reshape(-1, 1).sqrt() * jac * w_in.reshape(1, -1).rsqrt()
    return float(torch.linalg.matrix_norm(k, 2))


def test_lipschitz_estimate_and_g0_are_those_of_the_normalised_map():
    s, lab, mt, factory = small_ama("darcy", 8, dtype="float64")
    model, x = _fitted(s, lab, factory)
    cfg = SimpleNamespace(lipschitz_samples=1, lipschitz_true=1.0, lipschitz_model="auto",
                          lipschitz_iterations=80, safety=1.0, seed=0)
    _, lip = _constants(s, mt, model, x, cfg)
    samples = torch.cat([x[:1]] + [mt.seen_x[j, :1] for j in range(mt.n_measures)]).double()
    w_in, w_out = s.input_weights.double(), s.output_weights.double()
    exact = max(_exact_operator_norm(model, u, w_in, w_out) for u in samples)
    assert lip.n_samples == samples.shape[0]
    assert lip.max_norm == pytest.approx(exact, rel=1e-3)
    plain = _plain_copy(model)
    exact_plain = max(_exact_operator_norm(plain, u, w_in, w_out) for u in samples)
    assert abs(exact_plain / exact - 1) > 0.2           # the statistics matter here

    obj = AMAObjective(s, mt, model, None, 1.0, 1.0, s.g0_true_sq())
    zero = torch.zeros(1, 64, dtype=torch.float64)
    # independent: standardise -> nets -> destandardise written out
    with torch.no_grad():
        z = (model.branch((zero - model.in_mean) / model.in_std) @ model.trunk(model.points).T
             + model.bias)
        g0 = (w_out.reshape(1, -1) * (model.out_mean + model.out_std * z) ** 2).sum()
        assert float(obj.g0_model_sq()) == pytest.approx(float(g0), rel=1e-10)
        g0_plain = quadrature_norm_sq(plain(zero.reshape(1, 8, 8)), w_out)[0]
    assert abs(float(g0_plain) / float(g0) - 1) > 0.2


def test_run_ama_fits_once_and_warm_retraining_keeps_the_statistics():
    s, lab, mt, factory = small_ama("darcy", 8)
    cfg = AMAConfig(n_train=30, iterations=1, n_opt=6,
                    train=TrainConfig(steps=20, batch_size=10, eval_every=10, patience=0),
                    retrain_rounds=0, retrain_steps=10, update="adam",
                    adam={"lr": 0.05, "steps": 2, "rounds": 1}, lipschitz_samples=1,
                    lipschitz_iterations=3, theta_tol=0.0)
    res = run_ama(s, mt, cfg, lab, model_factory=factory)
    first, last = res.initial_model, res.model
    assert bool(first.norm_fitted)
    assert not torch.equal(first.in_std, torch.ones_like(first.in_std))
    for k in STATS:
        assert torch.equal(getattr(first, k), getattr(last, k))
    zero = torch.zeros(1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        g0 = quadrature_norm_sq(first(zero).double(), s.output_weights.double())[0]
    assert res.g0_model_sq == pytest.approx(float(g0), rel=1e-6)
