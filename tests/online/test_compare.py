"""The sampler comparison (``wheretolearn online compare``): validation groups and their cache,
paired ratio statistics, the training-passes budget, the lockstep engine and the CLI
(issue 13 item 6, issue 23 item 1)."""

import json

import numpy as np
import pytest
import tomli_w
from typer.testing import CliRunner

from wheretolearn.cli import app
from wheretolearn.online.compare import (GROUPS, METRICS, PER_SIMULATION, ComparisonProtocol,
                                         ValidationDesign, box_validation_set, lockstep_study,
                                         ratio_statistics, sampler_config, summarise_comparison,
                                         tail_metrics, validation_set)
from wheretolearn.online.config import OnlineStudyConfig

runner = CliRunner()
TINY = {"study": {"n": 8, "n_steps": 6, "n_simulations": 8},
        "buffer": {"capacity": 30, "watermark": 12},
        "training": {"hidden": [16], "torch_threads": 1},
        "sampler": {"name": "breed", "period": 5, "sigma": 0.2}}
SMALL_VAL = ["--val-interior", "12", "--val-faces", "6", "--val-corners", "4"]


class _CountingProblem:
    """A cheap stand-in problem: 3 steps of a 4-value field, counting its simulations."""

    n_steps = 3
    output_shape = (3, 4)

    def __init__(self, scale=1.0):
        self.calls, self.scale = 0, scale

    def __call__(self, params):
        self.calls += len(params)
        p = np.asarray(params)
        return self.scale * np.repeat(p[:, None, :2], 3, axis=1).repeat(2, axis=2)


def test_validation_groups_interior_strictly_inside_boundary_exactly_on():
    bounds = np.array([[100.0, 500.0]] * 5)
    p, g = box_validation_set(bounds, ValidationDesign(n_interior=512, n_faces=128,
                                                       n_corners=64, seed=1))
    assert p.shape == (512 + 128 + 32, 5)
    assert [int((g == i).sum()) for i in range(3)] == [512, 128, 32]     # all 2^5 corners
    on = np.isin(p, [100.0, 500.0])
    inner = p[g == 0]
    assert np.all((inner > 100.0) & (inner < 500.0))                    # strictly inside
    k = on[g == 1].sum(axis=1)
    assert k.min() == 1 and k.max() == 4                                 # a face, not a corner
    faces = p[g == 1]
    assert np.all((faces[~on[g == 1]] > 100.0) & (faces[~on[g == 1]] < 500.0))
    corners = p[g == 2]
    assert on[g == 2].all() and len({tuple(r) for r in corners}) == 32
    # the default is at least 500 interior simulations, space-filling in every coordinate
    p0, g0 = box_validation_set(bounds)
    assert (g0 == 0).sum() >= 500
    hist = np.histogram(p0[g0 == 0, 0], bins=8, range=(100, 500))[0]
    assert hist.min() >= 0.8 * hist.mean()
    # its own seed, one stream per group: a different face count leaves the interior
    p2, g2 = box_validation_set(bounds, ValidationDesign(n_faces=10, seed=1))
    np.testing.assert_array_equal(p2[g2 == 0], inner)
    # more corners than wanted: distinct ones at random
    p3, g3 = box_validation_set(bounds, ValidationDesign(n_interior=4, n_faces=0,
                                                         n_corners=7, seed=1))
    assert (g3 == 2).sum() == 7 and len({tuple(r) for r in p3[g3 == 2]}) == 7
    with pytest.raises(ValueError, match="design must be one of"):
        ValidationDesign(design="grid")
    for bad, match in (({"n_interior": 0}, "n_interior must be an integer >= 1"),
                       ({"n_faces": -1}, "n_faces"), ({"n_corners": 2.5}, "n_corners")):
        with pytest.raises(ValueError, match=match):
            ValidationDesign(**bad)
    assert ValidationDesign().n_simulations(5) == 512 + 128 + 32
    assert ValidationDesign().n_simulations(1) == 512 + 2


