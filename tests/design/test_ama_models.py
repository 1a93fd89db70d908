"""AMA studies with any registry model (issue 26 items 2-3): the FNO from the command line
(Darcy, 2-D) and the API (NtD, 1-D boundary data), a user's model factory named by import
path, and ``load_model`` of their run folders (built-in models rebuilt from the checkpoint
alone; a user model only when trusted)."""

import json
import math
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

import wheretolearn
from wheretolearn.cli import app
from wheretolearn.design.ama_study import resolve_ama_config, run_ama_study

runner = CliRunner()

TINY = {"n": 6, "n_measures": 3, "n_seen": 2, "n_unseen": 3, "n_train": 12, "n_opt": 4,
        "iterations": 1, "steps": 20, "batch_size": 6, "eval_every": 10, "retrain_rounds": 0,
        "eval_n": [8], "repeats": 1, "lipschitz_samples": 1, "lipschitz_iterations": 3,
        "adam": {"lr": 0.05, "steps": 2, "rounds": 1},
        "de": {"popsize": 4, "tol": 1e-6, "maxiter": 2}, "num_threads": 1}

USER_MODEL = textwrap.dedent('''
    import math
    import torch


    class Affine(torch.nn.Module):
        def __init__(self, grid, hidden):
            super().__init__()
            n_in, n_out = math.prod(grid.input_shape), math.prod(grid.output_shape)
            self.shape = grid.output_shape
            self.net = torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.Tanh(),
                                           torch.nn.Linear(hidden, n_out))

        def forward(self, u):
            return self.net(u.reshape(u.shape[0], -1).float()).reshape(u.shape[0], *self.shape)


    def make(grid, *, seed, dtype, hidden=8):
        return Affine(grid, hidden)
''')


def _metatest(out):
    """The run's meta-test, rebuilt from its config (as the study built it)."""
    from wheretolearn.design.ama_problems import ama_setup
    from wheretolearn.design.labelling import Labeller
    from wheretolearn.design.operator_metatest import MetaTestDraws, make_operator_metatest

    import tomllib

    cfg = tomllib.loads((out / "config.toml").read_text())
    setup = ama_setup(cfg["problem"], n=cfg["n"])
    measures, params = setup.family(cfg["n_measures"], cfg["family_seed"])
    draws = MetaTestDraws(cfg["n_seen"], cfg["n_unseen"], seed=cfg["family_seed"])
    return make_operator_metatest(Labeller(setup.problem), measures, draws, params=params,
                                  output_weights=setup.output_weights)


def test_fno_darcy_study_from_the_cli_reloads_its_model(tmp_path):
    pytest.importorskip("neuralop", reason="the FNO needs the extra wheretolearn[fno]")
    from wheretolearn.models.fno import FNO

    out = tmp_path / "fno"
    short = tmp_path / "short.toml"             # the ci preset, fewer samples and steps
    short.write_text("n_measures = 4\nn_train = 30\nn_opt = 8\nsteps = 60\neval_every = 20\n"
                     "retrain_steps = 20\neval_n = [30]\nlipschitz_samples = 1\n")
    res = runner.invoke(app, ["ama", "--problem", "darcy", "--preset", "ci", "--model", "fno",
                              "--config", str(short), "--repeats", "1", "--iterations", "1",
                              "--out", str(out), "--no-progress", "--num-threads", "1"])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert s["architecture"]["model"] == "fno"
    assert s["architecture"]["init_args"] == {"n_modes": [6, 6], "hidden_channels": 8,
                                              "n_layers": 2, "normalize": True}
    # the bound's model terms: L' by power iteration through the FNO, ||G(0)|| finite
    lip = s["lipschitz"]["model"][0]
    assert lip["value"] > 0 and not lip["fixed"] and math.isfinite(s["lipschitz"]["g0_model_norm"][0])
    assert s["ama_loss_monotone"]
    model = wheretolearn.load_model(out)
    assert isinstance(model, FNO) and not model.training and not model.needs_normalization
    # the reloaded model is the one the run reported on: same in-loop OOD error
    reported = s["history"][0][-1]["ood_error_squared"]
    assert _metatest(out).error_squared(model) == pytest.approx(reported, rel=1e-6)


