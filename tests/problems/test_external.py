"""External programs as simulators: streaming step files, and every documented failure."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from wheretolearn.problems import (ExternalCommandProblem, SimulationError,
                                   check_online_contract, get_problem)
from wheretolearn.problems.external import read_step_file

FAKE = str(Path(__file__).with_name("fake_solver.py"))
SRC = str(Path(__file__).resolve().parents[2] / "src")


def fake(mode, tmp_path, *, n_steps=5, **kw):
    kw.setdefault("step_timeout", 30.0)
    return ExternalCommandProblem(
        ["{python}", FAKE, mode, "{outdir}", str(n_steps), "{p0}", "{attempt}"],
        bounds=[[0.0, 10.0]], n_steps=n_steps, field_shape=[3], workdir=str(tmp_path / "work"),
        env={"WTL_SRC": SRC}, **kw)


def truth(p0, n_steps):
    return p0 * np.arange(1, n_steps + 1)[:, None] * np.ones(3)


@pytest.mark.parametrize("mode", ["ok", "npz", "direct", "client"])
def test_streams_every_step_once_in_order(tmp_path, mode):
    prob = fake(mode, tmp_path, protocol="client" if mode == "client" else "files")
    got = list(prob.simulate(np.array([1.5]), sim_id=7, attempt=0))
    assert [s for s, _ in got] == list(range(5))
    np.testing.assert_allclose(np.stack([f for _, f in got]), truth(1.5, 5), rtol=1e-6)
    assert not any((tmp_path / "work").iterdir())            # working folder removed


def test_call_gives_trajectories_and_contract_holds(tmp_path):
    prob = fake("ok", tmp_path)
    out = prob(np.array([[1.0], [2.5]]))
    assert out.shape == (2, 5, 3)
    np.testing.assert_allclose(out[1], truth(2.5, 5), rtol=1e-6)
    np.testing.assert_allclose(check_online_contract(prob), [[0.0, 10.0]])


def test_placeholders_and_launcher():
    prob = get_problem("external", command=["solver", "--a={p0:.2f}", "{p1}", "{sim_id}",
                                            "{{literal}}"],
                       launcher=["mpirun", "-n", "{cores}"], cores=4,
                       bounds=[[0, 1], [0, 1]], n_steps=2, field_shape=[1])
    assert prob.argv([0.25, 0.1 + 0.2], sim_id=3) == [
        "mpirun", "-n", "4", "solver", "--a=0.25", repr(0.1 + 0.2), "3", "{literal}"]
    with pytest.raises(ValueError, match=r"unknown placeholder \{p2\}"):
        get_problem("external", command=["s", "{p2}"], bounds=[[0, 1], [0, 1]], n_steps=1,
                    field_shape=[1])
    with pytest.raises(TypeError, match="list of strings"):
        get_problem("external", command="solver {p0}", bounds=[[0, 1]], n_steps=1,
                    field_shape=[1])


def test_crash_reports_status_and_last_stderr_lines(tmp_path):
    steps = []
    with pytest.raises(SimulationError) as err:
        for s, _ in fake("crash", tmp_path).simulate([1.0]):
            steps.append(s)
    assert steps == [0, 1]                                    # partial output was streamed
    msg = str(err.value)
    assert "exited with status 3 after 2 of 5 steps" in msg
    assert "diverged (residual nan)" in msg and "fatal error at step 2" in msg


def test_hang_is_killed_with_its_whole_process_group(tmp_path):
    prob = fake("hang", tmp_path, step_timeout=1.5, keep_outputs=True)
    t0 = time.monotonic()
    with pytest.raises(SimulationError, match="no new step for .* hung, process group killed"):
        list(prob.simulate([1.0]))
    assert time.monotonic() - t0 < 30
    (pidfile,) = (tmp_path / "work").glob("*/child.pid")
    child = int(pidfile.read_text())
    for _ in range(100):                                      # reaped by init: poll a moment
        if not Path(f"/proc/{child}").exists() or "Z" in _state(child):
            break
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or "Z" in _state(child)
    assert (pidfile.parent / "FAILED").exists()               # kept on request, marked


def _state(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
    except OSError:
        return "Z"


@pytest.mark.parametrize("mode, match", [
    ("malformed", "malformed step file step_002.npy"),
    ("wrongshape", r"malformed step: step_002.npy has shape \(2, 2\), expected \(3,\)"),
    ("short", "exited with status 0 after 2 of 5 steps"),
    ("client-crash", "exited with status 1 after 2 of 5 steps.*client boom at step 2"),
])
def test_bad_outputs_fail_the_attempt(tmp_path, mode, match):
    prob = fake(mode, tmp_path, protocol="client" if mode.startswith("client") else "files")
    steps = []
    with pytest.raises(SimulationError, match=match):
        for s, _ in prob.simulate([2.0]):
            steps.append(s)
    assert steps == [0, 1]
    assert not any((tmp_path / "work").iterdir())


def test_closing_the_generator_kills_the_program(tmp_path):
    prob = fake("hang", tmp_path, step_timeout=600, keep_outputs=True)
    gen = prob.simulate([1.0])
    assert next(gen)[0] == 0
    assert next(gen)[0] == 1
    (pidfile,) = _wait_for(lambda: list((tmp_path / "work").glob("*/child.pid")))
    child = int(pidfile.read_text())
    gen.close()
    for _ in range(100):
        if not Path(f"/proc/{child}").exists() or "Z" in _state(child):
            break
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or "Z" in _state(child)


def _wait_for(fn, seconds=20):
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        got = fn()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_missing_program_is_a_clear_error(tmp_path):
    prob = ExternalCommandProblem(["./no-such-solver", "{p0}"], bounds=[[0, 1]], n_steps=1,
                                  field_shape=[1], cwd=str(tmp_path))
    with pytest.raises(SimulationError, match="cannot start './no-such-solver'"):
        list(prob.simulate([0.5]))


def test_read_step_file_completeness(tmp_path):
    arr = np.arange(6.0).reshape(2, 3)
    np.save(tmp_path / "a.npy", arr)
    full = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "b.npy").write_bytes(full[:-8])               # not all data yet
    (tmp_path / "c.npy").write_bytes(full + b"xx")            # more than announced
    np.testing.assert_array_equal(read_step_file(tmp_path / "a.npy"), arr)
    assert read_step_file(tmp_path / "b.npy") is None
    with pytest.raises(ValueError, match="2 bytes more"):
        read_step_file(tmp_path / "c.npy")
    np.savez(tmp_path / "d.npz", u=arr)
    np.testing.assert_array_equal(read_step_file(tmp_path / "d.npz", "field"), arr)  # only one
    np.savez(tmp_path / "e.npz", u=arr, v=arr)
    with pytest.raises(ValueError, match="no array 'field'.*u, v"):
        read_step_file(tmp_path / "e.npz")


def test_inside_a_session_leader_the_program_shares_its_group(tmp_path):
    """In the online engine's attempt process (a session leader) the program stays in that
    group -- killing the group stops it -- and is still killed with its children on a hang."""
    code = textwrap.dedent(f"""
        import os, sys
        os.setsid()
        sys.path.insert(0, {SRC!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_external import fake
        from pathlib import Path
        prob = fake("hang", Path({str(tmp_path)!r}), step_timeout=1.5, keep_outputs=True)
        try:
            list(prob.simulate([1.0]))
        except Exception as exc:
            print(type(exc).__name__, exc)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "SimulationError" in r.stdout and "hung" in r.stdout, r.stdout + r.stderr
    (pidfile,) = (tmp_path / "work").glob("*/child.pid")
    child = int(pidfile.read_text())
    for _ in range(100):
        if not Path(f"/proc/{child}").exists() or "Z" in _state(child):
            break
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or "Z" in _state(child)


def test_folders_of_killed_owners_are_swept_by_the_next_run(tmp_path):
    import json
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    work = tmp_path / "work"
    work.mkdir()
    owners = {"stale": dead.pid, "live": os.getpid(), "kept": dead.pid}
    for name, pid in owners.items():
        (work / f"wtl-{name}").mkdir()
        (work / f"wtl-{name}" / ".owner.json").write_text(json.dumps(
            {"host": socket.gethostname(), "pid": pid, "keep": name == "kept"}))
    (work / "wtl-elsewhere").mkdir()
    (work / "wtl-elsewhere" / ".owner.json").write_text(json.dumps(
        {"host": "another-node", "pid": dead.pid, "keep": False}))
    list(fake("ok", tmp_path).simulate([1.0]))
    assert sorted(p.name for p in work.iterdir()) == ["wtl-elsewhere", "wtl-kept", "wtl-live"]
