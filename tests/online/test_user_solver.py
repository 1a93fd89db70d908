"""Online studies of user simulators: an external program (the worked example and a faulty
one) and a Python problem imported by file path, on a real LocalCluster."""

import importlib.util
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from typer.testing import CliRunner

from wheretolearn.cli import app
from wheretolearn.online.config import OnlineStudyConfig, load_online_config
from wheretolearn.online.study import run_online_study

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "user_solver"
FAKE = ROOT / "tests" / "problems" / "fake_solver.py"


def small(cfg, **sections):
    data = cfg.model_dump() if isinstance(cfg, OnlineStudyConfig) else cfg
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return OnlineStudyConfig.model_validate(data)


def ledger(out):
    return {s["sim_id"]: s for s in json.loads((out / "ledger.json").read_text())["simulations"]}


def test_example_solver_is_advection_diffusion():
    """The example's fields conserve mass and their peak travels at the velocity."""
    spec = importlib.util.spec_from_file_location("user_solver", EXAMPLE / "solver.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    nx, dt = 256, 0.02
    x = np.arange(nx) / nx
    steps = list(mod.solve(1.0, 1e-4, 0.3, nx=nx, steps=10, dt=dt))
    mass0 = np.sqrt(2 * np.pi) * mod.WIDTH               # integral of the initial bump
    for s, u in steps:
        assert np.mean(u) == pytest.approx(mass0, rel=1e-6)
        assert x[np.argmax(u)] == pytest.approx(0.3 + 1.0 * (s + 1) * dt, abs=1.5 / nx)


@pytest.mark.parametrize("protocol", ["files", pytest.param("client", marks=pytest.mark.slow)])
def test_example_study_runs_the_program_exactly_once_per_step(tmp_path, protocol):
    cfg = load_online_config(str(EXAMPLE / "study.toml"))
    cfg = small(cfg, study={"n_simulations": 6, "n_steps": 5},
                buffer={"capacity": 40, "watermark": 10},
                training={"min_batches": 20, "hidden": [16], "torch_threads": 1},
                validation={"n_val": 1, "every_batches": 10})
    command = [a if a != "20" else "5" for a in cfg.study.command]
    if protocol == "client":                 # the in-situ client: no --out, no files
        command = [a.replace("solver.py", "solver_client.py") for a in command[:-2]]
    cfg = small(cfg, study={"command": command,
                            "options": {**cfg.study.options, "protocol": protocol}})
    out = tmp_path / "run"
    summary = run_online_study(cfg, out).summary
    assert summary["stopped"] == "completed"
    assert summary["simulations_completed"] == 6 and summary["simulations_failed"] == 0
    assert summary["samples_received"] == 30 and summary["samples_duplicated"] == 0
    assert all(s["state"] == "completed" and len(s["attempts"]) == 1
               for s in ledger(out).values())
    # the run folder records how to rebuild the problem; working folders were removed
    saved = load_online_config(str(out / "config.toml"))
    assert saved.study.problem == "external"
    assert saved.study.options["cwd"] == str(EXAMPLE)


def test_failures_of_a_program_each_get_their_outcome_and_a_relaunch(tmp_path):
    cfg = OnlineStudyConfig.model_validate({
        "study": {"command": ["{python}", str(FAKE), "mixed", "{outdir}", "5", "{p0}",
                              "{attempt}"], "n_steps": 5, "n_simulations": 5, "seed": 3,
                  "options": {"field_shape": [3]}},
        "sampler": {"bounds": [[1.0, 2.0]]},
        "buffer": {"capacity": 40, "watermark": 5},
        "training": {"hidden": [8], "torch_threads": 1, "min_batches": 5},
        "executor": {"workers": 2, "simulation_timeout": 6.0, "max_retries": 3},
        "validation": {"n_val": 1, "every_batches": 5}})
    out = tmp_path / "run"
    summary = run_online_study(cfg, out).summary
    assert summary["simulations_completed"] == 5 and summary["simulations_failed"] == 0
    assert summary["samples_received"] == 25 and summary["samples_duplicated"] == 0
    sims = ledger(out)
    first = {i: sims[i]["attempts"][0] for i in range(1, 5)}
    assert first[1]["outcome"] == "crash" and "diverged (residual nan)" in first[1]["error"]
    assert "exited with status 3 after 2 of 5 steps" in first[1]["error"]
    assert first[2]["outcome"] == "timeout"                 # hang: killed, relaunched
    assert first[3]["outcome"] == "crash" and "malformed step file step_002.npy" in first[3]["error"]
    assert first[4]["outcome"] == "crash" and "status 0 after 2 of 5 steps" in first[4]["error"]
    for i in range(1, 5):
        assert sims[i]["attempts"][-1]["outcome"] == "ok"
    assert summary["retries"] >= 4


def test_a_command_gets_the_batch_jobs_cores_and_its_folder():
    cfg = OnlineStudyConfig.model_validate({
        "study": {"command": ["srun", "-n", "{cores}", "./solver", "{p0}"],
                  "options": {"field_shape": [1]}},
        "sampler": {"bounds": [[0.0, 1.0]]},
        "executor": {"simulation_timeout": 7.0},
        "cluster": {"kind": "slurm", "queue": "q", "cores": 8, "processes": 2}})
    spec = cfg.problem_spec()
    assert spec["name"] == "external"
    opts = spec["options"]
    assert (opts["cores"], opts["step_timeout"], opts["bounds"]) == (4, 14.0, [[0.0, 1.0]])
    assert opts["n_steps"] == 100 and opts["keep_outputs"] is False


USER_MODULE = textwrap.dedent('''
    import numpy as np
    from wheretolearn.problems import SimulatorProblem

    class Ramp(SimulatorProblem):
        name = "ramp"

        def __init__(self, *, m=4, n_steps=5):
            super().__init__([[0.0, 1.0], [0.0, 1.0]], n_steps=n_steps, field_shape=(m,),
                             names=["slope", "offset"])
            self.m = m

        def simulate(self, params):
            x = np.linspace(0, 1, self.m)
            for s in range(self.n_steps):
                yield s, params[0] * x * (s + 1) + params[1]
''')


def test_python_problem_by_file_path_runs_on_workers(tmp_path):
    """The workers import the file themselves (this process never imported it)."""
    (tmp_path / "ramp_solver.py").write_text(USER_MODULE)
    toml = tmp_path / "study.toml"
    toml.write_text(tomli_w.dumps({
        "study": {"problem": "ramp_solver.py:Ramp", "n_simulations": 4,
                  "options": {"m": 6, "n_steps": 3}},
        "buffer": {"capacity": 20, "watermark": 4},
        "training": {"hidden": [8], "torch_threads": 1, "min_batches": 5},
        "executor": {"workers": 2, "simulation_timeout": 30.0},
        "validation": {"n_val": 1, "every_batches": 5}}))
    cfg = load_online_config(str(toml))
    assert cfg.study.problem == f"{tmp_path.resolve()}/ramp_solver.py:Ramp"
    assert cfg.problem_spec()["options"] == {"m": 6, "n_steps": 3}
    summary = run_online_study(cfg, tmp_path / "run").summary
    assert summary["simulations_completed"] == 4 and summary["samples_received"] == 12
    assert summary["samples_duplicated"] == 0


NO_CONTRACT = textwrap.dedent('''
    from wheretolearn.problems import Problem

    class Scalar(Problem):
        """A function of vectors: no simulate, no steps, no bounds, no names."""
        input_shape = (2,)
        output_shape = ()

        def _evaluate(self, u):
            return u.sum(dim=1)
''')


@pytest.mark.parametrize("study, match", [
    ({"problem": "scalar.py:Scalar"},
     r"problem '.*scalar.py:Scalar' does not meet the online contract \(docs/user_solver.md\): "
     r"no simulate\(params\).*n_steps must be a positive int.*no parameter_bounds.*"
     r"no parameter_names"),
    ({"problem": "sobol-g", "options": {"dim": 2}}, "'sobol-g' cannot run in an online study"),
    ({"problem": "wtl_nowhere.solvers:make"}, "cannot import 'wtl_nowhere.solvers'"),
    ({"command": ["solver", "{p0}"], "options": {"field_shape": [3]}},
     "a command needs parameter bounds: set \\[sampler\\] bounds"),
    ({"command": ["solver", "{p3}"], "options": {"field_shape": [3]}}, None),
])
def test_cli_rejects_a_missing_contract_in_one_line(tmp_path, study, match):
    sections = {"study": {"n_simulations": 2, **study}}
    if "{p3}" in str(study):
        sections["sampler"] = {"bounds": [[0.0, 1.0]]}
        match = r"unknown placeholder \{p3\}"
    (tmp_path / "scalar.py").write_text(NO_CONTRACT)
    toml = tmp_path / "s.toml"
    toml.write_text(tomli_w.dumps(sections))
    res = CliRunner().invoke(app, ["online", "run", str(toml), "--out", str(tmp_path / "run"),
                                   "--no-progress"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    import re

    assert re.search(match, lines[0]), lines[0]
    assert not (tmp_path / "run").exists()


def test_problem_and_options_from_the_command_line(tmp_path, monkeypatch):
    """--problem (a file path relative to the current folder) and -o key=value reach the
    problem; resolved before anything is written."""
    (tmp_path / "scalar.py").write_text(NO_CONTRACT)
    toml = tmp_path / "s.toml"
    toml.write_text(tomli_w.dumps({"study": {"n_simulations": 2}}))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["online", "run", str(toml), "--out", "run", "--problem",
                              "scalar.py:Scalar", "--no-progress"])
    assert res.exit_code == 2
    assert f"problem '{tmp_path.resolve()}/scalar.py:Scalar' does not meet the online" \
        in res.output
    res = runner.invoke(app, ["online", "run", str(toml), "--out", "run", "-o", "bogus=1",
                              "--no-progress"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert "bogus" in res.output
    assert not (tmp_path / "run").exists()
