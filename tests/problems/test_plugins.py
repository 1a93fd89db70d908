"""User problems by import path, by file path and by installed plugin name; the online
contract checked up front."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from wheretolearn.problems import (available_problems, check_online_contract, get_problem,
                                   problem_factory, problem_spec)
from wheretolearn.problems.plugins import canonical_spec

USER_MODULE = textwrap.dedent('''
    import numpy as np
    from wheretolearn.problems import SimulatorProblem

    class Decay(SimulatorProblem):
        """u_s = a * exp(-k (s + 1) dt) * ones(m): a toy simulator with a known answer."""
        name = "decay"

        def __init__(self, *, m=4, n_steps=6, dt=0.1):
            super().__init__([[1.0, 2.0], [0.5, 1.5]], n_steps=n_steps, field_shape=(m,),
                             names=["a", "k"])
            self.m, self.dt = m, dt

        def simulate(self, params):
            a, k = params
            for s in range(self.n_steps):
                yield s, np.full(self.m, a * np.exp(-k * (s + 1) * self.dt))

    def make_decay(**options):
        return Decay(**options)

    def not_a_problem():
        return 42
''')


def decay_truth(a, k, m=4, n_steps=6, dt=0.1):
    return a * np.exp(-k * dt * np.arange(1, n_steps + 1))[:, None] * np.ones(m)


@pytest.fixture
def user_pkg(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "wtl_user_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "solvers.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield tmp_path / "site"
    for name in [m for m in sys.modules if m.startswith("wtl_user_pkg")]:
        del sys.modules[name]


def test_import_path_with_keyword_options(user_pkg):
    prob = get_problem("wtl_user_pkg.solvers:make_decay", m=2, n_steps=3)
    out = prob(np.array([[1.5, 1.0]]))
    np.testing.assert_allclose(out[0], decay_truth(1.5, 1.0, m=2, n_steps=3), rtol=1e-6)
    assert problem_spec(prob) == {"name": "wtl_user_pkg.solvers:make_decay",
                                  "options": {"m": 2, "n_steps": 3}}
    np.testing.assert_allclose(check_online_contract(prob), [[1.0, 2.0], [0.5, 1.5]])


def test_file_path_spec_is_made_absolute(tmp_path):
    (tmp_path / "mysolver.py").write_text(USER_MODULE)
    spec = canonical_spec("mysolver.py:Decay", base=tmp_path)
    assert spec == f"{tmp_path.resolve() / 'mysolver.py'}:Decay"
    prob = get_problem(spec)
    np.testing.assert_allclose(prob(np.array([[2.0, 0.5]]))[0], decay_truth(2.0, 0.5),
                               rtol=1e-6)


@pytest.mark.parametrize("spec, match", [
    ("wtl_no_such_pkg.mod:f", "cannot import 'wtl_no_such_pkg.mod'.*ModuleNotFoundError"),
    ("wtl_user_pkg.solvers:missing", "has no attribute 'missing'"),
    ("wtl_user_pkg.solvers:not_a_problem", "returned a int, not a wheretolearn Problem"),
    ("/nonexistent/solver.py:make", "does not exist"),
    ("no-such-problem", "unknown problem 'no-such-problem'; choose one of .*heat2d"),
])
def test_bad_specs_raise_value_errors_naming_them(user_pkg, spec, match):
    with pytest.raises(ValueError, match=match):
        get_problem(spec)


def test_online_contract_names_everything_missing():
    with pytest.raises(ValueError) as err:
        check_online_contract(get_problem("sobol-g", dim=3))
    msg = str(err.value)
    assert msg.startswith("problem 'sobol-g' does not meet the online contract")
    for missing in ("no simulate(params)", "n_steps must be a positive int",
                    "no parameter_bounds", "no parameter_names", "output_shape must be"):
        assert missing in msg
    assert "\n" not in msg
    heat = get_problem("heat2d", n=8, n_steps=4)
    np.testing.assert_allclose(check_online_contract(heat), [[100.0, 500.0]] * 5)
    with pytest.raises(ValueError, match="input_shape must be \\(2,\\)"):
        check_online_contract(heat, bounds=[[0, 1], [0, 1]])


DIST_INFO = {
    "METADATA": "Metadata-Version: 2.1\nName: wtl-demo-plugin\nVersion: 0.1\n",
    "entry_points.txt": "[wheretolearn.problems]\ndemo-decay = wtl_user_pkg.solvers:make_decay\n",
    "top_level.txt": "wtl_user_pkg\n",
}


def install_plugin(site: Path) -> None:
    """An installed distribution as pip leaves it: package + dist-info with entry points."""
    info = site / "wtl_demo_plugin-0.1.dist-info"
    info.mkdir()
    for name, text in DIST_INFO.items():
        (info / name).write_text(text)


def test_installed_plugin_is_found_by_name(user_pkg):
    assert "demo-decay" not in available_problems()
    install_plugin(user_pkg)
    assert "demo-decay" in available_problems()
    prob = get_problem("demo-decay", n_steps=2)
    np.testing.assert_allclose(prob(np.array([[1.0, 1.0]]))[0],
                               decay_truth(1.0, 1.0, n_steps=2), rtol=1e-6)
    # kinds: a plugin is not built in, and has no built-in factory
    assert "demo-decay" not in available_problems(kind="builtin")
    assert problem_factory("demo-decay") is None


def test_problem_kinds_and_factories():
    builtin = available_problems(kind="builtin")
    assert {"sobol-g", "heat2d", "grayscott", "darcy", "external"} <= set(builtin)
    assert set(builtin) <= set(available_problems())
    # online: the built-ins with a time-stepping simulate, without the command runner
    assert available_problems(kind="online") == ["grayscott", "heat2d"]
    assert problem_factory("heat2d") is type(get_problem("heat2d", n=8, n_steps=2))
    assert problem_factory("no-such") is None
    # flat options: the constructor's, an option object's replaced by its fields
    import inspect

    from wheretolearn.problems import problem_signature

    assert problem_signature("heat2d") == inspect.signature(problem_factory("heat2d"))
    assert "noise_seed" in problem_signature("grayscott").parameters
    assert problem_signature("no-such") is None
    with pytest.raises(ValueError, match="kind must be one of all, builtin, online"):
        available_problems(kind="ama")


PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "wtl-pip-plugin"
version = "0.1"

[project.entry-points."wheretolearn.problems"]
pip-decay = "wtl_pip_plugin.solvers:make_decay"
"""


