"""End-to-end bilevel study on a tiny configuration; config validation; example files."""

import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats

from wheretolearn.design.baselines import SOURCE_NAMES
from wheretolearn.design.bilevel_study import (DEMO_SETTINGS, PAPER_SETTINGS, BilevelStudyConfig,
                                       resolve_bilevel_config, run_bilevel_study)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

TINY = dict(problem="sobol-g", dim=2, n_train=24, steps=4, eval_n=[16, 32], repeats=2,
            n_measures=3, n_seen=30, n_unseen=60, seed=1)


def test_tiny_study_writes_complete_run_folder(tmp_path):
    out = tmp_path / "run"
    result = run_bilevel_study(TINY, out, progress=False)
    summary = result.summary
    assert result.run_dir == out.absolute() and "out" not in summary
    assert result.config == BilevelStudyConfig(**TINY)
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
    evaluations = [json.loads(x) for x in (out / "evaluation.jsonl").read_text().splitlines()]
    for name in SOURCE_NAMES:
        assert set(written["baselines"][name]) == {"16", "32"}
        for n, mean in written["baselines"][name].items():
            ci = written["baselines_ci"][name][n]
            # the table is the mean and Student-t interval of the fits logged one by one
            fits = [e["error"] for e in evaluations if e["source"] == name and str(e["n"]) == n]
            assert ci["values"] == fits and len(fits) == TINY["repeats"]
            half = stats.t.ppf(0.975, len(fits) - 1) * np.std(fits, ddof=1) / math.sqrt(len(fits))
            assert mean == pytest.approx(np.mean(fits))
            assert (ci["lo"], ci["hi"]) == pytest.approx((np.mean(fits) - half, np.mean(fits) + half))
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
    ({"bilevel_options": {"max_move": -1.0}}, "StepControl.max_move"),
    ({"bilevel_options": {"backtrack": "no"}}, "StepControl.backtrack"),
    ({"bilevel_options": {"eval_unseen": 0}}, "BilevelSchedule.eval_unseen"),
    ({"bilevel_options": {"factor_dtype": "half"}}, "KRRSettings.factor_dtype"),
])
def test_config_validation(bad, field):
    with pytest.raises(ValidationError) as exc:
        BilevelStudyConfig(**{**TINY, **bad})
    assert field in str(exc.value)


