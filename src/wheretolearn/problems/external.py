"""An external executable as a simulator, the Melissa way: one process per simulation.

:class:`ExternalCommandProblem` runs ``command`` (optionally behind a ``launcher`` such as
``["mpirun", "-n", "{cores}"]`` or ``["srun", "-n", "{cores}"]``) once per simulation and
streams its time steps back as they appear. Two ways for the program to hand over steps:

``protocol = "files"`` (default)
    The program writes one file per time step into the folder ``{outdir}``. Naming rule:
    the step index is the integer just before the extension, counted from 0
    (``step_00000.npy``, ``T-17.npz``); a ``.npy`` holds the field, a ``.npz`` holds it
    under the name ``array`` (default ``"field"``; an archive with a single array may use
    any name). Names starting with ``.`` and other extensions are ignored (write to
    ``.step_3.npy.tmp`` and ``os.replace`` it into place). A file is taken as soon as it is
    complete: a ``.npy`` whose size matches its header, a ``.npz`` whose archive opens. A
    file that still cannot be read once a later step's file exists or the program ended is
    *malformed*. Files are deleted once streamed (unless ``keep_outputs``).

``protocol = "client"``
    The program connects back with :func:`wheretolearn.client.connect` (address and ids in
    its environment) and calls ``c.send(step, field)``; nothing touches the disk.

Placeholders in ``command`` and ``launcher`` (``str.format`` syntax, ``{{`` for a brace):
``{p0}``, ``{p1}``, ... the parameters (full precision; ``{p0:.3f}`` works), ``{sim_id}``,
``{attempt}``, ``{outdir}`` (the step folder, created before the launch), ``{cores}``,
``{python}`` (the Python running the worker) -- plain names only, each optionally with a
conversion (``!s``, ``!r``, ``!a``) and a format spec without fields in it; anything else
(attribute access, indexing, nested fields) is refused up front. The environment also
carries ``WHERETOLEARN_SIM_ID``, ``WHERETOLEARN_ATTEMPT``, ``WHERETOLEARN_OUTDIR``,
``WHERETOLEARN_N_STEPS`` and ``WHERETOLEARN_PARAMS`` (JSON list).

Failures (each raises :class:`SimulationError` after killing the process group, which the
online executor records as a failed attempt and relaunches):

* non-zero exit -> ``exited with status N``, with the last lines of its stderr;
* no new step within ``step_timeout`` seconds -> hang; the program and everything it
  started are killed with SIGTERM, then SIGKILL. The program runs in a session (process
  group) of its own, killed as a group -- except when the calling process leads its own
  session (the online engine's per-attempt process): then the program stays in that group,
  so killing the attempt's group stops it too, and this class kills the program and its
  descendants by pid;
* a malformed step file (unreadable, wrong shape, non-finite values, step out of range);
* exit 0 without all ``n_steps`` steps -> ``exited with status 0 after k of n steps``.

Steps streamed before a failure stay streamed (the online ledger deduplicates by step). The
process group is also killed when the consumer stops iterating (``close()`` of the
generator), and when the Dask task running the simulation is cancelled. The per-attempt
working folder ``workdir/wtl-<sim>-<attempt>-<random>/`` (``out/`` = ``{outdir}``,
``stdout.log``, ``stderr.log``) is removed at the end unless ``keep_outputs``; a folder
whose owner was killed before it could clean up (the online engine kills a hung attempt
with SIGKILL) is removed by the next simulation of the same user started on the same host.
Without ``workdir`` the folders go into the private ``<tempdir>/wheretolearn-<uid>``
(mode 0700; refused if it is a link, another user's or writable by others).
"""

from __future__ import annotations

import hmac
import json
import math
import os
import re
import secrets
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from string import Formatter
from typing import Any, Callable, Iterator

import numpy as np

from .._validation import check_positive_float, check_positive_int
from .base import register_problem
from .simulator import SimulationError, SimulatorProblem

__all__ = ["ExternalCommandProblem", "STEP_FILE_PATTERN", "read_step_file"]

