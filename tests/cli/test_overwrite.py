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
from wheretolearn.datasets import ComputeOptions, InputSampling, generate_dataset, open_dataset
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
    local = ComputeOptions(workers=0, progress=False)
    generate_dataset("burgers", 3, store, options={"n": 16, "n_steps": 5}, compute=local)
    before = open_dataset(store)["outputs"]

    def crash(problem, x):
        raise RuntimeError("solver diverged")

    monkeypatch.setattr(gen_module, "_evaluate_chunk", crash)
    with pytest.raises(RuntimeError, match="solver diverged"):
        generate_dataset("burgers", 3, store, options={"n": 16, "n_steps": 5},
                         sampling=InputSampling(seed=4), compute=local, overwrite=True)
    np.testing.assert_array_equal(open_dataset(store)["outputs"], before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr"]


# ---------------------------------------------------------------- issue 24 item 3: recursive
def _finished_run(tmp_path, name="run"):
    run = tmp_path / name
    res = _bilevel(tmp_path, run)
    assert res.exit_code == 0, res.output
    return run


@pytest.mark.parametrize("rel", ["figures/mine.png", "figures/notes.txt",
                                 "figures/earlier/summary.json", "checkpoints/thesis.txt",
                                 "figures/.hidden"])
def test_user_files_below_the_top_level_are_never_deleted(tmp_path, rel):
    run = _finished_run(tmp_path)
    (run / rel).parent.mkdir(parents=True, exist_ok=True)
    (run / rel).write_text("mine")
    _one_error_line(_bilevel(tmp_path, run, "--overwrite"), repr(rel.split("/")[0] + "/")
                    if rel.startswith("checkpoints") else "which wheretolearn did not write")
    assert (run / rel).read_text() == "mine"


def test_a_nested_earlier_run_is_never_deleted(tmp_path):
    run = _finished_run(tmp_path)
    earlier = _finished_run(tmp_path, "earlier")
    earlier.rename(run / "figures" / "earlier")
    _one_error_line(_bilevel(tmp_path, run, "--overwrite"), "'figures/earlier/'")
    assert (run / "figures" / "earlier" / "summary.json").is_file()


@pytest.mark.parametrize("record", [
    {"files": ["thesis.txt"]},
    {"paths": ["thesis.txt", "../thesis.txt", "/etc/passwd", "./thesis.txt", "figures/../x"]},
])
def test_a_forged_marker_entry_gives_no_permission(tmp_path, record):
    run = _finished_run(tmp_path)
    marker = run / ".wheretolearn.json"
    found = json.loads(marker.read_text())
    forged = {k: found.get(k, []) + v for k, v in record.items()}
    marker.write_text(json.dumps({**found, **forged}))
    (run / "thesis.txt").write_text("three years of work")
    _one_error_line(_bilevel(tmp_path, run, "--overwrite"), "'thesis.txt'")
    assert (run / "thesis.txt").read_text() == "three years of work"


def test_the_marker_records_every_path_written(tmp_path):
    run = _finished_run(tmp_path)
    record = json.loads((run / ".wheretolearn.json").read_text())
    on_disk = sorted(str(p.relative_to(run)) + ("/" if p.is_dir() else "")
                     for p in run.rglob("*") if p.name != ".wheretolearn.json")
    assert sorted(record["paths"]) == on_disk
    assert "figures/" in on_disk and any(p.startswith("figures/") and p.endswith(".png")
                                         for p in on_disk)


def test_a_user_png_among_the_figures_is_kept_when_recorded_paths_are_known(tmp_path):
    run = _finished_run(tmp_path)
    (run / "figures" / "error_vs_step_annotated.png").write_bytes(b"mine")
    _one_error_line(_bilevel(tmp_path, run, "--overwrite"),
                    "'figures/error_vs_step_annotated.png'")
    assert (run / "figures" / "error_vs_step_annotated.png").read_bytes() == b"mine"


def test_legacy_run_folders_allow_only_the_file_kinds_written_there(tmp_path):
    run = _finished_run(tmp_path)
    (run / ".wheretolearn.json").unlink()           # an earlier version: no record
    (run / "figures" / "notes.txt").write_text("mine")
    _one_error_line(_bilevel(tmp_path, run, "--overwrite"), "'figures/notes.txt'")
    assert (run / "figures" / "notes.txt").read_text() == "mine"
    (run / "figures" / "notes.txt").unlink()
    res = _bilevel(tmp_path, run, "--overwrite", "--seed", "3")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("where", ["figures/link.png", "link.txt", "figures/linkdir"])
def test_symlinks_inside_are_refused_and_their_targets_untouched(tmp_path, where):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    run = _finished_run(tmp_path)
    target = outside if where.endswith("dir") else outside / "precious.txt"
    (run / where).symlink_to(target)
    _one_error_line(_bilevel(tmp_path, run, "--overwrite"), repr(where))
    assert (outside / "precious.txt").read_text() == "keep"
    assert (run / where).is_symlink()


def test_user_files_deep_inside_a_store_are_never_deleted(tmp_path):
    store = tmp_path / "d.zarr"
    assert _generate(store).exit_code == 0
    for rel, named in (("inputs/notes.txt", "'inputs/notes.txt'"),
                       ("outputs/c/mine.txt", "'outputs/c/mine.txt'"),
                       ("coords/old/data.bin", "'coords/old/'")):
        (store / rel).parent.mkdir(parents=True, exist_ok=True)
        (store / rel).write_text("mine")
        _one_error_line(_generate(store, "--seed", "4", "--overwrite"), named)
        assert (store / rel).read_text() == "mine"
        (store / rel).unlink()


def test_deletion_removes_only_what_wheretolearn_wrote(tmp_path):
    from wheretolearn._ownership import remove_owned

    run = _finished_run(tmp_path)
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    # appeared after the check (a race): kept, as are links and their targets
    (run / "figures" / "late.txt").write_text("mine")
    (run / "figures" / "link.png").symlink_to(outside)
    kept = remove_owned(run, "run")
    assert sorted(kept) == ["figures/late.txt", "figures/link.png"]
    assert (run / "figures" / "late.txt").read_text() == "mine"
    assert outside.read_text() == "keep"
    assert sorted(p.name for p in run.iterdir()) == ["figures"]
    assert not (run / "summary.json").exists()
