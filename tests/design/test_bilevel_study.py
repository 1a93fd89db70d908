"""End-to-end bilevel study on a tiny configuration; config validation; example files."""

import json
import math
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from wheretolearn.design.baselines import SOURCE_NAMES
from wheretolearn.design.study import (DEMO_SETTINGS, PAPER_SETTINGS, BilevelStudyConfig,
                                       resolve_study_config, run_bilevel_study)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

TINY = dict(problem="sobol-g", dim=2, n_train=24, steps=4, eval_n=[16, 32], repeats=2,
            n_measures=3, n_seen=30, n_unseen=60, seed=1)


def test_tiny_study_writes_complete_run_folder(tmp_path):
    out = tmp_path / "run"
    summary = run_bilevel_study(TINY, out, progress=False)
    assert summary["out"] == str(out.absolute())
    cfg = tomllib.loads((out / "config.toml").read_text())
    assert BilevelStudyConfig(**cfg) == BilevelStudyConfig(**TINY)  # resolved and reloadable
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == TINY["steps"]
    assert {"step", "seen_error", "unseen_error"} <= set(lines[0])
    written = json.loads((out / "summary.json").read_text())
    required = {"problem", "dim", "initial_error", "final_error", "best_error",
                "seconds_per_step", "grad_seconds_per_step", "steps", "n_train", "learned",
                "baselines", "baselines_ci"}
    assert required <= set(written)
    assert written["initial_error"] == pytest.approx(lines[0]["unseen_error"])
    assert written["final_error"] == pytest.approx(lines[-1]["unseen_error"])
    assert set(written["baselines"]) == set(SOURCE_NAMES)
    for name in SOURCE_NAMES:
        assert set(written["baselines"][name]) == {"16", "32"}
        for n, mean in written["baselines"][name].items():
            ci = written["baselines_ci"][name][n]
            assert ci["lo"] <= mean <= ci["hi"] and math.isfinite(mean)
    assert len(written["learned"]["cov"]) == 2
    for fig in ("error_vs_step", "error_vs_n", "covariances"):
        png = out / "figures" / f"{fig}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evals = (out / "evaluation.jsonl").read_text().splitlines()
    assert len(evals) == len(SOURCE_NAMES) * 2 * 2
    # only the run folder itself was created: no staging leftovers
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_study_failure_leaves_no_folder(tmp_path, monkeypatch):
    import wheretolearn.design.evaluation as ev

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(ev, "evaluate_sources", broken)
    with pytest.raises(RuntimeError, match="evaluation broke"):
        run_bilevel_study(TINY, tmp_path / "run", progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad, field", [
    ({"problem": "darcy"}, "problem"), ({"dim": 0}, "dim"), ({"n_train": -1}, "n_train"),
    ({"lr": math.nan}, "lr"), ({"bandwidth": math.inf}, "bandwidth"),
    ({"eval_n": []}, "eval_n"), ({"eval_n": [0]}, "eval_n"), ({"baselines": ["gp"]}, "baselines"),
    ({"optimizer": "lbfgs"}, "optimizer"), ({"learning_rate": 1.0}, "learning_rate"),
    ({"problem": "friedman2", "dim": 3}, "dim"),
    ({"bilevel_options": {"lr": 1.0}}, "bilevel_options"),
    ({"bilevel_options": {"foo": 1}}, "unknown bilevel option"),
])
def test_config_validation(bad, field):
    with pytest.raises(ValidationError) as exc:
        BilevelStudyConfig(**{**TINY, **bad})
    assert field in str(exc.value)


def test_resolution_order_and_examples():
    cfg = resolve_study_config({"problem": "rkhs"}, {"steps": 7, "lr": None})
    assert (cfg.dim, cfg.bandwidth, cfg.init_mean, cfg.lr, cfg.steps) == (10, 5.0, 0.0, 5.0, 7)
    assert resolve_study_config(DEMO_SETTINGS) == resolve_study_config(
        tomllib.loads((EXAMPLES / "demo.toml").read_text()))
    for name, problem in [("sobol_g", "sobol-g"), ("friedman1", "friedman1"),
                          ("friedman2", "friedman2"), ("rkhs", "rkhs")]:
        cfg = BilevelStudyConfig(**tomllib.loads((EXAMPLES / f"{name}.toml").read_text()))
        paper = PAPER_SETTINGS[problem]
        assert cfg.problem == problem and (cfg.n_train, cfg.steps) == (250, 1000)
        assert (cfg.dim, cfg.lr, cfg.init_mean) == (paper["dim"], paper["lr"], paper["init_mean"])
        assert cfg.bandwidth == pytest.approx(paper["bandwidth"])


def test_variant_examples_load():
    bary = BilevelStudyConfig(**tomllib.loads((EXAMPLES / "rkhs_barycenter.toml").read_text()))
    assert bary.init == "barycenter" and bary.problem == "rkhs"
    adam = BilevelStudyConfig(**tomllib.loads((EXAMPLES / "friedman2_adam.toml").read_text()))
    assert adam.optimizer == "adam" and adam.normalize_labels


def test_barycenter_start_is_the_barycenter_of_seen_gaussians(tmp_path):
    cfg = {**TINY, "init": "barycenter", "steps": 1, "eval_n": [8], "repeats": 1,
           "baselines": []}
    summary = run_bilevel_study(cfg, tmp_path / "run", progress=False)
    import numpy as np
    import torch

    from wheretolearn.design.baselines import empirical_gaussians
    from wheretolearn.design.metatest import make_metatest
    from wheretolearn.measures import barycenter
    from wheretolearn.problems import get_problem

    mt = make_metatest(get_problem("sobol-g", dim=2), n_measures=3, n_seen=30, n_unseen=60,
                       seed=1)
    ref = barycenter(empirical_gaussians(mt.seen_x, dtype=torch.float64)).measure
    np.testing.assert_allclose(summary["initial"]["mean"], ref.mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(summary["initial"]["cov"], ref.cov.numpy(), rtol=1e-4)
