"""RunFolder: atomic creation, refusal of existing folders, writers."""

import json
import math
import tomllib

import numpy as np
import pytest
import torch

from wheretolearn.report.runfolder import RunFolder, to_jsonable


def test_success_writes_all_files_and_leaves_no_staging(tmp_path):
    out = tmp_path / "run"
    with RunFolder(out) as run:
        run.write_config_toml({"problem": "sobol-g", "eval_n": [1, 2], "skip": None,
                               "nested": {"a": 1.5}})
        for step in range(3):
            run.append_metrics({"step": step, "err": torch.tensor(0.5 / (step + 1))})
        run.write_summary({"final": np.float64(0.25), "cov": np.eye(2)})
        run.figure_path("error").write_bytes(b"png")
        assert not out.exists()  # nothing visible until commit
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in out.iterdir()) == [".wheretolearn.json", "config.toml",
                                                     "figures", "metrics.jsonl", "summary.json"]
    cfg = tomllib.loads((out / "config.toml").read_text())
    assert cfg == {"problem": "sobol-g", "eval_n": [1, 2], "nested": {"a": 1.5}}
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 1, 2]
    assert json.loads(lines[1])["err"] == pytest.approx(0.25)
    assert json.loads((out / "summary.json").read_text())["cov"] == [[1.0, 0.0], [0.0, 1.0]]
    assert (out / "figures" / "error.png").is_file()


def test_exception_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        with RunFolder(out) as run:
            run.append_metrics({"step": 0})
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_run_folder_is_refused_then_overwritten_only_after_success(tmp_path):
    out = tmp_path / "run"
    with RunFolder(out) as run:
        run.write_summary({"x": 0})
    assert (out / ".wheretolearn.json").is_file()          # the project's marker
    with pytest.raises(FileExistsError, match="already exists"):
        RunFolder(out)
    # a failed overwrite keeps the old run
    with pytest.raises(ValueError):
        with RunFolder(out, overwrite=True):
            raise ValueError("fail")
    assert json.loads((out / "summary.json").read_text()) == {"x": 0}
    with RunFolder(out, overwrite=True) as run:
        run.write_summary({"x": 1})
    assert sorted(p.name for p in out.iterdir()) == [".wheretolearn.json", "summary.json"]
    assert json.loads((out / "summary.json").read_text()) == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_overwrite_never_replaces_a_folder_with_user_files(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not written by wheretolearn"):
            RunFolder(out, overwrite=overwrite)
    assert (out / "old.txt").read_text() == "keep"


def test_output_created_during_the_run_names_where_the_files_are(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FileExistsError, match="files are kept in") as info:
        with RunFolder(out) as run:
            run.write_summary({"x": 1})
            out.mkdir()
            (out / "other.txt").write_text("someone else's run")
    staging = run.staging
    assert str(staging) in str(info.value)
    assert json.loads((staging / "summary.json").read_text()) == {"x": 1}
    assert sorted(p.name for p in out.iterdir()) == ["other.txt"]


def test_empty_existing_folder_is_accepted(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with RunFolder(out) as run:
        run.write_summary({})
    assert (out / "summary.json").is_file()


def test_jsonable_and_bad_names(tmp_path):
    assert to_jsonable({"a": (1, math.nan), "b": np.int64(3)}) == {"a": [1, None], "b": 3}
    with pytest.raises(TypeError, match="object"):
        to_jsonable(object())
    with RunFolder(tmp_path / "r") as run:
        with pytest.raises(ValueError, match="inside the run"):
            run.file("../escape.txt")


def test_reopen_writes_in_place_keeps_files_on_error_and_records_paths_on_commit(tmp_path):
    from wheretolearn._ownership import MARKER, check_replaceable, list_tree

    out = tmp_path / "run"
    with RunFolder(out) as run:
        run.write_config_toml({"a": 1})
    assert json.loads((out / MARKER).read_text())["paths"] == ["config.toml"]
    with pytest.raises(RuntimeError, match="boom"):
        with RunFolder.reopen(out) as run:
            assert run.path == out.absolute()
            # in progress: no path list, the run-folder layout decides what is ours
            assert "paths" not in json.loads((out / MARKER).read_text())
            run.append_metrics({"batch": 1})
            run.append_metrics({"batch": 2})
            raise RuntimeError("boom")
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2   # kept for a resume
    assert check_replaceable(out, "run", overwrite=True)
    run = RunFolder.reopen(out)
    assert run.truncate_metrics(1) == [{"batch": 1}]
    assert (out / "metrics.jsonl").read_text() == '{"batch": 1}\n'
    run.write_summary({"x": 1.5})
    run.figure_path("loss").write_bytes(b"png")
    assert run.commit() == out.absolute()
    record = json.loads((out / MARKER).read_text())
    assert record["paths"] == sorted(list_tree(out))
    assert "summary.json" in record["paths"] and "figures/loss.png" in record["paths"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("make", ["absent", "file"])
def test_reopen_refuses_what_is_not_an_existing_folder(tmp_path, make):
    out = tmp_path / "run"
    if make == "file":
        out.write_text("x")
    with pytest.raises(ValueError, match="existing run folder"):
        RunFolder.reopen(out)
    with pytest.raises(ValueError, match="n_lines"):
        RunFolder.reopen(tmp_path).truncate_metrics(-1)