def test_pip_installed_plugin_by_name_from_the_command_line(tmp_path):
    """A real pip install (offline, into a folder on PYTHONPATH, the venv untouched); a
    separate process and its Dask workers find the plugin by name through their
    environment, not through anything this process imported."""
    src = tmp_path / "src"
    (src / "wtl_pip_plugin").mkdir(parents=True)
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "wtl_pip_plugin" / "__init__.py").write_text("")
    (src / "wtl_pip_plugin" / "solvers.py").write_text(USER_MODULE)
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                        "--no-build-isolation", "--quiet", "--target", str(site), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "d.zarr"
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run([sys.executable, "-m", "wheretolearn", "generate", "pip-decay",
                        "--n", "6", "--out", str(out), "--workers", "1", "--no-progress",
                        "-o", "n_steps=3"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    from wheretolearn.datasets import open_dataset

    ds = open_dataset(out)
    want = np.stack([decay_truth(a, k, n_steps=3) for a, k in ds["inputs"]])
    np.testing.assert_allclose(ds["outputs"], want, rtol=1e-5)
    assert np.all((ds["inputs"] >= [1.0, 0.5]) & (ds["inputs"] <= [2.0, 1.5]))


def test_a_problem_records_how_to_rebuild_it():
    p = get_problem("sobol-g", dim=3)
    assert problem_spec(p) == {"name": "sobol-g", "options": {"dim": 3}}
    opts = {"dim": 2}
    assert p.record_spec("sobol-g", opts) is p
    opts["dim"] = 5                                  # a copy was recorded
    assert problem_spec(p) == {"name": "sobol-g", "options": {"dim": 2}}
