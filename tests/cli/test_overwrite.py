"""``--overwrite`` replaces only what wheretolearn wrote (issue 16 item 1: data loss).

Each case: a user's folder, a foreign zarr store, a plain file, an output of the other kind
and an output of ours with a user's file added are refused with one ``error:`` line and
exit 2, untouched; an earlier output of ours (also one written by a previous version,
without the marker) is replaced, and only once the new one is complete.
"""

import json

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from wheretolearn.cli import app
from wheretolearn.datasets import generate_dataset, open_dataset
from wheretolearn.datasets import generate as gen_module

runner = CliRunner()
BURGERS = ["-o", "n=16", "-o", "n_steps=5"]
TINY = ("n_train = 12\nsteps = 2\neval_n = [8]\nrepeats = 1\nn_measures = 2\nn_seen = 20\n"
        "n_unseen = 30\nbaselines = []\n")


def _one_error_line(res, needle: str) -> None:
    err = res.stderr.strip()
    assert res.exit_code == 2, res.output
    assert err.startswith("error: ") and "\n" not in err and needle in err, err


def _generate(out, *extra):
    return runner.invoke(app, ["generate", "burgers", "--n", "3", "--out", str(out), "--workers",
                               "0", "--no-progress", *BURGERS, *extra])


def _bilevel(tmp_path, out, *extra):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    return runner.invoke(app, ["bilevel", "--problem", "sobol-g", "--dim", "2", "--config",
                               str(cfg), "--out", str(out), "--no-progress", *extra])


def _user_folder(path):
    path.mkdir()
    (path / "thesis.txt").write_text("three years of work")
    return lambda: (path / "thesis.txt").read_text() == "three years of work"


def _foreign_store(path):
    g = zarr.open_group(str(path), mode="w")
    g.create_array("temperature", data=np.arange(4.0))
    g.attrs["owner"] = "someone else"
    return lambda: np.array_equal(zarr.open_group(str(path), mode="r")["temperature"][...],
                                  np.arange(4.0))


def _plain_file(path):
    path.write_text("data")
    return lambda: path.read_text() == "data"


@pytest.mark.parametrize("make, needle", [
    (_user_folder, "not written by wheretolearn"),
    (_foreign_store, "not written by wheretolearn"),
    (_plain_file, "is not a folder"),
])
def test_generate_overwrite_refuses_what_is_not_ours(tmp_path, make, needle):
    out = tmp_path / "x.zarr"
    intact = make(out)
    _one_error_line(_generate(out, "--overwrite"), needle)
    assert intact()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.zarr"]   # no staging left


@pytest.mark.parametrize("make, needle", [
    (_user_folder, "not written by wheretolearn"),
    (_foreign_store, "not written by wheretolearn"),
    (_plain_file, "is not a folder"),
])
def test_bilevel_overwrite_refuses_what_is_not_ours(tmp_path, make, needle):
    out = tmp_path / "run"
    intact = make(out)
    _one_error_line(_bilevel(tmp_path, out, "--overwrite"), needle)
    assert intact()


def test_outputs_of_the_other_kind_are_not_replaced(tmp_path):
    store = tmp_path / "d.zarr"
    assert _generate(store).exit_code == 0
    _one_error_line(_bilevel(tmp_path, store, "--overwrite"), "holds a wheretolearn data set")
    assert open_dataset(store)["outputs"].shape == (3, 16)
    run = tmp_path / "run"
    assert _bilevel(tmp_path, run).exit_code == 0
    _one_error_line(_generate(run, "--overwrite"), "holds a wheretolearn run folder")
    assert (run / "summary.json").is_file()


def test_our_outputs_with_a_user_file_added_are_not_replaced(tmp_path):
    store = tmp_path / "d.zarr"
    assert _generate(store).exit_code == 0
    (store / "notes.txt").write_text("mine")
    _one_error_line(_generate(store, "--seed", "4", "--overwrite"), "'notes.txt'")
    assert (store / "notes.txt").read_text() == "mine"
    run = tmp_path / "run"
    assert _bilevel(tmp_path, run).exit_code == 0
    (run / "analysis.ipynb").write_text("{}")
    _one_error_line(_bilevel(tmp_path, run, "--overwrite"), "'analysis.ipynb'")
    assert (run / "analysis.ipynb").read_text() == "{}"


def test_our_outputs_are_replaced_including_those_of_earlier_versions(tmp_path):
    store = tmp_path / "d.zarr"
    assert _generate(store).exit_code == 0
    g = zarr.open_group(str(store), mode="r+")
    del g.attrs["created_by"]                       # as written before the attribute existed
    res = _generate(store, "--seed", "4", "--overwrite")
    assert res.exit_code == 0, res.output
    assert open_dataset(store)["attrs"]["seed"] == 4
    run = tmp_path / "run"
    assert _bilevel(tmp_path, run).exit_code == 0
    (run / ".wheretolearn.json").unlink()           # a run folder of an earlier version
    res = _bilevel(tmp_path, run, "--overwrite", "--seed", "7")
    assert res.exit_code == 0, res.output
    assert json.loads((run / "summary.json").read_text())["metatest"]["seed"] == 7
    assert (run / ".wheretolearn.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr", "run", "tiny.toml"]


def test_a_failed_overwrite_keeps_the_old_store(tmp_path, monkeypatch):
    store = tmp_path / "d.zarr"
    generate_dataset("burgers", 3, store, options={"n": 16, "n_steps": 5}, workers=0,
                     progress=False)
    before = open_dataset(store)["outputs"]

    def crash(problem, x):
        raise RuntimeError("solver diverged")

    monkeypatch.setattr(gen_module, "_evaluate_chunk", crash)
    with pytest.raises(RuntimeError, match="solver diverged"):
        generate_dataset("burgers", 3, store, options={"n": 16, "n_steps": 5}, seed=4,
                         workers=0, progress=False, overwrite=True)
    np.testing.assert_array_equal(open_dataset(store)["outputs"], before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr"]
