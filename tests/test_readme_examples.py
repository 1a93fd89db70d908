"""The README's Python examples run as written (issue 27): each ```python block is executed in
a fresh interpreter. The block that reads run folders ("Using the results") runs in a folder
where tiny versions of the runs the README's shell commands make were written first, under
the same names (``runs/heat-online``, ``runs/sobol_g``, ``runs/ama-darcy``,
``data/heat.zarr``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
RUN_FOLDER = re.compile(r"""load_model\(["']([^"']+)["']|open_zarr\(["']([^"']+)["']""")

# Tiny versions of the README's runs: same kind and problem, seconds instead of minutes.
BILEVEL = ("problem = \"sobol-g\"\ndim = 2\nn_train = 12\nsteps = 2\neval_n = [8, 16]\n"
           "repeats = 1\nn_measures = 2\nn_seen = 20\nn_unseen = 30\nbaselines = []\n")
AMA = ("problem = \"darcy\"\nn = 6\nn_measures = 3\nn_seen = 2\nn_unseen = 3\nn_train = 12\n"
       "n_opt = 4\niterations = 1\nsteps = 20\nbatch_size = 6\neval_every = 10\n"
       "retrain_rounds = 0\neval_n = [8]\nrepeats = 1\nlipschitz_samples = 1\n"
       "lipschitz_iterations = 3\nbranch_hidden = [8]\ntrunk_hidden = [8]\nwidth = 4\n"
       "adam = {lr = 0.05, steps = 2, rounds = 1}\n")
ONLINE = ("[study]\nproblem = \"heat2d\"\nn = 8\nn_steps = 100\nn_simulations = 2\nseed = 1\n"
          "[buffer]\ncapacity = 50\nwatermark = 10\n"
          "[training]\nhidden = [8]\ntorch_threads = 1\nbatch_size = 4\n"
          "[executor]\nworkers = 1\nsimulation_timeout = 20.0\n"
          "[validation]\nn_val = 1\nevery_batches = 20\n[checkpoint]\nevery_batches = 20\n")


def _make_runs(root: Path) -> None:
    from typer.testing import CliRunner

    from wheretolearn.cli import app

    for name, text in (("bilevel", BILEVEL), ("ama", AMA), ("online", ONLINE)):
        (root / f"{name}.toml").write_text(text)
    commands = [
        ["bilevel", "--config", "bilevel.toml", "--out", "runs/sobol_g", "--no-progress"],
        ["ama", "--config", "ama.toml", "--out", "runs/ama-darcy", "--no-progress",
         "--num-threads", "1"],
        ["online", "run", "online.toml", "--out", "runs/heat-online", "--no-progress"],
        ["generate", "heat2d", "--n", "2", "--out", "data/heat.zarr", "-o", "n=8",
         "-o", "output_every=10", "--workers", "1", "--no-progress"],
    ]
    cwd = Path.cwd()
    os.chdir(root)
    try:
        for args in commands:
            res = CliRunner().invoke(app, args)
            assert res.exit_code == 0, (args, res.output)
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def readme_runs(tmp_path_factory):
    """A folder holding tiny versions of the README's run folders and data set."""
    root = tmp_path_factory.mktemp("readme")
    _make_runs(root)
    return root


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 2


def test_the_runs_block_reads_only_folders_the_fixture_makes():
    named = {a or b for code in BLOCKS for a, b in RUN_FOLDER.findall(code)}
    assert named == {"runs/heat-online", "runs/sobol_g", "runs/ama-darcy", "data/heat.zarr"}
    commands = README.read_text()
    for folder in named:   # each is what a shell command of the README writes
        assert f"--out {folder}" in commands, folder


@pytest.mark.parametrize("i", range(len(BLOCKS)), ids=[f"block{i + 1}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(i, tmp_path, request):
    code = BLOCKS[i]
    cwd = request.getfixturevalue("readme_runs") if RUN_FOLDER.search(code) else tmp_path
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


# -- the docs' examples use the current names --------------------------------------------------
DOCS = sorted((README.parent / "docs").glob("*.md"))
DOC_BLOCKS = [(path.name, i, code) for path in DOCS
              for i, code in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(),
                                                  flags=re.S))]


def _imported_names(tree):
    """``{local name: object}`` for every ``from wheretolearn... import name`` in ``tree``
    (AssertionError naming the line when the module lacks it)."""
    import ast
    import importlib

    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wheretolearn"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), \
                    f"line {node.lineno}: {node.module} has no {alias.name}"
                names[alias.asname or alias.name] = getattr(module, alias.name)
    return names


@pytest.mark.parametrize("name,i,code", DOC_BLOCKS,
                         ids=[f"{name}-block{i + 1}" for name, i, _ in DOC_BLOCKS])
def test_doc_examples_import_and_call_current_names(name, i, code):
    """Every docs example (README's run above; many docs blocks continue one another or need
    data, so they are checked, not run): it parses, each name it imports from wheretolearn
    exists, and each call of such a name passes only keywords that its signature accepts
    (the renames of issue 27 leave no stale keyword behind)."""
    import ast
    import inspect

    tree = ast.parse(code)
    names = _imported_names(tree)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in names):
            continue
        try:
            sig = inspect.signature(names[node.func.id])
        except (TypeError, ValueError):
            continue
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            continue
        for kw in node.keywords:
            assert kw.arg is None or kw.arg in sig.parameters, (
                f"{name} block {i + 1} line {node.lineno}: {node.func.id}() takes no "
                f"keyword {kw.arg!r}")