def test_validation_cache_is_reused_and_a_changed_key_regenerates(tmp_path):
    bounds = [[0.0, 1.0], [2.0, 3.0]]
    design = ValidationDesign(n_interior=8, n_faces=4, n_corners=4, seed=3)
    kw = {"problem_name": "toy", "problem_options": {"n": 4}, "validation": design,
          "cache": tmp_path}
    prob = _CountingProblem()
    first = validation_set(prob, bounds, **kw)
    assert not first.reused and prob.calls == 8 + 4 + 4
    assert first.fields.shape == (16, 3, 4) and first.fields.dtype == np.float32
    assert first.sizes()["faces"] == {"simulations": 4, "samples": 12}
    files = sorted(f.name for f in first.path.iterdir())
    assert files == ["fields.npy", "group.npy", "key.json", "params.npy"]
    for f in ("fields.npy", "group.npy", "params.npy"):           # data, never pickle
        np.load(first.path / f, allow_pickle=False)
    again = validation_set(_CountingProblem(scale=2.0), bounds, **kw)   # not recomputed
    assert again.reused and again.path == first.path
    np.testing.assert_array_equal(again.fields, first.fields)
    for change in ({"validation": ValidationDesign(n_interior=8, n_faces=4, n_corners=4,
                                                   seed=4)},
                   {"problem_options": {"n": 5}},
                   {"validation": ValidationDesign(n_interior=8, n_faces=2, n_corners=4,
                                                   seed=3)}):
        prob = _CountingProblem()
        other = validation_set(prob, bounds, **{**kw, **change})
        assert not other.reused and other.path != first.path and prob.calls > 0
    other = validation_set(_CountingProblem(), [[0.0, 1.0], [2.0, 4.0]], **kw)
    assert not other.reused
    # a broken entry of the same key is regenerated; no staging folder is left behind
    (first.path / "fields.npy").write_bytes(b"not an array")
    prob = _CountingProblem()
    fixed = validation_set(prob, bounds, **kw)
    assert not fixed.reused and prob.calls == 16
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_tail_metrics_cvar_is_the_mean_at_or_above_p99():
    e = np.arange(1.0, 1001.0)
    m = tail_metrics(e)
    assert list(m) == list(METRICS)
    assert m["p99"] == pytest.approx(990.01)
    assert m["cvar99"] == pytest.approx(np.mean(np.arange(991.0, 1001.0)))
    assert m["max"] == 1000.0 and m["mean"] == pytest.approx(500.5)


def test_geometric_mean_ratio_and_bootstrap_interval_by_hand():
    # two seeds, ratios 2 and 1: geometric mean sqrt(2). The bootstrap resamples two seeds with
    # replacement: (a, a) with probability 1/4, (b, b) 1/4, mixed 1/2, so its 2.5 % and 97.5 %
    # quantiles are the smallest and the largest ratio.
    s = ratio_statistics([2.0, 4.0], [1.0, 4.0], seed=0)
    assert s["ratio"] == pytest.approx(np.sqrt(2.0))
    assert (s["lo"], s["hi"]) == (pytest.approx(1.0), pytest.approx(2.0))
    assert s["per_seed"] == pytest.approx([2.0, 1.0])
    assert s["log_sd"] == pytest.approx(np.log(2.0) / np.sqrt(2.0))
    # three seeds: the arithmetic mean of (4, 1, 0.25) is 1.75, the geometric mean 1
    t = ratio_statistics([4.0, 1.0, 1.0], [1.0, 1.0, 4.0], seed=0)
    assert t["ratio"] == pytest.approx(1.0)
    # a resample of three times the seed with ratio 0.25 has probability 1/27 = 3.7 % > 2.5 %
    assert (t["lo"], t["hi"]) == (pytest.approx(0.25), pytest.approx(4.0))
    assert ratio_statistics([1.0, 2.0, 3.0], [0.5, 1.0, 1.5], seed=5)["lo"] == pytest.approx(2.0)
    # a fixed bootstrap seed: reproducible
    u, v = [1.0, 2.0, 3.0, 1.5], [1.1, 1.7, 2.0, 1.0]
    assert ratio_statistics(u, v, seed=7) == ratio_statistics(u, v, seed=7)
    with pytest.raises(ValueError, match="positive"):
        ratio_statistics([1.0, 0.0], [1.0, 1.0])


