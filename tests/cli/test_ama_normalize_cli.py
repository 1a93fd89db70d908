"""``wheretolearn ama --normalize/--no-normalize``: the setting lands in the run folder
(config.toml, summary, model.pt) and ``load_model`` gives back the normalised model."""

import json
import tomllib

import torch
from typer.testing import CliRunner

import wheretolearn
from wheretolearn.cli import app
from wheretolearn.models.deeponet import DeepONet

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
repeats = 1
lipschitz_samples = 1
lipschitz_iterations = 3
branch_hidden = [8]
trunk_hidden = [8]
width = 4
adam = {lr = 0.05, steps = 2, rounds = 1}
"""


def _run(tmp_path, name, *flags):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    out = tmp_path / name
    res = CliRunner().invoke(app, ["ama", "--config", str(cfg), "--out", str(out),
                                   "--no-progress", "--num-threads", "1", *flags])
    assert res.exit_code == 0, res.output
    return out


def test_normalisation_is_on_by_default_recorded_and_reloaded(tmp_path):
    out = _run(tmp_path, "on")
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
    out = _run(tmp_path, "off", "--no-normalize")
    assert tomllib.loads((out / "config.toml").read_text())["normalize"] is False
    model = wheretolearn.load_model(out)
    assert model.normalize is False and not bool(model.norm_fitted)
    assert torch.equal(model.in_std, torch.ones_like(model.in_std))
