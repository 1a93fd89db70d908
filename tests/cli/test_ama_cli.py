"""``wheretolearn ama``: a tiny run end to end, and one-line errors with exit status 2."""

import json
import tomllib
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import wheretolearn
from wheretolearn.cli import app
from wheretolearn.models.deeponet import DeepONet

runner = CliRunner()
USER = str(Path(__file__).resolve().parents[1] / "design" / "user_field_problem.py")

TINY = """
problem = "darcy"
n = 6
n_measures = 3
n_seen = 2
n_unseen = 3
n_train = 12
n_opt = 4
iterations = 1
steps = 20
batch_size = 6
eval_every = 10
retrain_rounds = 0
eval_n = [8]
repeats = 2
lipschitz_samples = 1
lipschitz_iterations = 3
branch_hidden = [8]
trunk_hidden = [8]
width = 4
adam = {lr = 0.05, steps = 2, rounds = 1}
"""


def _err(result):
    lines = result.output.strip().splitlines()
    return result.exit_code, lines[-1] if lines else ""


def test_tiny_study_writes_the_run_folder(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    out = tmp_path / "run"
    res = runner.invoke(app, ["ama", "--config", str(cfg), "--out", str(out), "--no-progress",
                              "--num-threads", "1"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    for key in ("problem", "preset", "ood_error", "ood_error_squared", "ama_loss",
                "initial_ood_error", "final_ood_error", "baselines", "lipschitz", "learned",
                "seconds"):
        assert key in summary
    assert summary["problem"] == "darcy" and len(summary["ood_error"]) == 2
    assert set(summary["baselines"]) >= {"initial", "mixture"}
    assert summary["ood_error_squared"][0] == pytest.approx(
        sum(h[0]["ood_error_squared"] for h in summary["history"]) / 2)
    assert summary["ama_loss_monotone"] is True
    assert len(summary["lipschitz"]["true"]) == 2 and summary["lipschitz"]["true"][0]["value"] > 0
    for fig in summary["figures"]:
        assert (out / fig).exists()
    assert (out / "model.pt").exists()
    _load_model_round_trip(out)
    # a fixed Lipschitz constant is reported as fixed
    out2 = tmp_path / "run2"
    res = runner.invoke(app, ["ama", "--config", str(cfg), "--out", str(out2), "--no-progress",
                              "--lipschitz", "0.5", "--repeats", "1"])
    assert res.exit_code == 0, res.output
    s2 = json.loads((out2 / "summary.json").read_text())
    assert s2["lipschitz"]["true"][0] == pytest.approx(
        {**s2["lipschitz"]["true"][0], "value": 0.5, "fixed": True})


@pytest.mark.parametrize("args, message", [
    (["--problem", "heat"], "not an AMA problem"),
    (["--problem", "ntd", "--preset", "huge"], "--preset must be ci, small or paper"),
    (["--problem", "ntd", "--lipschitz", "big"], "--lipschitz must be 'auto' or a number"),
    (["--problem", "ntd", "--lipschitz", "-1"], "--lipschitz must be 'auto' or a number"),
    (["--problem", "ntd", "--repeats", "0"], "repeats"),
    (["--problem", "ntd", "--cluster", "moon"], "--cluster must be"),
    (["--problem", "ntd", "--cluster", "local", "--scheduler", "tcp://x:1"], "not both"),
    ([], "give --problem"),
    # user problems (docs/ama.md, "Your own problem")
    (["--problem", "heat2d"], "not an AMA problem"),
    (["--problem", "sobol-g"], "not an AMA problem"),
    (["--problem", f"{USER}:make_vector_map"], "input_shape (3,)"),
    (["--problem", f"{USER}:make_nothing"], "not a wheretolearn Problem or an AMASetup"),
    (["--problem", f"{USER}:missing"], "has no attribute"),
    (["--problem", "no_such_module_xyz:make"], "cannot import"),
])
def test_bad_input_is_one_error_line(tmp_path, args, message):
    out = tmp_path / "run"
    res = runner.invoke(app, ["ama", "--out", str(out), "--no-progress", *args])
    code, line = _err(res)
    assert code == 2 and line.startswith("error:") and message in line, res.output
    assert not out.exists()


def test_bad_config_and_existing_folder(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('problem = "darcy"\nupdate = "de"\n')
    res = runner.invoke(app, ["ama", "--config", str(cfg), "--out", str(tmp_path / "r")])
    assert _err(res)[0] == 2 and "give bounds" in _err(res)[1]
    cfg.write_text('problem = "ntd"\nproblem_options = {n = 3}\n')       # user problems only
    res = runner.invoke(app, ["ama", "--config", str(cfg), "--out", str(tmp_path / "r")])
    assert _err(res)[0] == 2 and "problem_options" in _err(res)[1]
    cfg.write_text('problem = "darcy"\nbounds = [1.0, 0.0]\n')
    res = runner.invoke(app, ["ama", "--config", str(cfg), "--out", str(tmp_path / "r")])
    assert _err(res)[0] == 2 and "low < high" in _err(res)[1]
    cfg.write_text('problem = "ntd"\nbogus = 1\n')
    res = runner.invoke(app, ["ama", "--config", str(cfg), "--out", str(tmp_path / "r")])
    assert _err(res)[0] == 2 and "unknown config key 'bogus'" in _err(res)[1]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("mine")
    res = runner.invoke(app, ["ama", "--problem", "ntd", "--out", str(busy)])
    assert _err(res)[0] == 2 and _err(res)[1].startswith("error:")
    assert (busy / "x.txt").read_text() == "mine"


@pytest.mark.slow  # the ci presets: under a minute each on a quiet 2-core machine
@pytest.mark.parametrize("problem", ["ntd", "darcy"])
def test_ci_preset_runs_and_improves_on_the_initial_distribution(tmp_path, problem):
    out = tmp_path / problem
    res = runner.invoke(app, ["ama", "--problem", problem, "--preset", "ci", "--out", str(out),
                              "--no-progress", "--num-threads", "1"])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert s["ama_loss_monotone"] and s["relative_ama_loss"][-1] < 1.0
    # the guard: the recommended source is the best of the fresh models on seen samples
    n = str(s["recommended"]["n"])
    seen = {k: v[n]["mean"] for k, v in s["baselines_seen_ci"].items()}
    assert set(seen) == {"learned", "initial", "barycenter", "mixture"}
    assert s["recommended"]["source"] == min(seen, key=seen.get)


def _load_model_round_trip(out):
    """load_model(RUN_DIR) gives the run's DeepONet: same weights, same predictions on the
    problem's inputs, ready to predict (evaluation mode)."""
    import torch

    import wheretolearn
    from wheretolearn.models.deeponet import DeepONet

    model = wheretolearn.load_model(out)
    assert isinstance(model, DeepONet) and not model.training
    saved = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    u = torch.randn(3, model.n_in, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pred = model(u)
    assert pred.shape == (3, *model.output_shape) and torch.isfinite(pred).all()
    again = DeepONet.load(out / "model.pt").eval()
    with torch.no_grad():
        assert torch.equal(again(u), pred)
    with pytest.raises(ValueError, match="bilevel"):
        wheretolearn.load_model(out, n=4)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_device_is_one_error_line(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["ama", "--problem", "ntd", "--device", "cuda", "--out", str(out)])
    code, line = _err(res)
    assert code == 2 and line.startswith("error:") and "cuda" in line and "CUDA" in line
    assert not out.exists()


# --normalize/--no-normalize: recorded in the run folder, load_model gives the model back

def _run_tiny(tmp_path, name, *flags):
    """One repeat of TINY from the CLI; returns the run folder."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    out = tmp_path / name
    res = runner.invoke(app, ["ama", "--config", str(cfg), "--out", str(out), "--repeats", "1",
                              "--no-progress", "--num-threads", "1", *flags])
    assert res.exit_code == 0, res.output
    return out


def test_normalisation_is_on_by_default_recorded_and_reloaded(tmp_path):
    out = _run_tiny(tmp_path, "on")
    assert tomllib.loads((out / "config.toml").read_text())["normalize"] is True
    summary = json.loads((out / "summary.json").read_text())
    assert summary["architecture"]["normalize"] is True
    model = wheretolearn.load_model(out)
    assert model.normalize and bool(model.norm_fitted)
    assert not torch.equal(model.out_std, torch.ones_like(model.out_std))
    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved["config"]["normalize"] is True
    for k in ("in_mean", "in_std", "out_mean", "out_std"):
        assert torch.equal(getattr(model, k), saved["state_dict"][k])
    u = torch.randn(3, model.n_in, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(u), DeepONet.load(out / "model.pt").eval()(u))


def test_no_normalize_trains_the_plain_network(tmp_path):
    out = _run_tiny(tmp_path, "off", "--no-normalize")
    assert tomllib.loads((out / "config.toml").read_text())["normalize"] is False
    model = wheretolearn.load_model(out)
    assert model.normalize is False and not bool(model.norm_fitted)
    assert torch.equal(model.in_std, torch.ones_like(model.in_std))
