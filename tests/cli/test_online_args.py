"""``wheretolearn online run`` keeps the promise (issue 16 item 3, issue 14 item 7): every value
is validated before the run folder exists, one rule per key, ``online resume`` applies or
refuses each flag, finished runs and lost checkpoints are said, wrong paths named."""

import json
import math
import shutil
from pathlib import Path

import pytest
import tomli_w
from cli_checks import refused
from typer.testing import CliRunner

from wheretolearn.cli import app

runner = CliRunner()


def tiny(**sections):
    base = {"study": {"n": 8, "n_steps": 4, "n_simulations": 3, "seed": 1},
            "buffer": {"capacity": 20, "watermark": 4},
            "training": {"hidden": [8], "torch_threads": 1, "batch_size": 4},
            "executor": {"workers": 1, "simulation_timeout": 20.0},
            "validation": {"n_val": 1, "every_batches": 2},
            "checkpoint": {"every_batches": 2}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return base


def write(path, cfg):
    path.write_text(tomli_w.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny study (run once, copied by the tests that change it)."""
    root = tmp_path_factory.mktemp("online")
    cfg = write(root / "s.toml", tiny())
    res = runner.invoke(app, ["online", "run", str(cfg), "--out", str(root / "run"),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    return root / "run"


@pytest.mark.parametrize("section, key", [
    ("study", "dt"), ("study", "side"), ("training", "lr"), ("training", "weight_decay"),
    ("executor", "simulation_timeout"),
])
def test_infinite_values_are_refused_before_the_folder_exists(tmp_path, section, key):
    cfg = write(tmp_path / "s.toml", tiny(**{section: {key: math.inf}}))
    refused(runner.invoke(app, ["online", "run", str(cfg), "--out", str(tmp_path / "r")]),
                   f"{section}.{key}", "finite")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("problem", ["burgers", "darcy"])
def test_problems_without_simulate_are_refused_by_name(tmp_path, problem, monkeypatch):
    from wheretolearn.online import study

    created = []
    monkeypatch.setattr(study.OnlineStudy, "create",
                        classmethod(lambda cls, *a, **k: created.append(a)))
    cfg = write(tmp_path / "s.toml", tiny(study={"problem": problem}))
    refused(runner.invoke(app, ["online", "run", str(cfg), "--out", str(tmp_path / "r")]),
                   f"problem {problem!r} cannot run in an online study", "heat2d")
    assert created == [] and not (tmp_path / "r").exists()    # never even created


def test_online_problems_are_those_with_simulate():
    from wheretolearn.problems import available_problems
    from wheretolearn.problems.base import _REGISTRY

    names = available_problems(kind="online")
    assert "heat2d" in names and "darcy" not in names and "burgers" not in names
    assert all(callable(getattr(_REGISTRY[n], "simulate", None)) for n in names)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_max_seconds_follows_the_toml_rule(tmp_path, value):
    cfg = write(tmp_path / "s.toml", tiny())
    refused(runner.invoke(app, ["online", "run", str(cfg), "--out", str(tmp_path / "r"),
                                       "--max-seconds", value]), "max_seconds")
    assert not (tmp_path / "r").exists()
    cfg = write(tmp_path / "t.toml", tiny(study={"max_seconds": float(value)}))
    refused(runner.invoke(app, ["online", "run", str(cfg), "--out", str(tmp_path / "r")]),
                   "max_seconds")


@pytest.mark.parametrize("section, key, value", [
    ("study", "n", True), ("study", "n", "8"), ("study", "n", 8.0),
    ("study", "seed", -1), ("sampler", "seed", -2), ("validation", "seed", -3),
    ("executor", "workers", "2"), ("buffer", "capacity", 20.0),
])
def test_strict_types_one_rule_per_key(tmp_path, section, key, value):
    cfg = write(tmp_path / "s.toml", tiny(**{section: {key: value}}))
    refused(runner.invoke(app, ["online", "run", str(cfg), "--out", str(tmp_path / "r")]),
                   f"{section}.{key}")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flags", [
    ["--workers", "0", "--sampler", "nosuch"], ["--sampler", "nosuch"], ["--fail-rate", "5"],
    ["--out", "ELSE"], ["--seeds", "3"], ["--num-threads", "1"],
])
def test_resume_refuses_flags_it_would_ignore(tmp_path, flags):
    run = tmp_path / "run"
    run.mkdir()
    flags = [str(tmp_path / "else") if f == "ELSE" else f for f in flags]
    res = runner.invoke(app, ["online", "resume", str(run), *flags, "--no-progress"])
    err = refused(res, f"online resume does not take {flags[0]}", "config.toml",
                  "--max-seconds, --no-progress, --restart and --trust")
    assert flags[1] not in err                       # named by the option, not its value
    assert sorted(tmp_path.rglob("*")) == [run]      # nothing written


def test_resume_of_a_finished_run_changes_nothing(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    res = runner.invoke(app, ["online", "resume", str(run), "--no-progress"])
    assert res.exit_code == 0 and "is finished" in res.output, res.output
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before
    assert json.loads(before["summary.json"])["sessions"] == 1


def test_lost_checkpoint_requires_restart(finished_run, tmp_path, monkeypatch):
    from wheretolearn.online import study

    calls = []

    def fake_resume(run_dir, **kw):          # the study itself is tested in tests/online
        from wheretolearn.report.runfolder import StudyResult

        calls.append(run_dir)
        summary = {**json.loads((finished_run / "summary.json").read_text()), "sessions": 2}
        return StudyResult(None, summary, Path(run_dir))

    monkeypatch.setattr(study, "resume_online_study", fake_resume)
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "stopped": "max_seconds"}))
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    (run / "checkpoint.pt").unlink(missing_ok=True)
    refused(runner.invoke(app, ["online", "resume", str(run), "--no-progress"]),
                   "no usable checkpoint", "--restart")
    assert calls == []
    res = runner.invoke(app, ["online", "resume", str(run), "--restart", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "starting the study again from nothing" in res.stderr and calls == [run]


def test_restart_with_a_checkpoint_is_refused(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "summary.json").unlink()
    refused(runner.invoke(app, ["online", "resume", str(run), "--restart"]),
                   "has a checkpoint")


def test_wrong_paths_are_named(tmp_path, finished_run):
    res = runner.invoke(app, ["online", "resume"])                    # prints its help
    assert res.exit_code == 2 and "DIR" in res.output and "--trust" in res.output
    refused(runner.invoke(app, ["online", "resume", "--no-progress"]), "Missing argument 'DIR'")
    refused(runner.invoke(app, ["online", "run", str(finished_run), "--out", str(tmp_path / "r")]),
                   "is a folder, not a study configuration", "online resume")
    cfg = write(tmp_path / "s.toml", tiny())
    (tmp_path / "afile").write_text("x")
    refused(runner.invoke(app, ["online", "run", str(cfg), "--out", str(tmp_path / "afile")]),
                   "is a file")
    assert (tmp_path / "afile").read_text() == "x"
    bilevel = tmp_path / "bilevel"
    bilevel.mkdir()
    (bilevel / "config.toml").write_text('problem = "sobol-g"\ndim = 2\nsteps = 3\n')
    err = refused(runner.invoke(app, ["online", "resume", str(bilevel)]),
                         "is a bilevel run folder")
    assert "unknown config key" not in err


def test_a_table_error_does_not_dump_the_config(tmp_path):
    cfg = write(tmp_path / "s.toml", tiny(buffer={"capacity": 4, "watermark": 10,
                                                 "policy": "uniform"}))
    err = refused(runner.invoke(app, ["online", "run", str(cfg), "--out", str(tmp_path / "r")]),
                         "watermark")
    assert len(err) < 300 and "'policy'" not in err, err


def test_seed_num_threads_queue_walltime_flags(tmp_path):
    cfg = write(tmp_path / "s.toml", tiny())
    res = runner.invoke(app, ["online", "run", str(cfg), "--cluster", "slurm", "--partition",
                              "debug", "--walltime", "00:05:00", "--print-job-script"])
    assert res.exit_code == 0, res.output
    assert "-p debug" in res.output and "00:05:00" in res.output
    from wheretolearn.online.config import load_online_config

    base = load_online_config(str(cfg))
    assert base.study.seed == 1
    refused(runner.invoke(app, ["online", "run", str(cfg), "--out", str(tmp_path / "r"),
                                       "--seed", "-1"]), "study.seed")
    refused(runner.invoke(app, ["online", "run", str(cfg), "--out", str(tmp_path / "r"),
                                       "--num-threads", "0"]), "training.torch_threads")


def test_load_model_predicts_what_the_run_validated(finished_run):
    """Round trip: the loaded surrogate, fed the held-out simulations' parameters and steps,
    reproduces the final validation error in summary.json (against the true solver)."""
    import numpy as np

    import wheretolearn
    from wheretolearn.online.config import load_online_config
    from wheretolearn.online.study import validation_set
    from wheretolearn.problems import get_problem

    model = wheretolearn.load_model(finished_run)
    cfg = load_online_config(str(finished_run / "config.toml"))
    problem = get_problem("heat2d", **cfg.study.problem_options())
    bounds = np.asarray(problem.parameter_bounds, dtype=np.float64)
    params, _, y = validation_set(problem, bounds, n_val=cfg.validation.n_val,
                                  seed=cfg.validation.seed)
    n_steps = problem.n_steps
    steps = np.tile(np.arange(n_steps), len(params))
    pred = model(np.repeat(params, n_steps, axis=0), steps)
    assert pred.shape == (len(params) * n_steps, 8, 8)
    errors = (np.linalg.norm((pred.reshape(len(steps), -1) - y).astype(np.float64), axis=1)
              / np.linalg.norm(y.astype(np.float64), axis=1))
    summary = json.loads((finished_run / "summary.json").read_text())
    assert errors.mean() == pytest.approx(summary["val_error"]["mean"], rel=1e-4)
    assert model(params[0], 0).shape == (8, 8)
    with pytest.raises(ValueError, match="steps must be integers in 0..3"):
        model(params, 4)


def test_compare_puts_runs_side_by_side(finished_run, tmp_path):
    summary = json.loads((finished_run / "summary.json").read_text())
    fig = tmp_path / "cmp.png"
    res = runner.invoke(app, ["compare", str(finished_run), str(finished_run), "--figure",
                              str(fig)])
    assert res.exit_code == 0, res.output
    assert f"{summary['val_error']['mean']:.4g}" in res.output
    assert f"{summary['val_error']['max']:.4g}" in res.output and "online" in res.output
    assert fig.read_bytes()[:4] == b"\x89PNG"
    refused(runner.invoke(app, ["compare", str(finished_run), "--figure", str(fig)]),
                   "already exists")
    refused(runner.invoke(app, ["compare", str(tmp_path)]), "no readable summary.json")
