"""``wheretolearn.load_model(RUN_DIR)`` gives back the surrogate a run reported on
(issue 16 item 5); the online round trip is in tests/cli/test_online_args.py."""

import json
import tomllib

import pytest
import torch
from typer.testing import CliRunner

import wheretolearn
from wheretolearn.cli import app

TINY = ("n_train = 12\nsteps = 2\neval_n = [8, 16]\nrepeats = 1\nn_measures = 2\n"
        "n_seen = 20\nn_unseen = 30\nbaselines = []\n")


def test_bilevel_model_reproduces_the_reported_error(tmp_path):
    from wheretolearn.design.metatest import make_metatest
    from wheretolearn.models.krr import KernelRidge
    from wheretolearn.problems import get_problem

    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(TINY)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["bilevel", "--problem", "sobol-g", "--dim", "2", "--config",
                                   str(cfg_path), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    model = wheretolearn.load_model(out)
    assert isinstance(model, KernelRidge)
    cfg = tomllib.loads((out / "config.toml").read_text())
    summary = json.loads((out / "summary.json").read_text())
    metatest = make_metatest(get_problem("sobol-g", dim=2), n_measures=cfg["n_measures"],
                             n_seen=cfg["n_seen"], n_unseen=cfg["n_unseen"], seed=cfg["seed"],
                             dtype=torch.float32)
    # the first repeat of the optimised source at the largest N, as the run reported it
    reported = summary["baselines_ci"]["optimized"]["16"]["values"][0]
    assert float(metatest.error(model.predict, split="unseen")) == pytest.approx(reported,
                                                                                rel=1e-9)
    small = wheretolearn.load_model(out, n=8)
    assert float(metatest.error(small.predict, split="unseen")) == pytest.approx(
        summary["baselines_ci"]["optimized"]["8"]["values"][0], rel=1e-9)


def test_load_model_names_what_it_cannot_load(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        wheretolearn.load_model(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match="not a wheretolearn run folder"):
        wheretolearn.load_model(tmp_path / "x")
