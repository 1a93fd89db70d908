"""AMA studies of user problems (issue 17 item 4): a factory returning a field Problem (the
Darcy-like generic setup, Adam when differentiable, differential evolution otherwise) or
a full AMASetup. Bad user problems (one ``error:`` line, exit 2) are tested with the other
CLI errors in tests/cli/test_ama_cli.py."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from wheretolearn.cli import app
from wheretolearn.design import ama_setup, darcy_family
from wheretolearn.design.ama_bound import LipschitzOptions, estimate_lipschitz
from wheretolearn.design.ama_problems import field_setup, grid_points, grid_weights
from wheretolearn.design.operator_metatest import field_family
from wheretolearn.measures import SineBasis2D

USER = str(Path(__file__).resolve().parent / "user_field_problem.py")
runner = CliRunner()

TINY = """
n_measures = 3
n_seen = 2
n_unseen = 3
n_train = 16
n_opt = 6
iterations = 2
steps = 30
batch_size = 8
eval_every = 10
retrain_rounds = 0
eval_n = [10]
repeats = 1
lipschitz_samples = 1
lipschitz_iterations = 4
branch_hidden = [8]
trunk_hidden = [8]
width = 4
adam = {lr = 0.1, steps = 3, rounds = 1}
de = {popsize = 4, tol = 1e-6, maxiter = 3}
"""


def _run(tmp_path, extra, *args):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(extra + TINY)
    out = tmp_path / "run"
    res = runner.invoke(app, ["ama", "--config", str(cfg), "--out", str(out), "--no-progress",
                              "--num-threads", "1", *args])
    assert res.exit_code == 0, res.output
    return json.loads((out / "summary.json").read_text()), out


def test_a_differentiable_user_field_problem_moves_the_mean_by_adam(tmp_path):
    s, out = _run(tmp_path, "", "--problem", f"{USER}:make_smoother")
    assert s["problem"] == f"{USER}:make_smoother" and s["grid"] == 12
    assert s["parameter"] == "mean" and s["ama_loss_monotone"] is True
    assert all(h["ama_loss"] > 0 for h in s["history"][0])
    assert s["lipschitz"]["true"][0]["value"] > 0 and not s["lipschitz"]["true"][0]["fixed"]
    # the mean moved by a gradient update (Adam) unless every round was rejected
    hist = s["history"][0]
    moved = [h for h in hist[1:] if h["update_accepted"]]
    assert all(h["theta"] != 0.0 for h in moved)
    for fig in s["figures"]:
        assert (out / fig).exists()
    cfg = (out / "config.toml").read_text()
    assert "make_smoother" in cfg


def test_a_black_box_user_problem_uses_differential_evolution_in_its_bounds(tmp_path):
    extra = 'problem_options = {differentiable = false, n = 10}\nbounds = [-0.5, 1.5]\n'
    s, _ = _run(tmp_path, extra, "--problem", f"{USER}:make_smoother")
    assert s["grid"] == 10 and s["ama_loss_monotone"] is True
    thetas = [h["theta"] for h in s["history"][0]]
    assert all(-0.5 <= t <= 1.5 for t in thetas)
    assert s["lipschitz"]["true"][0]["value"] > 0


def test_a_factory_may_return_a_full_ama_setup(tmp_path):
    s, _ = _run(tmp_path, "", "--problem", f"{USER}:make_setup")
    assert s["grid"] == 6 and s["parameter"][0] == "mean" and s["ama_loss_monotone"] is True


def test_field_setup_norms_points_and_family():
    from user_field_problem import make_smoother  # noqa: E402  (tests/design on sys.path)

    setup = field_setup(make_smoother(n=9), name="s")
    assert setup.update == "adam" and setup.jvp == "fd" and setup.bounds == (-1.0, 2.0)
    assert float(setup.output_weights.sum()) == pytest.approx(1.0)
    np.testing.assert_allclose(setup.points[:, 0], np.linspace(0, 1, 9))
    nu = setup.build(torch.tensor(0.3, dtype=torch.float64))
    x = nu.sample(5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 9)
    black = field_setup(make_smoother(n=9, differentiable=False), name="b")
    assert black.update == "de" and black.jvp == "fd-random"
    # 2-D grid helpers: trapezoid weights sum to 1, points in row-major order
    w = grid_weights((4, 5))
    assert w.shape == (4, 5) and float(w.sum()) == pytest.approx(1.0)
    p = grid_points((4, 5))
    assert p.shape == (20, 2) and tuple(p[1]) == (0.0, 0.25)


def test_the_darcy_family_is_the_field_family_on_a_2d_basis():
    basis = SineBasis2D(8, 4)
    a, pa = darcy_family(basis, n_measures=4, seed=3)
    b, pb = field_family(basis, n_measures=4, seed=3)
    assert pa == pb
    with pytest.raises(ValueError, match="mean_range"):
        field_family(basis, n_measures=2, mean_range=(1.0, 1.0))


def test_random_direction_lipschitz_is_a_lower_bound_that_gets_close():
    """``fd-random`` (no adjoint): max ||Av|| / ||v|| over random v, for a matrix of known norm."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64)
    true = float(torch.linalg.matrix_norm(a, ord=2))
    fn = lambda x: x @ a.T  # noqa: E731
    est = estimate_lipschitz(fn, torch.zeros(1, 4, dtype=torch.float64), generator=1,
                             options=LipschitzOptions(2000, safety=1.0, jvp="fd-random"))
    assert est.value <= true * (1 + 1e-6)
    assert est.value >= 0.9 * true
    with pytest.raises(ValueError, match="fd-random"):
        LipschitzOptions(jvp="adjoint")


def test_ama_setup_resolves_user_problems_directly():
    setup = ama_setup(f"{USER}:make_smoother", problem_options={"n": 7})
    assert setup.options["n"] == 7 and setup.problem.n == 7
    with pytest.raises(ValueError, match="problem_options"):
        ama_setup("ntd", n=8, problem_options={"x": 1})


@pytest.mark.slow  # a LocalCluster: the Dask workers import the user's file themselves
def test_user_problem_labels_on_dask_workers(tmp_path):
    s, _ = _run(tmp_path, "", "--problem", f"{USER}:make_smoother", "--workers", "1")
    assert s["labelled_samples"] > 0 and s["ama_loss_monotone"] is True


def test_records_hold_scalar_and_particle_parameters_as_json():
    from wheretolearn.design.ama import _plain

    assert _plain(0.5) == 0.5 and _plain(torch.tensor(2.0)) == 2.0
    particles = torch.arange(6.0).reshape(3, 2)
    assert _plain(particles) == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert json.dumps(_plain(np.array([1.0, 2.0]))) == "[1.0, 2.0]"