#: Step files: ``<anything><step>.npy|.npz``, not starting with a dot.
STEP_FILE_PATTERN = re.compile(r"^(?!\.).*?(\d+)\.(npy|npz)$")
#: Client protocol: hello = MAGIC + token; a step = header (step, nbytes) + .npy bytes;
#: step -1 = the client closed normally.
CLIENT_MAGIC = b"WTL1"
CLIENT_HEADER = struct.Struct("<qQ")
_STDERR_LINES = 8
_OWNER = ".owner.json"        # in each working folder: host, pid, keep (see _sweep_stale)
_OWNER_MAX_BYTES = 64 * 1024  # a larger owner record is not ours: its folder is left alone
_KILL_GRACE = 2.0
_HELLO_TIMEOUT = 2.0          # seconds a new connection has to send its whole hello
_MAX_PENDING = 32             # connections waiting for their hello, at most (oldest dropped)
_CONVERSIONS = ("s", "r", "a")


@register_problem("external")
class ExternalCommandProblem(SimulatorProblem):
    """Simulator run as an external program, one process per simulation (see module doc).

    Parameters
    ----------
    command : list of str
        The program and its arguments, with placeholders (``{p0}``, ``{outdir}``, ...).
    bounds : (d, 2) array-like
        Parameter bounds; ``d`` must cover every ``{pK}`` used.
    n_steps : int
        Time steps one simulation produces (steps ``0..n_steps-1``).
    field_shape : tuple of int
        Shape of one step's field.
    names : list of str, optional
        Parameter names (default ``p0..``).
    launcher : list of str, optional
        Prefix such as ``["mpirun", "-n", "{cores}"]`` or ``["srun", "-n", "{cores}"]``.
    cores : int
        Value of ``{cores}`` (default 1).
    protocol : "files" | "client"
        How steps come back (see module doc).
    array : str
        Array name inside ``.npz`` step files (default ``"field"``).
    cwd : str, optional
        Folder the program runs in (default: the current folder of the calling process);
        relative paths in ``command`` are relative to it.
    workdir : str, optional
        Parent of the per-attempt working folders (default: the private per-user folder
        ``<tempdir>/wheretolearn-<uid>``).
    keep_outputs : bool
        Keep working folders and step files (default False: removed after each attempt).
    step_timeout : float
        Seconds without a new step after which the program counts as hung and is killed.
    env : dict, optional
        Extra environment variables.
    dtype : "float32" | "float64"
        Dtype of the yielded fields.
    """

    name = "external"

    def __init__(self, command: list[str], *, bounds: Any, n_steps: int, field_shape: Any,
                 names: list[str] | None = None, launcher: list[str] | None = None,
                 cores: int = 1, protocol: str = "files", array: str = "field",
                 cwd: str | None = None, workdir: str | None = None,
                 keep_outputs: bool = False, step_timeout: float = 60.0,
                 env: dict[str, str] | None = None, dtype: str = "float32"):
        super().__init__(bounds, n_steps=n_steps, field_shape=field_shape, names=names,
                         dtype=dtype)
        self.command = _str_list(command, "command")
        if not self.command:
            raise ValueError("command must name a program, got an empty list")
        self.launcher = _str_list(launcher or [], "launcher")
        self.cores = check_positive_int(cores, "cores")
        if protocol not in ("files", "client"):
            raise ValueError(f"protocol must be 'files' or 'client', got {protocol!r}")
        self.protocol = protocol
        self.array = str(array)
        self.cwd = str(Path(cwd).expanduser().resolve()) if cwd else os.getcwd()
        self.workdir = str(Path(workdir).expanduser().resolve()) if workdir else None
        self.keep_outputs = bool(keep_outputs)
        self.step_timeout = check_positive_float(step_timeout, "step_timeout")
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        self._check_placeholders()

    # ------------------------------------------------------------------ interface
    def options(self) -> dict[str, Any]:
        return {**super().options(), "command": list(self.command),
                "launcher": list(self.launcher), "cores": self.cores,
                "protocol": self.protocol, "array": self.array, "cwd": self.cwd,
                "workdir": self.workdir, "keep_outputs": self.keep_outputs,
                "step_timeout": self.step_timeout, "env": dict(self.env)}

    def argv(self, params: Any, *, sim_id: int = 0, attempt: int = 1,
             outdir: str = "OUTDIR") -> list[str]:
        """The command line of one simulation (launcher + command, placeholders filled)."""
        values = self._values(np.asarray(params, dtype=np.float64), sim_id, attempt, outdir)
        return [arg.format_map(values) for arg in self.launcher + self.command]

    def simulate(self, params: Any, *, sim_id: int = 0,
                 attempt: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        """Run the program for ``params (d,)``; yield ``(step, field)`` as steps complete."""
        p = np.asarray(params, dtype=np.float64)
        if p.shape != self.input_shape or not np.all(np.isfinite(p)):
            raise ValueError(f"params must be {self.input_shape} and finite, got shape "
                             f"{p.shape}")
        return self._run(p, int(sim_id), int(attempt))

    # ------------------------------------------------------------------ internals
    def _check_placeholders(self) -> None:
        """Check every launcher and command argument up front (see :func:`_check_template`):
        only the documented plain names, and each argument formats with sample values."""
        d = self.input_shape[0]
        names = [f"p{i}" for i in range(d)] + ["sim_id", "attempt", "outdir", "cores",
                                                "python"]
        shown = (", ".join(f"{{p{i}}}" for i in range(d)) if d <= 3
                 else f"{{p0}}..{{p{d - 1}}}")
        allowed = (f"{shown}, {{sim_id}}, {{attempt}}, {{outdir}}, {{cores}}, {{python}} as "
                   "plain names, each optionally with a conversion (!s, !r, !a) and a format "
                   "spec without fields in it (e.g. {p0:.3f}); {{ and }} for literal braces")
        sample = self._values(np.full(d, 0.5), 0, 1, "OUTDIR")
        for label, args in (("launcher", self.launcher), ("command", self.command)):
            for arg in args:
                _check_template(arg, f"{label} argument {arg!r}", set(names), allowed, sample)

    def _values(self, p: np.ndarray, sim_id: int, attempt: int, outdir: str) -> dict:
        values: dict[str, Any] = {f"p{i}": float(v) for i, v in enumerate(p)}
        values.update(sim_id=sim_id, attempt=attempt, outdir=outdir, cores=self.cores,
                      python=sys.executable)
        return values

    def _run(self, p: np.ndarray, sim_id: int, attempt: int) -> Iterator[tuple[int, np.ndarray]]:
        root = _work_root(self.workdir)
        _sweep_stale(root)
        folder = Path(tempfile.mkdtemp(prefix=f"wtl-{sim_id}-{attempt}-", dir=root))
        (folder / _OWNER).write_text(json.dumps({"host": socket.gethostname(),
                                                 "pid": os.getpid(),
                                                 "keep": self.keep_outputs}))
        outdir = folder / "out"
        outdir.mkdir()
        run = _Process(self, p, sim_id, attempt, folder, outdir)
        ok = False
        try:
            if self.protocol == "files":
                yield from _FileStream(self, run, outdir).steps()
            else:
                yield from _ClientStream(self, run).steps()
            ok = True
        finally:
            run.kill()
            if not self.keep_outputs:
                shutil.rmtree(folder, ignore_errors=True)
            elif not ok:
                (folder / "FAILED").touch()


def _check_template(arg: str, where: str, names: set[str], allowed: str,
                    sample: dict[str, Any]) -> None:
    """Refuse (``ValueError`` naming ``where``, the field and what is ``allowed``) any
    field of ``arg`` that is not a plain allowed name: attribute access, indexing, unknown
    names, unknown conversions, fields nested in a format spec; then format ``arg`` with
    ``sample`` values so that a bad format spec is caught before anything runs."""
    for field, conversion, spec, depth in _template_fields(arg, where, allowed):
        text = _field_text(field, conversion, spec)
        if depth:
            why = f"has the nested field {text} in a format spec"
        elif field in names:
            why = (f"has the conversion !{conversion} in {text}"
                   if conversion is not None and conversion not in _CONVERSIONS else "")
        elif "." in field or "[" in field:
            why = f"uses attribute access or indexing in {text}"
        else:
            raise ValueError(f"unknown placeholder {{{field}}} in {where}; allowed: {allowed}")
        if why:
            raise ValueError(f"{where} {why}; allowed: {allowed}")
    try:
        arg.format_map(sample)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"{where} cannot be formatted ({exc}); allowed: {allowed}") from None


