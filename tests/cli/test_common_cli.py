"""cli_errors: user-input errors become one ``error:`` line and exit status 2."""

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from wheretolearn.cli import app
from wheretolearn.cli._common import cli_errors, load_toml


def _app_raising(exc: BaseException) -> typer.Typer:
    sub = typer.Typer()

    @sub.command()
    @cli_errors
    def cmd() -> None:
        raise exc

    return sub


def test_permission_error_is_one_line_exit_2():
    result = CliRunner().invoke(_app_raising(PermissionError(13, "Permission denied",
                                                             "/ro/run")))
    assert result.exit_code == 2
    assert "error: [Errno 13] Permission denied: '/ro/run'" in result.output
    assert "Traceback" not in result.output


def test_unwritable_out_folder_is_reported(tmp_path, monkeypatch):
    # root ignores chmod, so simulate a read-only parent of --out
    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    out = tmp_path / "ro" / "run"
    result = CliRunner().invoke(app, ["bilevel", "--problem", "sobol-g", "--steps", "1",
                                      "--eval-n", "8", "--repeats", "1", "--no-progress",
                                      "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "Permission denied" in result.output
    assert not out.exists()


def test_other_errors_still_raise():
    result = CliRunner().invoke(_app_raising(RuntimeError("bug")))
    assert result.exit_code == 1
    assert isinstance(result.exception, RuntimeError)


def test_load_toml_names_the_file_and_the_problem(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")
    # a folder used to be reported as "does not exist"
    with pytest.raises(ValueError, match=r"'.*' is not a file"):
        load_toml(tmp_path)
    # invalid UTF-8 used to surface as a bare codec error that did not name the file
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe = 1\n")
    with pytest.raises(ValueError, match=r"bad\.toml' is not valid TOML"):
        load_toml(bad)
    good = tmp_path / "good.toml"
    good.write_text('problem = "sobol-g"\nsteps = 3\n')
    assert load_toml(good) == {"problem": "sobol-g", "steps": 3}


def test_sigterm_leaves_no_staging_folder(tmp_path):
    """``timeout``/``kill`` during a study: exit 143 and nothing left next to --out (a killed
    run used to leave its hidden ``.run.staging-*`` folder behind)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-c", "from wheretolearn.cli import main; main()", "bilevel",
           "--problem", "sobol-g", "--steps", "100000", "--n-train", "20", "--eval-n", "8",
           "--repeats", "1", "--no-progress", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not any((p / "metrics.jsonl").exists() for p in tmp_path.glob(".run.staging-*")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the study never started writing"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, proc.stderr.read()
    assert list(tmp_path.iterdir()) == []


def test_sigterm_handler_is_restored():
    import signal

    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(_app_raising(ValueError("bad value")))
    assert result.exit_code == 2 and "error: bad value" in result.output
    assert signal.getsignal(signal.SIGTERM) is before


# ---------------------------------------------------------------- issue 24 item 5: memory
def _allocate_numpy():
    import numpy as np

    np.empty(2**50)                                 # numpy's _ArrayMemoryError


def _allocate_torch():
    import torch

    torch.empty(2**50)                              # RuntimeError: DefaultCPUAllocator


def _app_calling(func) -> typer.Typer:
    sub = typer.Typer()

    @sub.command()
    @cli_errors
    def cmd() -> None:
        func()

    return sub


@pytest.mark.parametrize("func, needle", [
    (_allocate_numpy, "Unable to allocate 8.00 PiB"),
    (_allocate_torch, "can't allocate memory"),
])
def test_running_out_of_memory_is_one_line_exit_2(func, needle):
    result = CliRunner().invoke(_app_calling(func))
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: out of memory (") and "\n" not in err, err
    assert needle in err and "smaller sizes" in err
    assert "Traceback" not in result.output


def test_a_bare_memory_error_is_one_line_exit_2():
    result = CliRunner().invoke(_app_raising(MemoryError()))
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: out of memory (MemoryError)")


def test_other_runtime_errors_still_raise():
    result = CliRunner().invoke(_app_raising(RuntimeError("solver diverged")))
    assert result.exit_code == 1
    assert isinstance(result.exception, RuntimeError)