def test_fno_ntd_study_from_the_api(tmp_path):
    """NtD: the boundary data is a periodic 1-D signal (the closed boundary), the FNO a 1-D
    operator on it."""
    pytest.importorskip("neuralop", reason="the FNO needs the extra wheretolearn[fno]")
    cfg = resolve_ama_config({"problem": "ntd", **TINY, "model": "fno",
                              "model_options": {"n_modes": 5, "hidden_channels": 4}})
    s = run_ama_study(cfg, tmp_path / "ntd", progress=False).summary
    assert s["architecture"]["init_args"]["n_modes"] == 5
    assert s["lipschitz"]["model"][0]["value"] > 0
    model = wheretolearn.load_model(tmp_path / "ntd")
    assert model.grid_shape == (4 * 6 - 4,)


def test_user_model_factory_runs_and_its_folder_needs_trust(tmp_path):
    path = tmp_path / "my_model.py"
    path.write_text(USER_MODEL)
    cfg = resolve_ama_config({"problem": "darcy", **TINY, "model": f"{path}:make",
                              "model_options": {"hidden": 6}})
    out = tmp_path / "user"
    s = run_ama_study(cfg, out, progress=False).summary
    assert s["architecture"]["model"] == f"{path}:make"
    assert s["architecture"]["init_args"] == {"hidden": 6}
    assert s["lipschitz"]["model"][0]["value"] > 0
    with pytest.raises(ValueError, match="names user code.*trust=True"):
        wheretolearn.load_model(out)
    model = wheretolearn.load_model(out, trust=True)
    reported = s["history"][0][-1]["ood_error_squared"]
    assert _metatest(out).error_squared(model) == pytest.approx(reported, rel=1e-6)


@pytest.mark.parametrize("layer, message", [
    ({"model": "nope"}, "not a model; choose one of deeponet, fno"),
    ({"model": "fno", "width": 8}, "DeepONet settings"),
    ({"model": "deeponet", "model_options": {"activation": "swish"}}, "activation"),
])
def test_bad_model_settings_are_refused(tmp_path, layer, message):
    with pytest.raises(ValueError, match=message):
        cfg = resolve_ama_config({"problem": "darcy", **TINY, **layer})
        run_ama_study(cfg, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_missing_fno_extra_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "neuralop.models", None)
    out = tmp_path / "run"
    res = runner.invoke(app, ["ama", "--problem", "darcy", "--model", "fno", "--out", str(out),
                              "--no-progress"])
    line = res.output.strip().splitlines()[-1]
    assert res.exit_code == 2 and line.startswith("error:") and "wheretolearn[fno]" in line
    assert "Traceback" not in res.output and not out.exists()


def test_deeponet_default_is_unchanged():
    """The default model is the DeepONet with the preset's sizes (its ci timings and results
    do not change)."""
    from wheretolearn.design.ama_problems import ama_setup
    from wheretolearn.design.ama_study import _model_factory
    from wheretolearn.models import DeepONet

    cfg = resolve_ama_config({"problem": "darcy", "preset": "ci"})
    setup = ama_setup("darcy", n=cfg.n)
    factory, arch = _model_factory(cfg, setup)
    m = factory(3)
    ref = DeepONet([144, 64, 64, 32], [2, 64, 64, 32], setup.points, output_shape=(12, 12),
                   seed=3)
    assert arch["branch"] == [144, 64, 64, 32] and arch["trunk"] == [2, 64, 64, 32]
    for a, b in zip(m.parameters(), ref.parameters()):
        assert torch.equal(a, b)