def test_summary_ratios_are_paired_by_seed_and_averaged_on_the_log_scale():
    # The protocol changed on purpose (issue 23): ratios were averaged arithmetically over
    # seeds and computed on the union of the validation groups; now the geometric mean per
    # group, with a bootstrap interval.
    runs = [{"sampler": s, "seed": k, "metrics": {g: {m: v for m in METRICS} for g in GROUPS}}
            for s, k, v in (("uniform", 0, 2.0), ("uniform", 1, 4.0),
                            ("breed", 1, 4.0), ("breed", 0, 1.0))]
    result = {"protocol": {"samplers": ["uniform", "breed"],
                           "bootstrap": {"seed": 0, "resamples": 2000, "level": 0.95}},
              "runs": runs}
    table = summarise_comparison(result)
    assert list(table) == list(GROUPS)
    b = table["interior"]["breed"]["p99"]
    assert b["ratio"] == pytest.approx(np.sqrt(2.0))                # seeds 0 and 1: 2 and 1
    assert (b["lo"], b["hi"]) == (pytest.approx(1.0), pytest.approx(2.0))
    assert b["mean"] == pytest.approx(2.5)
    assert table["corners"]["uniform"]["max"]["ratio"] == 1.0


def _tiny_validation(cfg):
    from wheretolearn.problems import get_problem

    prob = get_problem(cfg.study.problem, **cfg.study.problem_options())
    return validation_set(prob, prob.parameter_bounds, problem_name="heat2d",
                          problem_options=cfg.study.problem_options(),
                          validation=ValidationDesign(n_interior=8, n_faces=4, n_corners=4,
                                                      seed=0))


def test_every_sampler_trains_the_requested_passes():
    cfg = OnlineStudyConfig.model_validate(TINY)
    val = _tiny_validation(cfg)
    for name, passes in (("uniform", 1.5), ("breed", 1.5), ("uniform", 3.0)):
        res = lockstep_study(sampler_config(cfg, name), validation=val, passes=passes)
        assert res["samples_generated"] == 8 * 6 and res["simulations"] == 8
        assert res["passes"] == pytest.approx(res["samples_trained"] / 48)
        assert res["passes"] == pytest.approx(passes, rel=0.1), (name, res["passes"])
        views = set(GROUPS) | {g + PER_SIMULATION for g in GROUPS}
        assert set(res["metrics"]) == views and res["errors"].shape == (16, 6)
        # the per-simulation view: tails of each simulation's mean error over time steps
        interior = res["errors"][val.group == 0]
        assert res["metrics"]["interior per simulation"]["max"] == pytest.approx(
            interior.mean(axis=1).max())
    old = lockstep_study(sampler_config(cfg, "uniform"), validation=val, passes=None,
                         batches_per_simulation=1.0)
    assert old["batches"] == 8 + 3              # the old fixed pace: 1 per simulation + drain
    with pytest.raises(ValueError, match="exactly one of passes"):
        lockstep_study(cfg, validation=val, passes=1.5, batches_per_simulation=1.0)


def test_uniform_and_breed_share_their_first_wave_at_one_seed():
    # Breed's generation 0 draws from the base stream of uniform at the same seed (issue 23)
    cfg = OnlineStudyConfig.model_validate(TINY).with_overrides(**{"study.seed": 3,
                                                                   "sampler.seed": 4})
    val = _tiny_validation(cfg)
    first = {name: lockstep_study(sampler_config(cfg, name), validation=val,
                                  passes=1.0)["params"][:cfg.executor.attempts_in_flight]
             for name in ("uniform", "breed")}
    np.testing.assert_allclose(first["breed"], first["uniform"])