def _template_fields(template: str, where: str, allowed: str,
                     depth: int = 0) -> Iterator[tuple[str, str | None, str, int]]:
    """Every replacement field of ``template`` as ``(name, conversion, spec, depth)``,
    including the fields nested in format specs (``depth`` > 0), recursively."""
    try:
        parsed = list(Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{where} is not a valid template ({exc}); allowed: "
                         f"{allowed}") from None
    for _, field, spec, conversion in parsed:
        if field is not None:
            yield field, conversion, spec or "", depth
            if spec:
                yield from _template_fields(spec, where, allowed, depth + 1)


def _field_text(field: str, conversion: str | None, spec: str) -> str:
    """A replacement field written back as in the template, e.g. ``{p0!r:>8}``."""
    return ("{" + field + (f"!{conversion}" if conversion is not None else "")
            + (f":{spec}" if spec else "") + "}")


def _work_root(workdir: str | None) -> Path:
    """The parent of the working folders: ``workdir`` if configured, else the private
    per-user folder ``<tempdir>/wheretolearn-<uid>`` (see :func:`_private_folder`)."""
    if workdir:
        root = Path(workdir)
        root.mkdir(parents=True, exist_ok=True)
        return root
    return _private_folder(Path(tempfile.gettempdir()) / f"wheretolearn-{os.getuid()}")


