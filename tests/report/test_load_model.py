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


@pytest.fixture(scope="module")
def bilevel_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bilevel")
    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(TINY)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["bilevel", "--problem", "sobol-g", "--dim", "2", "--config",
                                   str(cfg_path), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    return out


def test_bilevel_model_reproduces_the_reported_error(bilevel_run):
    from wheretolearn.design.metatest import make_metatest
    from wheretolearn.models.krr import KernelRidge
    from wheretolearn.problems import get_problem

    out = bilevel_run
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


def test_compare_rows_of_a_bilevel_run(bilevel_run):
    from wheretolearn.report.compare_runs import summarize_run

    out = bilevel_run
    summary = json.loads((out / "summary.json").read_text())
    row = summarize_run(out)
    assert row["kind"] == "bilevel" and row["mean"] == summary["baselines"]["optimized"]["16"]
    assert row["max"] == max(summary["baselines_ci"]["optimized"]["16"]["values"])
    res = CliRunner().invoke(app, ["compare", str(out)])
    assert res.exit_code == 0 and "bilevel" in res.output