def test_sampler_variants():
    cfg = OnlineStudyConfig.model_validate(TINY)
    assert sampler_config(cfg, "uniform").sampler.name == "uniform"       # breed keys dropped
    w = sampler_config(cfg, "breed-nrmse-weighted").sampler
    assert (w.name, w.weighted, w.fitness_loss, w.sigma) == ("breed", True, "nrmse", 0.2)
    with pytest.raises(ValueError, match="unknown sampler variant"):
        sampler_config(cfg, "uniform-weighted")
    a = sampler_config(cfg, "breed-retry-meanfit-batch-mse-r05").sampler  # the ablation
    assert (a.children, a.fitness_quantile, a.fitness_baseline, a.fitness_loss, a.r_start) == (
        "retry", "mean", "batch", "mse", 0.5)
    # valued variants: one number each, integers where the option is a count
    v = sampler_config(cfg, "breed-sigma0.05-rend0.9-window40-power2-quantile1").sampler
    assert (v.sigma, v.r_end, v.window, v.selection_power, v.fitness_quantile) == (
        0.05, 0.9, 40, 2.0, 1.0)
    assert isinstance(v.window, int)
    for bad in ("breed-sigma", "breed-sigmax", "breed-foo0.5", "breed-sigma0.05x"):
        with pytest.raises(ValueError, match="unknown sampler variant"):
            sampler_config(cfg, bad)
    with pytest.raises(ValueError, match="sigma"):                        # out of range
        sampler_config(cfg, "breed-sigma2")
    # the boundary share is the base design of every sampler, not a Breed option
    shared = cfg.with_overrides(**{"sampler.boundary_share": 0.25})
    assert sampler_config(shared, "uniform").sampler.boundary_share == 0.25
    assert sampler_config(shared, "breed").sampler.boundary_share == 0.25


def test_breed_in_lockstep_knows_the_budget(monkeypatch):
    # Breed stops resampling once the last simulation is asked: it must know the budget
    from wheretolearn.online import sampler_registry

    built = []

    def spy(name, bounds, **kw):
        built.append(kw)
        return make(name, bounds, **kw)

    make = sampler_registry.make_sampler
    monkeypatch.setattr(sampler_registry, "make_sampler", spy)
    cfg = OnlineStudyConfig.model_validate(TINY)
    lockstep_study(sampler_config(cfg, "breed"), validation=_tiny_validation(cfg), passes=1.0)
    assert built[0]["n_simulations"] == cfg.study.n_simulations


def test_compare_cli_writes_json_and_table_and_nothing_on_bad_input(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(tomli_w.dumps(TINY))
    out, cache = tmp_path / "cmp", tmp_path / "cache"
    res = runner.invoke(app, ["online", "compare", str(cfg), "--samplers", "uniform,breed",
                              "--seeds", "2", "--out", str(out), "--no-progress",
                              "--cache", str(cache), *SMALL_VAL])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "compare.json").read_text())
    proto = data["protocol"]
    assert proto["seeds"] == [0, 1] and proto["passes"] == 1.5
    assert proto["validation"]["groups"] == {"interior": {"simulations": 12, "samples": 72},
                                             "faces": {"simulations": 6, "samples": 36},
                                             "corners": {"simulations": 4, "samples": 24}}
    assert proto["bootstrap"]["seed"] == 0 and not proto["validation"]["reused"]
    assert [(r["sampler"], r["seed"]) for r in data["runs"]] == [
        ("uniform", 0), ("breed", 0), ("uniform", 1), ("breed", 1)]
    for r in data["runs"]:                                 # the same budget for every run
        assert r["simulations"] == 8 and r["passes"] == pytest.approx(1.5, rel=0.1)
        assert set(r["metrics"]) == set(GROUPS) | {g + PER_SIMULATION for g in GROUPS}
        assert set(r["metrics"]["faces"]) == set(METRICS)
    assert data["summary"]["interior"]["uniform"]["p99"]["ratio"] == 1.0
    lo, hi = (data["summary"]["interior"]["breed"]["p99"][k] for k in ("lo", "hi"))
    assert lo <= data["summary"]["interior"]["breed"]["p99"]["ratio"] <= hi
    table = (out / "compare.md").read_text()
    assert "### interior (headline)" in table and "### corners" in table
    assert "| P99 |" in table and "CVaR0.99" in table and "### faces" in res.output
    assert (out / "figures" / "compare_errors.png").stat().st_size > 0
    assert set(np.load(out / "errors.npz", allow_pickle=False)) >= {"uniform_seed1",
                                                                    "params_breed_seed0"}
    # the same validation options reuse the cached set
    again = runner.invoke(app, ["online", "compare", str(cfg), "--samplers", "uniform",
                                "--seeds", "1", "--out", str(tmp_path / "cmp2"),
                                "--no-progress", "--cache", str(cache), *SMALL_VAL])
    assert again.exit_code == 0, again.output
    assert "validation set reused" in again.output
    assert json.loads((tmp_path / "cmp2" / "compare.json").read_text())[
        "protocol"]["validation"]["reused"]
    for args, words in ((["--samplers", "breed"], ["uniform"]),
                        (["--passes", "2", "--batches-per-simulation", "3"], ["--passes",
                                                                                "not both"]),
                        (["--passes", "0"], ["--passes", "> 0"]),
                        (["--val-design", "grid"], ["--val-design", "sobol", "halton"]),
                        (["--val-interior", "0"], ["--val-interior", ">= 1"]),
                        (["--seeds", "0"], ["--seeds", ">= 1"])):
        bad = runner.invoke(app, ["online", "compare", str(cfg), "--out",
                                  str(tmp_path / "bad"), "--no-progress", *args])
        assert bad.exit_code == 2, (args, bad.output)
        assert all(w in bad.output for w in words), (args, bad.output)
        assert not (tmp_path / "bad").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]    # no stage left
    exists = runner.invoke(app, ["online", "compare", str(cfg), "--out", str(out),
                                 "--no-progress"])
    assert exists.exit_code == 2 and "already exists" in exists.output


