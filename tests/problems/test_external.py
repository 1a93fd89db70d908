"""External programs as simulators: streaming step files, and every documented failure."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from wheretolearn.problems import (ExternalCommandProblem, LaunchOptions, SimulationError,
                                   SupervisionOptions, check_online_contract, get_problem)
from wheretolearn.problems.external import read_step_file

FAKE = str(Path(__file__).with_name("fake_solver.py"))
SRC = str(Path(__file__).resolve().parents[2] / "src")


def fake(mode, tmp_path, *, n_steps=5, protocol="files", step_timeout=30.0,
         keep_outputs=False):
    return ExternalCommandProblem(
        ["{python}", FAKE, mode, "{outdir}", str(n_steps), "{p0}", "{attempt}"],
        bounds=[[0.0, 10.0]], n_steps=n_steps, field_shape=[3],
        launch=LaunchOptions(env={"WTL_SRC": SRC}),
        supervision=SupervisionOptions(protocol=protocol, step_timeout=step_timeout,
                                       workdir=str(tmp_path / "work"),
                                       keep_outputs=keep_outputs))


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


def test_flat_options_map_onto_the_option_objects(tmp_path):
    """A TOML ``[study.options]`` table gives the fields of LaunchOptions and
    SupervisionOptions as flat keys; get_problem builds the same problem as the objects."""
    from wheretolearn.problems import problem_signature

    base = {"bounds": [[0, 1]], "n_steps": 2, "field_shape": [1]}
    flat = get_problem("external", command=["s", "{p0}"], launcher=["srun", "-n", "{cores}"],
                       cores=4, cwd=str(tmp_path), env={"A": 1}, protocol="client",
                       array="u", step_timeout=5, workdir=str(tmp_path), keep_outputs=True,
                       **base)
    objects = ExternalCommandProblem(
        ["s", "{p0}"], **base,
        launch=LaunchOptions(launcher=["srun", "-n", "{cores}"], cores=4, cwd=str(tmp_path),
                             env={"A": 1}),
        supervision=SupervisionOptions(protocol="client", array="u", step_timeout=5,
                                       workdir=str(tmp_path), keep_outputs=True))
    assert flat.options() == objects.options()
    assert flat.options()["env"] == {"A": "1"} and flat.options()["step_timeout"] == 5.0
    keys = set(problem_signature("external").parameters)
    assert {"launcher", "cores", "cwd", "env", "protocol", "array", "step_timeout", "workdir",
            "keep_outputs"} <= keys and not {"launch", "supervision"} & keys
    with pytest.raises(ValueError, match="protocol must be 'files' or 'client', got 'tcp'"):
        SupervisionOptions(protocol="tcp")
    with pytest.raises(ValueError, match="step_timeout must be a finite number > 0"):
        get_problem("external", command=["s"], step_timeout=0, **base)
    with pytest.raises(ValueError, match="cores must be a positive integer"):
        LaunchOptions(cores=0)
    with pytest.raises(TypeError, match="launcher must be a list of strings"):
        LaunchOptions(launcher="mpirun -n 2")
    with pytest.raises(TypeError, match="supervision must be a SupervisionOptions"):
        ExternalCommandProblem(["s"], **base, supervision={"step_timeout": 5})
    with pytest.raises(TypeError, match="not both"):
        get_problem("external", command=["s"], step_timeout=5,
                    supervision=SupervisionOptions(), **base)


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
    # the program writes the file, then its pid: wait for the pid, not for the file
    (pidfile,) = _wait_for(lambda: [p for p in (tmp_path / "work").glob("*/child.pid")
                                    if p.read_text().strip()])
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
                                  field_shape=[1], launch=LaunchOptions(cwd=str(tmp_path)))
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


# ---------------------------------------------------------------- shared machines (issue 24)
def _owner_json(pid, *, keep=False, host=None):
    import json
    import socket

    return json.dumps({"host": host or socket.gethostname(), "pid": pid, "keep": keep})


def _dead_pid():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def _sweep_in_thread(work, seconds=5.0):
    """Run the sweep in a thread; fail (instead of hanging the suite) if it blocks."""
    import threading

    from wheretolearn.problems._supervisor import _sweep_stale

    errors = []

    def target():
        try:
            _sweep_stale(work)
        except BaseException as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    return t, errors


@pytest.mark.parametrize("content", [
    pytest.param('{"host": "%(host)s", "pid": "abc", "keep": false}', id="pid-text"),
    pytest.param('{"host": "%(host)s", "pid": -5, "keep": false}', id="pid-negative"),
    pytest.param('{"host": "%(host)s", "pid": 0, "keep": false}', id="pid-zero"),
    pytest.param('{"host": "%(host)s", "pid": 1e30, "keep": false}', id="pid-float"),
    pytest.param('{"host": "%(host)s", "pid": [1], "keep": false}', id="pid-list"),
    pytest.param('{"host": "%(host)s", "pid": %(dead)d, "keep": "no"}', id="keep-text"),
    pytest.param('[1, 2, 3]', id="not-an-object"),
    pytest.param('[' * 50000 + ']' * 50000, id="too-large"),
    pytest.param('{"host": "%(host)s", "pid": %(dead)d, "keep": false' + ' ' * 70000 + '}',
                 id="over-64KiB"),
    pytest.param('\xff\xfe not json', id="garbage"),
])
def test_sweep_leaves_folders_with_malformed_owner_records_alone(tmp_path, content):
    import socket

    dead = _dead_pid()
    work = tmp_path / "work"
    (work / "wtl-bad").mkdir(parents=True)
    (work / "wtl-bad" / ".owner.json").write_text(
        content % {"host": socket.gethostname(), "dead": dead} if "%(" in content else content)
    (work / "wtl-stale").mkdir()
    (work / "wtl-stale" / ".owner.json").write_text(_owner_json(dead))
    t, errors = _sweep_in_thread(work)
    assert not t.is_alive() and errors == []
    assert sorted(p.name for p in work.iterdir()) == ["wtl-bad"]   # stale one still swept


def test_sweep_does_not_hang_on_a_fifo_owner_file(tmp_path):
    work = tmp_path / "work"
    (work / "wtl-fifo").mkdir(parents=True)
    fifo = work / "wtl-fifo" / ".owner.json"
    os.mkfifo(fifo)
    (work / "wtl-stale").mkdir()
    (work / "wtl-stale" / ".owner.json").write_text(_owner_json(_dead_pid()))
    t, errors = _sweep_in_thread(work)
    try:
        assert not t.is_alive(), "the sweep blocked on a FIFO named .owner.json"
    finally:
        if t.is_alive():                              # unblock the stuck reader
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            t.join(5)
    assert errors == []
    assert sorted(p.name for p in work.iterdir()) == ["wtl-fifo"]


def test_sweep_ignores_links_and_folders_of_other_users(tmp_path):
    import shutil

    dead = _dead_pid()
    work = tmp_path / "work"
    work.mkdir()
    (work / "wtl-other").mkdir()                              # another user's stale folder
    (work / "wtl-other" / ".owner.json").write_text(_owner_json(dead))
    for path in (work / "wtl-other", work / "wtl-other" / ".owner.json"):
        os.chown(path, 65534, 65534)
    (work / "wtl-foreign-record").mkdir()                     # ours, record written by another
    (work / "wtl-foreign-record" / ".owner.json").write_text(_owner_json(dead))
    os.chown(work / "wtl-foreign-record" / ".owner.json", 65534, 65534)
    (tmp_path / "record.json").write_text(_owner_json(dead))  # a link to a stale record
    (work / "wtl-linked-record").mkdir()
    (work / "wtl-linked-record" / ".owner.json").symlink_to(tmp_path / "record.json")
    target = tmp_path / "victim"                              # a link to someone's folder
    target.mkdir()
    (target / ".owner.json").write_text(_owner_json(dead))
    (work / "wtl-link").symlink_to(target)
    t, errors = _sweep_in_thread(work)
    assert not t.is_alive() and errors == []
    assert sorted(p.name for p in work.iterdir()) == [
        "wtl-foreign-record", "wtl-link", "wtl-linked-record", "wtl-other"]
    assert (target / ".owner.json").exists()
    shutil.rmtree(work / "wtl-other")


def test_default_workdir_is_a_private_per_user_folder(tmp_path, monkeypatch):
    import stat
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    prob = ExternalCommandProblem(
        ["{python}", FAKE, "ok", "{outdir}", "2", "{p0}"], bounds=[[0.0, 1.0]], n_steps=2,
        field_shape=[3], launch=LaunchOptions(env={"WTL_SRC": SRC}),
        supervision=SupervisionOptions(keep_outputs=True))
    assert [s for s, _ in prob.simulate([0.5])] == [0, 1]
    root = tmp_path / f"wheretolearn-{os.getuid()}"
    st = os.lstat(root)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
    assert stat.S_IMODE(st.st_mode) & 0o077 == 0
    assert len(list(root.glob("wtl-*"))) == 1


@pytest.mark.parametrize("how, match", [
    ("world-writable", "writable by group or others"),
    ("other-user", "belongs to uid 65534"),
    ("symlink", "symbolic link"),
    ("file", "not a folder"),
])
def test_an_unsafe_default_workdir_is_refused(tmp_path, monkeypatch, how, match):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    root = tmp_path / f"wheretolearn-{os.getuid()}"
    if how == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        root.symlink_to(tmp_path / "elsewhere")
    elif how == "file":
        root.write_text("")
    else:
        root.mkdir()
        os.chmod(root, 0o777 if how == "world-writable" else 0o700)
        if how == "other-user":
            os.chown(root, 65534, 65534)
    prob = ExternalCommandProblem(["{python}", FAKE, "ok", "{outdir}", "1", "{p0}"],
                                  bounds=[[0.0, 1.0]], n_steps=1, field_shape=[3])
    with pytest.raises(ValueError, match=f"{root}.*{match}.*workdir"):
        list(prob.simulate([0.5]))


class _IdleRun:
    """Stands in for a running program that never exits (for the handshake alone)."""

    sim_id, attempt = 0, 1

    def poll(self):
        return None

    def fail(self, message):
        return SimulationError(message)

    def hung(self, since):
        return SimulationError("hung")


def _accept_in_thread(server, token, seconds=30.0):
    import threading

    from wheretolearn.problems._step_streams import _ClientStream

    prob = ExternalCommandProblem(["x"], bounds=[[0.0, 1.0]], n_steps=1, field_shape=[1],
                                  supervision=SupervisionOptions(step_timeout=600))
    got = {}
    t = threading.Thread(target=lambda: got.update(
        conn=_ClientStream(prob, _IdleRun())._accept(server, token)), daemon=True)
    t.start()
    t.join(seconds)
    return t, got


def test_silent_connections_do_not_hold_up_the_real_client():
    import socket

    from wheretolearn.client_protocol import MAGIC

    token = "a" * 32
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        addr = server.getsockname()[:2]
        silent = [socket.create_connection(addr) for _ in range(3)]   # connect, say nothing
        real = socket.create_connection(addr)
        real.sendall(MAGIC + token.encode())
        try:
            t, got = _accept_in_thread(server, token)
            assert not t.is_alive(), "the handshake blocked on a silent connection"
            assert got["conn"].getpeername() == real.getsockname()
        finally:
            for sock in silent + [real]:                 # (unblocks a stuck handshake)
                sock.close()
            t.join(30)
        got["conn"].close()


def test_a_silent_connection_is_dropped_at_its_hello_deadline(monkeypatch):
    import socket
    import threading

    from wheretolearn.client_protocol import MAGIC
    from wheretolearn.problems import _step_streams

    monkeypatch.setattr(_step_streams, "_HELLO_TIMEOUT", 0.2)
    token = "b" * 32
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        addr = server.getsockname()[:2]
        silent = socket.create_connection(addr)
        got = {}
        t = threading.Thread(target=lambda: got.update(conn=_step_streams._ClientStream(
            ExternalCommandProblem(["x"], bounds=[[0.0, 1.0]], n_steps=1, field_shape=[1],
                                   supervision=SupervisionOptions(step_timeout=600)),
            _IdleRun())._accept(server, token)),
            daemon=True)
        t.start()
        with silent:
            silent.settimeout(30)
            assert silent.recv(1) == b""                 # closed by the engine, no client yet
        assert t.is_alive()                              # still waiting for the real one
        with socket.create_connection(addr) as real:
            real.sendall(MAGIC + token.encode())
            t.join(30)
            assert got["conn"].getpeername() == real.getsockname()
            got["conn"].close()


def test_a_wrong_token_is_refused_with_a_constant_time_comparison(monkeypatch):
    import hmac
    import socket

    from wheretolearn.client_protocol import MAGIC

    calls = []
    compare = hmac.compare_digest
    monkeypatch.setattr("wheretolearn.problems._step_streams.hmac.compare_digest",
                        lambda a, b: calls.append((a, b)) or compare(a, b))
    token = "0123456789abcdef" * 2
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        addr = server.getsockname()[:2]
        wrong = socket.create_connection(addr)
        wrong.sendall(MAGIC + b"f" * len(token))                 # same length, wrong value
        real = socket.create_connection(addr)
        real.sendall(MAGIC + token.encode())
        with wrong, real:
            t, got = _accept_in_thread(server, token)
            assert not t.is_alive()
            assert got["conn"].getpeername() == real.getsockname()
            wrong.settimeout(30)
            assert wrong.recv(1) == b""                           # dropped by the engine
            got["conn"].close()
    assert (MAGIC + b"f" * len(token), MAGIC + token.encode()) in calls


def test_a_client_program_with_silent_connections_streams_normally(tmp_path):
    import threading

    prob = fake("client-silent", tmp_path, protocol="client", step_timeout=300)
    got = []
    t = threading.Thread(target=lambda: got.extend(prob.simulate([1.5])), daemon=True)
    t.start()
    t.join(90)
    assert not t.is_alive(), "the study stalled on silent connections"
    assert [s for s, _ in got] == list(range(5))


@pytest.mark.parametrize("arg, match", [
    ("{p0:{bogus}}", r"nested field \{bogus\}"),
    ("{p0:{p0}}", r"nested field \{p0\}"),
    ("--x={p0:>{p0:{p0}}}", r"nested field \{p0:\{p0\}\}"),
    ("{p0.real}", r"\{p0\.real\}.*attribute access or indexing"),
    ("{p0[0]}", r"\{p0\[0\]\}.*attribute access or indexing"),
    ("{outdir.__class__}", r"attribute access or indexing"),
    ("{p0!x}", r"conversion !x"),
    ("{}", r"unknown placeholder \{\}"),
    ("{0}", r"unknown placeholder \{0\}"),
    ("{p0:d}", r"cannot be formatted.*Unknown format code 'd'"),
    ("{p0", r"not a valid template"),
])
def test_placeholders_are_checked_fully_up_front(arg, match):
    with pytest.raises(ValueError, match=match) as err:
        get_problem("external", command=["solver", arg], bounds=[[0, 1]], n_steps=1,
                    field_shape=[1])
    msg = str(err.value)
    assert "command argument" in msg and repr(arg) in msg and "allowed" in msg
    with pytest.raises(ValueError, match="launcher argument"):
        get_problem("external", command=["solver"], launcher=[arg], bounds=[[0, 1]],
                    n_steps=1, field_shape=[1])


def test_plain_placeholders_with_conversions_and_specs_still_work():
    prob = get_problem("external", command=["s", "{p0!r}", "{p1:>8.3f}", "{sim_id:03d}",
                                            "{outdir!s}", "{{x}}"],
                       bounds=[[0, 1], [0, 1]], n_steps=1, field_shape=[1])
    assert prob.argv([0.5, 0.25], sim_id=7, outdir="/o") == [
        "s", "0.5", "   0.250", "007", "/o", "{x}"]