def test_resolution_order_and_examples():
    cfg = resolve_bilevel_config({"problem": "rkhs"}, {"steps": 7, "lr": None})
    assert (cfg.dim, cfg.bandwidth, cfg.init_mean, cfg.lr, cfg.steps) == (10, 5.0, 0.0, 5.0, 7)
    assert resolve_bilevel_config(DEMO_SETTINGS) == resolve_bilevel_config(
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


def test_flat_keys_map_one_to_one_onto_the_option_objects():
    from wheretolearn.design import (BilevelSchedule, EvaluationFit, KRRSettings, StepControl)

    cfg = BilevelStudyConfig(**{**TINY, "optimizer": "adam", "normalize_labels": True,
                                "kernel": "laplace", "ridge_start": 1e-2, "ridge_end": 1e-5,
                                "num_threads": 2, "eval_ridge": 1e-6, "eval_dtype": "float32",
                                "bilevel_options": {"eval_unseen": 5, "lr_end": 1e-4,
                                                    "dtype": "float64", "factor_dtype": "float32",
                                                    "max_move": None, "backtrack": False,
                                                    "jump": 2.0}})
    assert cfg.schedule() == BilevelSchedule(steps=cfg.steps, n_train=cfg.n_train, lr=cfg.lr,
                                             lr_end=1e-4, ridge_start=1e-2, ridge_end=1e-5,
                                             eval_unseen=5)
    assert cfg.krr_settings() == KRRSettings(bandwidth=cfg.bandwidth, kernel="laplace",
                                             normalize_labels=True, dtype="float64",
                                             factor_dtype="float32", num_threads=2)
    assert cfg.step_control() == StepControl(optimizer="adam", max_move=None, backtrack=False,
                                             jump=2.0)
    assert cfg.evaluation_fit() == EvaluationFit(bandwidth=cfg.bandwidth, ridge=1e-6,
                                                 kernel="laplace", dtype="float32",
                                                 num_threads=2)
    # defaults: the option objects' own
    plain = BilevelStudyConfig(**TINY)
    assert plain.step_control() == StepControl()
    assert plain.schedule().eval_unseen is True and plain.schedule().lr_end == 0.0


def test_barycenter_start_is_the_barycenter_of_seen_gaussians(tmp_path):
    cfg = {**TINY, "init": "barycenter", "steps": 1, "eval_n": [8], "repeats": 1,
           "baselines": []}
    summary = run_bilevel_study(cfg, tmp_path / "run", progress=False).summary
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


def test_normal_baseline_is_the_normal_start_whatever_init_is(tmp_path):
    """With init = "barycenter" the "normal" column used to be built from the start, i.e. it
    *was* the barycenter column; it must be N(init_mean 1, init_std^2 I) in both cases."""
    cfg = {**TINY, "steps": 2, "eval_n": [16], "repeats": 2, "baselines": ["normal", "barycenter"]}
    bary = run_bilevel_study({**cfg, "init": "barycenter"}, tmp_path / "b", progress=False).summary
    normal = run_bilevel_study(cfg, tmp_path / "n", progress=False).summary
    assert bary["baselines"]["normal"] == normal["baselines"]["normal"]
    assert bary["baselines"]["normal"]["16"] != bary["baselines"]["barycenter"]["16"]


def test_trials_repeat_whole_runs_and_interval_is_over_trials(tmp_path):
    cfg = {**TINY, "steps": 3, "eval_n": [16], "repeats": 2,
           "baselines": ["normal", "mixture"]}
    single = run_bilevel_study(cfg, tmp_path / "one", progress=False).summary
    many = run_bilevel_study({**cfg, "trials": 3}, tmp_path / "three", progress=False).summary
    assert many["trials"] == 3 and many["ci_over"] == "trials"
    per = many["per_trial"]
    # trial 0 is the single run, seed for seed; the others differ
    assert per[0]["baselines"] == single["baselines"]
    assert per[1]["baselines"]["optimized"] != per[0]["baselines"]["optimized"]
    for name in ("optimized", "normal", "mixture"):
        vals = [p["baselines"][name]["16"] for p in per]
        ci = many["baselines_ci"][name]["16"]
        half = stats.t.ppf(0.975, 2) * np.std(vals, ddof=1) / math.sqrt(3)
        assert ci["values"] == vals and ci["n"] == 3
        assert many["baselines"][name]["16"] == pytest.approx(np.mean(vals))
        assert (ci["lo"], ci["hi"]) == pytest.approx((np.mean(vals) - half, np.mean(vals) + half))
    steps = [json.loads(x) for x in (tmp_path / "three" / "metrics.jsonl").read_text().splitlines()]
    assert [r["trial"] for r in steps] == [0] * 3 + [1] * 3 + [2] * 3
    # trials split over jobs (trial_offset) aggregate to the same table
    from wheretolearn.design.bilevel_study import aggregate_trials

    parts = [single] + [run_bilevel_study({**cfg, "trial_offset": k}, tmp_path / f"k{k}",
                                          progress=False).summary for k in (1, 2)]
    joined = aggregate_trials(parts)
    assert joined["baselines"] == many["baselines"]
    assert joined["baselines_ci"] == many["baselines_ci"]


def test_collapse_is_flagged_in_summary_and_reported_iterate_is_best_seen(tmp_path):
    cfg = {"problem": "friedman1", "dim": 5, "n_train": 100, "steps": 40, "lr": 5e-3,
           "bandwidth": 3.0, "n_measures": 10, "n_seen": 100, "n_unseen": 50, "seed": 0,
           "eval_n": [16], "repeats": 1, "baselines": ["normal"],
           "bilevel_options": {"max_move": None, "backtrack": False}}
    s = run_bilevel_study(cfg, tmp_path / "raw", progress=False).summary
    assert s["collapse"]["flagged"] and s["collapse"]["collapsed"]
    assert "vanishing_kernel" in s["collapse"]["reasons"]
    assert any("collapsed" in w for w in s["warnings"])
    steps = [json.loads(x) for x in (tmp_path / "raw" / "metrics.jsonl").read_text().splitlines()]
    seen = [r["seen_error"] for r in steps]
    assert s["use_iterate"] == "best" and s["best_step"] == int(np.argmin(seen))
    assert s["reported_seen_error"] == pytest.approx(min(seen)) and min(seen) < seen[0]
    safe = run_bilevel_study({**cfg, "bilevel_options": {}}, tmp_path / "safe", progress=False).summary
    assert not safe["collapse"]["collapsed"] and safe["collapse"]["events"] == 0


def test_figures_module_does_not_import_design():
    """report must not reach back into design (design imports report): the figure gets the
    measures it draws instead of rebuilding them."""
    import ast

    import wheretolearn.report.figures as fig

    tree = ast.parse(Path(fig.__file__).read_text())
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in modules if "design" in m]


