"""Tests for ``wheretolearn generate``."""

import numpy as np
import pytest
from typer.testing import CliRunner

from wheretolearn.cli import app
from wheretolearn.datasets import ComputeOptions, InputSampling, generate_dataset, open_dataset

runner = CliRunner()


def test_generate_writes_the_same_data_as_the_library(tmp_path):
    out = tmp_path / "b.zarr"
    res = runner.invoke(app, ["generate", "burgers", "--n", "5", "--out", str(out), "--workers",
                              "0", "--seed", "3", "--chunk", "2", "-o", "n=32", "-o", "n_steps=20",
                              "-m", "alpha=2.5", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "wrote 5 samples of burgers" in res.output
    ref = generate_dataset("burgers", 5, tmp_path / "ref.zarr", options={"n": 32, "n_steps": 20},
                           sampling=InputSampling(measure_params={"alpha": 2.5}, seed=3, chunk=2),
                           compute=ComputeOptions(workers=0, progress=False))
    got, want = open_dataset(out), open_dataset(ref.path)
    np.testing.assert_array_equal(got["outputs"], want["outputs"])
    assert got["attrs"]["key"] == ref.key and got["attrs"]["measure"]["alpha"] == 2.5
    again = runner.invoke(app, ["generate", "burgers", "--n", "5", "--out", str(out), "--workers",
                                "0", "--seed", "3", "--chunk", "2", "-o", "n=32", "-o",
                                "n_steps=20", "-m", "alpha=2.5", "--no-progress"])
    assert again.exit_code == 0 and "0 chunks computed, 3 reused" in again.output


def test_generate_from_toml_config_with_cli_override(tmp_path):
    cfg = tmp_path / "gen.toml"
    cfg.write_text('problem = "heat2d"\nn = 3\nworkers = 0\nseed = 1\n'
                   f'out = "{tmp_path / "h.zarr"}"\n'
                   '[options]\nn = 6\nn_steps = 4\noutput_every = 2\n'
                   '[measure]\nlow = [100.0, 100.0, 100.0, 100.0, 100.0]\n'
                   'high = [150.0, 150.0, 150.0, 150.0, 150.0]\n')
    res = runner.invoke(app, ["generate", "--config", str(cfg), "--n", "4", "--no-progress"])
    assert res.exit_code == 0, res.output
    data = open_dataset(tmp_path / "h.zarr")
    assert data["outputs"].shape == (4, 2, 6, 6) and data["inputs"].max() <= 150
    assert data["attrs"]["seed"] == 1


@pytest.mark.parametrize("args, message", [
    (["nope", "--n", "3"], "unknown problem 'nope'"),
    (["burgers", "--n", "0"], "n must be a positive integer, got 0"),
    (["burgers", "--n", "3", "-o", "foo=1"], "unknown option 'foo'"),
    (["burgers", "--n", "3", "-o", "n_steps"], "--option must look like key=value"),
    (["burgers", "--n", "3", "-m", "beta=2"], "unknown measure parameter 'beta'"),
    (["burgers", "--n", "3", "--workers", "-1"], "workers must be a non-negative integer"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, args, message):
    out = tmp_path / "bad.zarr"
    res = runner.invoke(app, ["generate", *args, "--out", str(out), "--no-progress"])
    assert res.exit_code == 2
    err = res.stderr.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_missing_required_and_bad_config(tmp_path):
    res = runner.invoke(app, ["generate", "burgers", "--n", "3"])
    assert res.exit_code == 2 and "out is required" in res.stderr
    cfg = tmp_path / "bad.toml"
    cfg.write_text('problem = "burgers"\nsamples = 3\n')
    res = runner.invoke(app, ["generate", "--config", str(cfg)])
    assert res.exit_code == 2 and "unknown config key 'samples'" in res.stderr