def test_heat_breed_example_is_heat_online_with_sampler_breed():
    from pathlib import Path

    from wheretolearn.online.config import load_online_config

    ex = Path(__file__).resolve().parents[2] / "examples"
    breed = load_online_config(str(ex / "heat_breed.toml"))
    online = load_online_config(str(ex / "heat_online.toml"), **{"sampler.name": "breed"})
    assert breed == online
    opts = breed.sampler.options(n_steps=100, capacity=2500, watermark=500)["options"]
    assert opts.parents.window == 50


def test_parallel_jobs_give_the_runs_of_one_job(tmp_path):
    """--jobs runs in spawned processes; each run is deterministic, so the records are the
    same, in the same order (seed, then sampler)."""
    from wheretolearn.online.compare import compare_samplers

    cfg = OnlineStudyConfig.model_validate(TINY)
    protocol = ComparisonProtocol(seeds=2, passes=1.0, validation=ValidationDesign(
        n_interior=4, n_faces=2, n_corners=2))
    kw = dict(protocol=protocol, cache=tmp_path / "cache")
    one = compare_samplers(cfg, ["uniform", "breed"], jobs=1, **kw)
    two = compare_samplers(cfg, ["uniform", "breed"], jobs=2, **kw)
    assert [(r["sampler"], r["seed"]) for r in two["runs"]] == [
        (r["sampler"], r["seed"]) for r in one["runs"]] == [
        ("uniform", 0), ("breed", 0), ("uniform", 1), ("breed", 1)]
    for a, b in zip(one["runs"], two["runs"]):
        np.testing.assert_array_equal(a["errors"], b["errors"])
        np.testing.assert_array_equal(a["params"], b["params"])
    assert two["protocol"]["jobs"] == 2
    with pytest.raises(ValueError, match="jobs > 1 needs a cache"):
        compare_samplers(cfg, ["uniform"], jobs=2, **{**kw, "cache": None})
    with pytest.raises(ValueError, match="jobs must be an integer >= 1"):
        compare_samplers(cfg, ["uniform"], jobs=0, **kw)


def test_comparison_protocol_checks_its_budget_and_sizes():
    p = ComparisonProtocol()
    assert (p.seeds, p.passes, p.batches_per_simulation, p.n_boot) == (10, 1.5, None, 10000)
    assert p.budget() == {"passes": 1.5, "batches_per_simulation": None}
    assert ComparisonProtocol(passes=None, batches_per_simulation=4.75).budget() == {
        "passes": None, "batches_per_simulation": 4.75}
    for bad, match in (({"batches_per_simulation": 3.0}, "exactly one of passes"),
                       ({"passes": None}, "exactly one of passes"),
                       ({"passes": 0.0}, "passes must be a finite number > 0"),
                       ({"seeds": 0}, "seeds must be an integer >= 1"),
                       ({"n_boot": 0}, "n_boot")):
        with pytest.raises(ValueError, match=match):
            ComparisonProtocol(**bad)
    with pytest.raises(TypeError, match="validation must be a ValidationDesign"):
        ComparisonProtocol(validation={"n_interior": 4})