def test_laplace_kernel_reaches_bilevel_step_and_final_fits(tmp_path):
    from wheretolearn.design.evaluation import fit_and_score, name_key, source_seed
    from wheretolearn.design.metatest import make_metatest
    from wheretolearn.measures import Gaussian
    from wheretolearn.problems import get_problem
    import torch

    cfg = {**TINY, "steps": 2, "eval_n": [16], "repeats": 1, "baselines": ["normal"],
           "kernel": "laplace"}
    s = run_bilevel_study(cfg, tmp_path / "lap", progress=False).summary
    assert s["kernel"] == "laplace"
    problem = get_problem("sobol-g", dim=2)
    mt = make_metatest(problem, n_measures=3, n_seen=30, n_unseen=60, seed=1)
    normal = Gaussian(torch.full((2,), 0.5), scale_tril=torch.eye(2))
    x = normal.sample(16, generator=torch.Generator().manual_seed(
        source_seed(1, name_key("normal"), 16, 0)))
    ref, _ = fit_and_score(problem, mt, x, bandwidth=1.0, ridge=1e-7, kernel="laplace")
    gauss, _ = fit_and_score(problem, mt, x, bandwidth=1.0, ridge=1e-7)
    assert s["baselines"]["normal"]["16"] == pytest.approx(ref, rel=1e-9) and ref != gauss


def test_start_check_keeps_the_start_when_the_chosen_iterate_is_worse_on_seen_data(
        tmp_path, monkeypatch):
    """The iterate chosen at N = n_train can lose to the start at the evaluation size (seen
    in an RKHS run at 10x lr: 0.037 vs 0.027); the study then reports the start, says so,
    and flags it -- judged on the seen split only."""
    import torch

    import wheretolearn.design.bilevel as bl
    from wheretolearn.measures import Gaussian

    real = bl.bilevel_descent

    def far_best(*args, **kwargs):
        res = real(*args, **kwargs)
        res.best = Gaussian(torch.full((2,), 40.0), scale_tril=0.01 * torch.eye(2))
        return res

    monkeypatch.setattr(bl, "bilevel_descent", far_best)
    cfg = {**TINY, "steps": 2, "eval_n": [24], "repeats": 1, "baselines": ["normal"]}
    s = run_bilevel_study(cfg, tmp_path / "run", progress=False).summary
    chk = s["start_check"]
    assert chk["kept_start"] and chk["seen_error_chosen"] > chk["seen_error_start"]
    assert s["learned"]["mean"] == pytest.approx([0.5, 0.5])
    assert s["collapse"]["flagged"] and any("start distribution" in w for w in s["warnings"])
    monkeypatch.setattr(bl, "bilevel_descent", real)
    kept = run_bilevel_study({**cfg, "check_start": False}, tmp_path / "off", progress=False).summary
    assert kept["start_check"] is None
