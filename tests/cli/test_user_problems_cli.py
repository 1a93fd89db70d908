"""Offline commands with user problems: ``generate`` runs an external program once per
sample on Dask workers; ``bilevel`` takes a user function of vectors by file path."""

import json
import textwrap
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from wheretolearn.cli import app
from wheretolearn.datasets import open_dataset

FAKE = str(Path(__file__).resolve().parents[1] / "problems" / "fake_solver.py")
runner = CliRunner()


def test_generate_runs_an_external_program_once_per_sample_on_dask(tmp_path):
    work = tmp_path / "work"
    command = ["{python}", FAKE, "ok", "{outdir}", "3", "{p0}"]
    res = runner.invoke(app, [
        "generate", "external", "--n", "5", "--out", str(tmp_path / "d.zarr"), "--workers",
        "2", "--chunk", "1", "--no-progress", "-o", f"command={json.dumps(command)}",
        "-o", "bounds=[[1.0, 2.0]]", "-o", "n_steps=3", "-o", "field_shape=[3]",
        "-o", "keep_outputs=true", "-o", f"workdir={work}"])
    assert res.exit_code == 0, res.output
    ds = open_dataset(tmp_path / "d.zarr")
    p0 = ds["inputs"][:, 0]
    assert ds["outputs"].shape == (5, 3, 3)
    want = p0[:, None, None] * np.arange(1, 4)[None, :, None] * np.ones(3)
    np.testing.assert_allclose(ds["outputs"], want, rtol=1e-6)
    assert np.all((p0 >= 1.0) & (p0 <= 2.0))
    assert len(list(work.glob("wtl-*"))) == 5             # one process run per sample


FUNCTION = textwrap.dedent('''
    import torch
    from wheretolearn.problems import Problem

    class Bowl(Problem):
        """f(x) = sum_i x_i^2, a user function of vectors."""
        name = "bowl"

        def __init__(self, dim=2):
            self.dim = dim

        @property
        def input_shape(self):
            return (self.dim,)

        @property
        def output_shape(self):
            return ()

        def _evaluate(self, u):
            return (u ** 2).sum(dim=1)

    class Field(Bowl):
        @property
        def output_shape(self):
            return (self.dim,)

        def _evaluate(self, u):
            return u ** 2
''')

TINY = {"n_train": 20, "steps": 3, "eval_n": [16], "repeats": 1, "n_measures": 2,
        "n_seen": 30, "n_unseen": 60}


def test_bilevel_takes_a_user_function_by_file_path(tmp_path, monkeypatch):
    (tmp_path / "bowl.py").write_text(FUNCTION)
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "tiny.toml"
    cfg.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in TINY.items()))
    res = runner.invoke(app, ["bilevel", "--problem", "bowl.py:Bowl", "--dim", "3",
                              "--config", str(cfg), "--out", str(tmp_path / "run"),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["problem"] == f"{tmp_path.resolve()}/bowl.py:Bowl" and summary["dim"] == 3
    res = runner.invoke(app, ["bilevel", "--problem", "bowl.py:Field", "--dim", "3",
                              "--config", str(cfg), "--out", str(tmp_path / "run2"),
                              "--no-progress"])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: problem ")
    assert "not a function of vectors" in lines[0] and "output_shape must be ()" in lines[0]
    assert not (tmp_path / "run2").exists()


def test_generate_reports_a_crashing_program_in_one_line(tmp_path):
    command = ["{python}", FAKE, "crash", "{outdir}", "4", "{p0}"]
    res = runner.invoke(app, [
        "generate", "external", "--n", "2", "--out", str(tmp_path / "d.zarr"), "--workers",
        "1", "--chunk", "1", "--no-progress", "-o", f"command={json.dumps(command)}",
        "-o", "bounds=[[1.0, 2.0]]", "-o", "n_steps=4", "-o", "field_shape=[3]"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: simulation ")
    assert "exited with status 3 after 2 of 4 steps" in lines[0]
    assert "fatal error at step 2" in lines[0]