def _private_folder(path: Path) -> Path:
    """``path`` as a folder only the current user can write into: created with mode 0700,
    or refused (``ValueError`` naming it) when it is a link, not a folder, another user's
    folder, or writable by group or others."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    uid = os.getuid()
    if stat.S_ISLNK(st.st_mode):
        why = "is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        why = "is not a folder"
    elif st.st_uid != uid:
        why = f"belongs to uid {st.st_uid}, not to the current user (uid {uid})"
    elif st.st_mode & 0o022:
        why = f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    else:
        return path
    raise ValueError(f"default working folder {path} {why}: refusing to run simulations "
                     "there; remove it, or set workdir to a folder of your own")


def _sweep_stale(root: Path) -> None:
    """Remove working folders left by killed processes (an attempt killed with SIGKILL by
    the online engine cannot clean up): those of the current user on this host whose owner
    pid is gone and that were not to be kept. Folders of other users or hosts, of live
    pids, links, and folders whose owner record is anything unexpected are never touched;
    the sweep itself never fails."""
    try:
        with os.scandir(root) as it:
            paths = [e.path for e in it if e.name.startswith("wtl-")]
    except OSError:
        return
    host, uid = socket.gethostname(), os.getuid()
    for path in paths:
        try:
            stale = _is_stale(path, host, uid)
        except Exception:  # noqa: BLE001 -- anything unexpected: leave that folder alone
            stale = False
        if stale:
            shutil.rmtree(path, ignore_errors=True)


def _is_stale(folder: str, host: str, uid: int) -> bool:
    """Whether ``folder`` is a real folder of ``uid`` whose valid owner record names this
    host, a dead pid, and ``keep`` false (may raise: the caller then leaves it alone)."""
    if not _owned_by(os.lstat(folder), uid, stat.S_ISDIR):
        return False
    owner = _read_owner(os.path.join(folder, _OWNER), uid)
    if owner is None or owner.get("host") != host or owner.get("keep") is not False:
        return False
    pid = owner.get("pid")
    if type(pid) is not int or not 0 < pid < 2 ** 31:
        return False
    return not _alive(pid)


def _owned_by(st: os.stat_result, uid: int, kind: Callable[[int], bool]) -> bool:
    """Whether ``st`` (from ``lstat``/``fstat``) is of type ``kind`` and belongs to ``uid``."""
    return kind(st.st_mode) and st.st_uid == uid


def _read_owner(path: str, uid: int) -> dict | None:
    """The owner record at ``path``, read only if it is a regular file of ``uid`` (no link,
    FIFO or device: opened with ``O_NOFOLLOW | O_NONBLOCK``) of at most
    ``_OWNER_MAX_BYTES``; None if it is not such a file or holds no JSON object."""
    st = os.lstat(path)
    if not _owned_by(st, uid, stat.S_ISREG) or st.st_size > _OWNER_MAX_BYTES:
        return None
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        now = os.fstat(fd)
        if not _owned_by(now, uid, stat.S_ISREG) or (now.st_dev, now.st_ino) != (
                st.st_dev, st.st_ino):
            return None                                   # replaced in between
        data = os.read(fd, _OWNER_MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > _OWNER_MAX_BYTES:
        return None
    owner = json.loads(data)
    return owner if isinstance(owner, dict) else None


class _Process:
    """The launched program: its own session (process group), logs in its folder."""

    def __init__(self, problem: ExternalCommandProblem, p: np.ndarray, sim_id: int,
                 attempt: int, folder: Path, outdir: Path):
        self.problem, self.folder = problem, folder
        self.p, self.sim_id, self.attempt, self.outdir = p, sim_id, attempt, outdir
        self.proc: subprocess.Popen | None = None
        self.own_group = True
        self.started = time.monotonic()

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        pr = self.problem
        argv = pr.argv(self.p, sim_id=self.sim_id, attempt=self.attempt,
                       outdir=str(self.outdir))
        env = {**os.environ, **pr.env, "WHERETOLEARN_SIM_ID": str(self.sim_id),
               "WHERETOLEARN_ATTEMPT": str(self.attempt),
               "WHERETOLEARN_OUTDIR": str(self.outdir),
               "WHERETOLEARN_N_STEPS": str(pr.n_steps),
               "WHERETOLEARN_PARAMS": json.dumps([float(v) for v in self.p]),
               **(extra_env or {})}
        with open(self.folder / "stdout.log", "wb") as out, \
                open(self.folder / "stderr.log", "wb") as err:
            # A process that leads its own session (the online engine's attempt process)
            # keeps the program in its group, so killing that group stops the program too;
            # anywhere else the program gets a session (and group) of its own.
            self.own_group = os.getsid(0) != os.getpid()
            try:
                self.proc = subprocess.Popen(argv, cwd=pr.cwd, env=env, stdin=subprocess.DEVNULL,
                                             stdout=out, stderr=err,
                                             start_new_session=self.own_group)
            except OSError as exc:
                raise SimulationError(f"cannot start {argv[0]!r} (cwd {pr.cwd!r}): "
                                      f"{exc.strerror or exc}") from None
        self.started = time.monotonic()

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        """SIGTERM to the program and everything it started, SIGKILL after a grace period:
        its process group, or (when it shares ours) it and its descendants."""
        proc = self.proc
        if proc is None:
            return
        seen: set[int] = set()
        for sig, wait in ((signal.SIGTERM, _KILL_GRACE), (signal.SIGKILL, 5.0)):
            if self.own_group:
                try:
                    os.killpg(proc.pid, sig)
                except (ProcessLookupError, PermissionError):   # gone (or id reused)
                    break
            else:
                # remembered: a descendant orphaned by the first signal is still hit
                seen.update(_descendants(proc.pid))
                for pid in ([proc.pid] if proc.poll() is None else []) + sorted(seen):
                    try:
                        os.kill(pid, sig)
                    except (ProcessLookupError, PermissionError):
                        pass
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            if not (_group_alive(proc.pid) if self.own_group else
                    any(_alive(p) for p in seen | set(_descendants(proc.pid)))):
                break
        if proc.poll() is None:
            proc.wait(timeout=5)

    def stderr_tail(self) -> str:
        path = self.folder / "stderr.log"
        try:
            with open(path, "rb") as fh:
                fh.seek(max(0, path.stat().st_size - 4096))
                text = fh.read().decode(errors="replace")
        except OSError:
            return ""
        lines = [ln for ln in text.splitlines() if ln.strip()][-_STDERR_LINES:]
        return " | ".join(lines)

    def fail(self, message: str) -> SimulationError:
        self.kill()
        tail = self.stderr_tail()
        return SimulationError(message + (f"; last stderr lines: {tail}" if tail else ""))

    def exited(self, rc: int, n_done: int) -> SimulationError | None:
        """The error for exit status ``rc`` after ``n_done`` steps (None: success)."""
        n = self.problem.n_steps
        if rc != 0:
            how = f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
            return self.fail(f"simulation {self.sim_id} attempt {self.attempt}: program "
                             f"{how} after {n_done} of {n} steps")
        if n_done < n:
            return self.fail(f"simulation {self.sim_id} attempt {self.attempt}: program "
                             f"exited with status 0 after {n_done} of {n} steps")
        return None

    def hung(self, since: float) -> SimulationError:
        return self.fail(f"simulation {self.sim_id} attempt {self.attempt}: no new step for "
                         f"{time.monotonic() - since:.1f} s (step_timeout "
                         f"{self.problem.step_timeout:g} s): hung, process group killed")


def _descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (Linux ``/proc``; empty elsewhere). Orphans re-parented
    to init are no longer found: the program's own group catches those."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _task_cancelled() -> bool:
    """Whether the Dask task running in this thread was cancelled (False outside Dask)."""
    if "distributed" not in sys.modules:
        return False
    try:
        from distributed import get_worker
        from distributed.worker import thread_state

        key = getattr(thread_state, "key", None)
        if key is None:
            return False
        ts = get_worker().state.tasks.get(key)
    except Exception:  # noqa: BLE001 -- not inside a worker task
        return False
    return ts is None or ts.state in ("cancelled", "released", "forgotten")


class _Watch:
    """Shared loop bookkeeping: received steps, step checks, timeouts, cancellation."""

    def __init__(self, problem: ExternalCommandProblem, run: _Process):
        self.problem, self.run = problem, run
        self.seen = np.zeros(problem.n_steps, dtype=bool)
        self.last_step = time.monotonic()
        self.np_dtype = np.dtype(str(problem.dtype).replace("torch.", ""))

    def accept(self, step: int, field: np.ndarray, where: str) -> tuple[int, np.ndarray] | None:
        pr = self.problem
        if not 0 <= step < pr.n_steps:
            raise self.run.fail(f"malformed step: {where} has step {step}, outside "
                                f"0..{pr.n_steps - 1}")
        if self.seen[step]:
            return None
        if field.shape != pr.field_shape:
            raise self.run.fail(f"malformed step: {where} has shape {field.shape}, expected "
                                f"{pr.field_shape}")
        if not np.all(np.isfinite(field)):
            raise self.run.fail(f"malformed step: {where} holds non-finite values")
        self.seen[step] = True
        self.last_step = time.monotonic()
        return step, field.astype(self.np_dtype, copy=False)

    def check_alive(self) -> None:
        if _task_cancelled():
            raise self.run.fail(f"simulation {self.run.sim_id} attempt {self.run.attempt}: "
                                "cancelled by the executor, process group killed")
        if time.monotonic() - self.last_step > self.problem.step_timeout:
            raise self.run.hung(self.last_step)

    def sleep(self) -> None:
        time.sleep(0.005)


class _FileStream(_Watch):
    """Steps from files in ``outdir`` (see the module doc for the naming rule)."""

    def __init__(self, problem: ExternalCommandProblem, run: _Process, outdir: Path):
        super().__init__(problem, run)
        self.outdir = outdir

    def scan(self) -> dict[int, Path]:
        found: dict[int, Path] = {}
        with os.scandir(self.outdir) as it:
            for entry in it:
                m = STEP_FILE_PATTERN.match(entry.name)
                if m:
                    found.setdefault(int(m.group(1)), Path(entry.path))
        return found

    def steps(self) -> Iterator[tuple[int, np.ndarray]]:
        self.run.start()
        self.last_step = time.monotonic()
        while True:
            rc = self.run.poll()                    # before the scan: no file is missed
            found = self.scan()
            newest = max(found, default=-1)
            progressed = False
            for step in sorted(found):
                if step < self.problem.n_steps and self.seen[step]:
                    continue
                path = found[step]
                final = rc is not None or step < newest
                try:
                    field = read_step_file(path, self.problem.array)
                except ValueError as exc:
                    raise self.run.fail(f"malformed step file {path.name}: {exc}") from None
                if field is None:
                    if final:
                        raise self.run.fail(f"malformed step file {path.name}: incomplete "
                                            "although a later step exists or the program "
                                            "ended")
                    break                           # stream steps in order of completion
                got = self.accept(step, field, path.name)
                if not self.problem.keep_outputs:
                    path.unlink(missing_ok=True)
                if got is not None:
                    progressed = True
                    yield got
            if rc is not None:
                err = self.run.exited(rc, int(self.seen.sum()))
                if err is not None:
                    raise err
                return
            if not progressed:
                self.check_alive()
                self.sleep()


def read_step_file(path: str | Path, array: str = "field") -> np.ndarray | None:
    """The field in a step file, or None while it is still incomplete.

    ``.npy``: complete once the file size equals header + data size. ``.npz``: once the
    archive opens; the array ``array`` (or the only one) is returned. Raises ``ValueError``
    for a complete file that is not a valid step (unexpected data, no such array).
    """
    path = Path(path)
    if path.suffix == ".npz":
        try:
            with zipfile.ZipFile(path) as zf:
                names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
        except (zipfile.BadZipFile, EOFError, OSError):
            return None
        key = array if array in names else (names[0] if len(names) == 1 else None)
        if key is None:
            raise ValueError(f"no array {array!r} in the archive (it holds "
                             f"{', '.join(names) or 'nothing'})")
        with np.load(path, allow_pickle=False) as data:
            return np.asarray(data[key])
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(6)
            if len(head) == 6 and head != b"\x93NUMPY":
                raise ValueError("not a .npy file (wrong magic bytes)")
            fh.seek(0)
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)  # 3.0: same layout
            shape, _, dtype = read_header(fh)
            need = fh.tell() + math.prod(shape) * dtype.itemsize
    except ValueError as exc:
        if "magic bytes" in str(exc):
            raise
        return None                  # header not all there yet (or never: decided by caller)
    except (OSError, EOFError, SyntaxError):
        return None
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed")
    if size < need:
        return None
    if size > need:
        raise ValueError(f"file has {size - need} bytes more than its header announces")
    return np.load(path, allow_pickle=False)


class _ClientStream(_Watch):
    """Steps sent over TCP by :func:`wheretolearn.client.connect` in the program."""

    def steps(self) -> Iterator[tuple[int, np.ndarray]]:
        token = secrets.token_hex(16)
        with socket.create_server(("127.0.0.1", 0)) as server:
            server.setblocking(False)
            host, port = server.getsockname()[:2]
            self.run.start({"WHERETOLEARN_ADDRESS": f"{host}:{port}",
                            "WHERETOLEARN_TOKEN": token})
            self.last_step = time.monotonic()
            conn = self._accept(server, token)
            if conn is None:                     # exited without connecting
                err = self.run.exited(self.run.poll(), 0)
                if err is not None:
                    raise err
                return
            with conn:
                yield from self._receive(conn)

    def _accept(self, server: socket.socket, token: str) -> socket.socket | None:
        """The program's connection, once it sent the right hello (None: the program exited
        without connecting). Runs in the polling loop and never blocks on one connection:
        each gets ``_HELLO_TIMEOUT`` seconds to send its hello, so silent or stray
        connections are dropped without delaying the real client or the hang detection."""
        expected = CLIENT_MAGIC + token.encode()
        pending: dict[socket.socket, tuple[float, bytes]] = {}   # conn -> (deadline, got)
        try:
            while True:
                exited = self.run.poll() is not None   # before select: no client is missed
                ready, _, _ = select.select([server, *pending], [], [], 0.05)
                fresh = _accept_new(server, pending) if server in ready else []
                for conn in [c for c in ready if c is not server] + fresh:
                    if _read_hello(conn, pending, expected):
                        conn.setblocking(True)
                        return conn
                _drop_expired(pending)
                if exited and not ready:
                    return None
                self.check_alive()
        finally:
            for conn in pending:
                conn.close()

    def _receive(self, conn: socket.socket) -> Iterator[tuple[int, np.ndarray]]:
        buf = bytearray()
        closed = False
        while True:
            while len(buf) >= CLIENT_HEADER.size:
                step, nbytes = CLIENT_HEADER.unpack_from(buf, 0)
                if len(buf) < CLIENT_HEADER.size + nbytes:
                    break
                payload = bytes(buf[CLIENT_HEADER.size: CLIENT_HEADER.size + nbytes])
                del buf[: CLIENT_HEADER.size + nbytes]
                if step == -1:
                    closed = True
                    continue
                try:
                    field = np.lib.format.read_array(_Bytes(payload), allow_pickle=False)
                except Exception as exc:  # noqa: BLE001
                    raise self.run.fail(f"malformed step {step} from the client: {exc}") from None
                got = self.accept(int(step), field, f"client step {step}")
                if got is not None:
                    yield got
            rc = self.run.poll()
            ready, _, _ = select.select([conn], [], [], 0.05)
            if ready:
                chunk = conn.recv(1 << 20)
                if chunk:
                    buf.extend(chunk)
                    continue
                # EOF: wait for the exit status, then judge
                try:
                    rc = self.run.proc.wait(timeout=self.problem.step_timeout)
                except subprocess.TimeoutExpired:
                    raise self.run.hung(self.last_step) from None
            if rc is not None:
                err = self.run.exited(rc, int(self.seen.sum()))
                if err is None and not closed:
                    err = self.run.fail("the client never called close()")
                if err is not None:
                    raise err
                return
            self.check_alive()


def _accept_new(server: socket.socket,
                pending: dict[socket.socket, tuple[float, bytes]]) -> list[socket.socket]:
    """Accept every waiting connection (non-blocking) into ``pending`` with its hello
    deadline; beyond ``_MAX_PENDING`` the oldest pending ones are dropped."""
    fresh = []
    for _ in range(_MAX_PENDING):             # bounded: an accept that keeps failing
        try:                                  # (e.g. too many open files) cannot spin
            conn, _ = server.accept()
        except (BlockingIOError, InterruptedError):
            break
        except OSError:                       # e.g. aborted before accept: ignore it
            continue
        conn.setblocking(False)
        pending[conn] = (time.monotonic() + _HELLO_TIMEOUT, b"")
        fresh.append(conn)
    while len(pending) > _MAX_PENDING:
        oldest = next(iter(pending))
        pending.pop(oldest)
        oldest.close()
    return [c for c in fresh if c in pending]


def _read_hello(conn: socket.socket, pending: dict[socket.socket, tuple[float, bytes]],
                expected: bytes) -> bool:
    """Read what ``conn`` has sent of its hello without blocking; True once it is complete
    and right (compared in constant time). A wrong or closed one is dropped."""
    if conn not in pending:
        return False
    deadline, got = pending[conn]
    try:
        chunk = conn.recv(len(expected) - len(got))
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        chunk = b""
    got += chunk
    if chunk and len(got) < len(expected):
        pending[conn] = (deadline, got)
        return False
    del pending[conn]
    if chunk and hmac.compare_digest(got, expected):
        return True
    conn.close()                               # a stray connection: ignore it
    return False


def _drop_expired(pending: dict[socket.socket, tuple[float, bytes]]) -> None:
    """Close the connections that did not send their hello in time."""
    now = time.monotonic()
    for conn in [c for c, (deadline, _) in pending.items() if deadline <= now]:
        del pending[conn]
        conn.close()


class _Bytes:
    """Minimal file object over bytes for ``np.lib.format.read_array``."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n is None or n < 0 else self.pos + n
        out = self.data[self.pos:end]
        self.pos += len(out)
        return out

    def readinto(self, b: Any) -> int:
        out = self.read(len(b))
        b[: len(out)] = out
        return len(out)


def _str_list(value: Any, name: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of strings (one per argument), got "
                        f"{value!r}")
    return [str(v) for v in value]
