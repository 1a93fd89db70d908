"""The environment refuses (issue 16 item 2): read-only file system, full disk, a file in
the way, an unreachable scheduler, damaged stores, SIGTERM. Each gives one ``error:`` line
(exit 2; 143 for SIGTERM) and leaves nothing half-written at ``--out``."""

import errno
import json
import os
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from wheretolearn.cli import app
from wheretolearn.datasets import generate as gen_module
from wheretolearn.datasets import open_dataset

runner = CliRunner()
BURGERS = ["-o", "n=16", "-o", "n_steps=5"]
TINY = ("n_train = 12\nsteps = 2\neval_n = [8]\nrepeats = 1\nn_measures = 2\nn_seen = 20\n"
        "n_unseen = 30\nbaselines = []\n")


def _generate(out, *extra, n=6):
    return runner.invoke(app, ["generate", "burgers", "--n", str(n), "--out", str(out),
                               "--workers", "0", "--chunk", "2", "--no-progress", *BURGERS,
                               *extra])


def _bilevel(tmp_path, out):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    return runner.invoke(app, ["bilevel", "--problem", "sobol-g", "--dim", "2", "--config",
                               str(cfg), "--out", str(out), "--no-progress"])


def _one_error_line(res, needle: str, code: int = 2) -> str:
    err = res.stderr.strip()
    assert res.exit_code == code, res.output
    assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert "Traceback" not in res.output
    return err


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "tiny.toml")


def _raise_on_mkdir(monkeypatch, err: int, text: str):
    real = Path.mkdir

    def mkdir(self, *a, **kw):
        if "ro" in self.parts:
            raise OSError(err, text, str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", mkdir)


def test_read_only_file_system_is_one_line(tmp_path, monkeypatch):
    _raise_on_mkdir(monkeypatch, errno.EROFS, "Read-only file system")
    _one_error_line(_generate(tmp_path / "ro" / "d.zarr"), "Read-only file system")
    _one_error_line(_bilevel(tmp_path, tmp_path / "ro" / "run"), "Read-only file system")
    assert _visible(tmp_path) == []


def test_disk_full_while_writing_is_one_line_and_keeps_the_finished_chunks_hidden(
        tmp_path, monkeypatch):
    real = zarr.Array.__setitem__
    writes = []

    def setitem(self, key, value):
        writes.append(self.path)
        if self.path == "outputs" and writes.count("outputs") == 2:
            raise OSError(errno.ENOSPC, "No space left on device", "outputs/c/1/0")
        return real(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", setitem)
    out = tmp_path / "d.zarr"
    err = _one_error_line(_generate(out), "No space left on device")
    assert "1 of 3 chunks are finished and kept in" in err and "rerun the same command" in err
    assert not out.exists()
    monkeypatch.setattr(zarr.Array, "__setitem__", real)
    res = _generate(out)                                     # resume after freeing space
    assert res.exit_code == 0 and "2 chunks computed, 1 reused" in res.output
    assert _visible(tmp_path) == ["d.zarr"]


def test_disk_full_during_a_study_leaves_no_run_folder(tmp_path, monkeypatch):
    from wheretolearn.report import runfolder

    def full(self, summary, name="summary.json"):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path / name))

    monkeypatch.setattr(runfolder.RunFolder, "write_summary", full)
    _one_error_line(_bilevel(tmp_path, tmp_path / "run"), "No space left on device")
    assert _visible(tmp_path) == []


def test_out_below_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    _one_error_line(_generate(tmp_path / "afile" / "sub"), "is a file, not a folder")
    _one_error_line(_bilevel(tmp_path, tmp_path / "afile" / "sub"), "is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "x"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address, needle", [
    (None, "cannot be reached"),
    ("notanaddress", "scheduler"),
])
def test_unreachable_scheduler_is_checked_first(tmp_path, address, needle):
    address = address or f"tcp://127.0.0.1:{_closed_port()}"
    out = tmp_path / "d.zarr"
    _one_error_line(_generate(out, "--scheduler", address), needle)
    assert _visible(tmp_path) == []


def test_a_listener_that_is_not_a_scheduler_is_one_line(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        res = _generate(tmp_path / "d.zarr", "--scheduler", f"tcp://127.0.0.1:{port}")
    assert res.exit_code == 2 and res.stderr.startswith("error: ")
    assert _visible(tmp_path) == []


@pytest.mark.parametrize("damage, needle", [
    (lambda s: (s / "completed" / "zarr.json").unlink(), "'completed' array"),
    (lambda s: (s / "outputs" / "zarr.json").write_text("garbage{"), "'outputs' array"),
])
def test_a_damaged_store_is_detected_not_reused(tmp_path, damage, needle):
    out = tmp_path / "d.zarr"
    assert _generate(out).exit_code == 0
    damage(out)
    _one_error_line(_generate(out), f"is damaged: its {needle}")
    res = _generate(out, "--overwrite")                      # ours: may be regenerated
    assert res.exit_code == 0, res.output
    assert np.isfinite(open_dataset(out)["outputs"]).all()


def test_sigterm_says_what_happened_and_the_rerun_resumes(tmp_path, monkeypatch):
    real = gen_module._evaluate_chunk
    calls = []

    def terminated_on_second(problem, x):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)   # as `timeout` or a batch system would
        return real(problem, x)

    monkeypatch.setattr(gen_module, "_evaluate_chunk", terminated_on_second)
    out = tmp_path / "d.zarr"
    err = _one_error_line(_generate(out), "terminated (SIGTERM)", code=143)
    assert "1 of 3 chunks are finished" in err and "rerun the same command to resume" in err
    assert not out.exists()
    (partial,) = [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    # plain zarr reads the rows not written yet as NaN, not as valid zeros
    rows = zarr.open_group(str(partial), mode="r")["outputs"][...]
    assert np.isfinite(rows[:2]).all() and np.isnan(rows[2:]).all()
    monkeypatch.setattr(gen_module, "_evaluate_chunk", real)
    res = _generate(out)
    assert res.exit_code == 0 and "2 chunks computed, 1 reused" in res.output
    assert json.loads((out / "zarr.json").read_text())["attributes"]["complete"] is True
    assert _visible(tmp_path) == ["d.zarr"]


# ---------------------------------------------------------------- issue 24 item 5: memory
def test_out_of_memory_in_a_study_leaves_no_staging(tmp_path, monkeypatch):
    from wheretolearn.design import bilevel_study as study

    def exhaust(*args, **kwargs):
        import numpy as np

        np.empty(2**50)

    monkeypatch.setattr(study, "_run_trial", exhaust)
    out = tmp_path / "run"
    _one_error_line(_bilevel(tmp_path, out), "out of memory")
    assert _visible(tmp_path) == []
    assert not any(p.name.startswith(".run") for p in tmp_path.iterdir())


def test_out_of_memory_creating_a_store_leaves_no_partial_store(tmp_path, monkeypatch):
    from wheretolearn.problems.burgers import Burgers

    def exhaust(self):
        raise MemoryError("Unable to allocate 728. TiB for an array")

    monkeypatch.setattr(Burgers, "coordinates", exhaust)
    _one_error_line(_generate(tmp_path / "d.zarr"), "out of memory (Unable to allocate")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_out_of_memory_evaluating_leaves_no_partial_store(tmp_path, monkeypatch):
    def exhaust(problem, x):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                           "allocate 800000000000 bytes")

    monkeypatch.setattr(gen_module, "_evaluate_chunk", exhaust)
    _one_error_line(_generate(tmp_path / "d.zarr"), "can't allocate memory")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
