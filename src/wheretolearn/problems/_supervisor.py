"""The process supervisor behind :class:`~wheretolearn.problems.external.ExternalCommandProblem`.

One attempt of one simulation: its private working folder (with the owner record that lets
the next simulation sweep away the folders of killed attempts), the program launched in a
process group of its own (or, inside the online engine's attempt process, in that group),
polling, and the kill of the group or of the program and its descendants. The rules are
in the module doc of :mod:`wheretolearn.problems.external`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..client_protocol import ENV_ATTEMPT, ENV_PARAMS, ENV_SIM_ID
from .simulator import SimulationError

_STDERR_LINES = 8
_OWNER = ".owner.json"        # in each working folder: host, pid, keep (see _sweep_stale)
_OWNER_MAX_BYTES = 64 * 1024  # a larger owner record is not ours: its folder is left alone
_KILL_GRACE = 2.0


def _work_folder(workdir: str | None, sim_id: int, attempt: int, keep: bool) -> Path:
    """A new working folder ``wtl-<sim>-<attempt>-<random>/`` for one attempt, under
    :func:`_work_root` (swept of stale folders first), holding its owner record (host,
    pid, ``keep``: see :func:`_sweep_stale`)."""
    root = _work_root(workdir)
    _sweep_stale(root)
    folder = Path(tempfile.mkdtemp(prefix=f"wtl-{sim_id}-{attempt}-", dir=root))
    (folder / _OWNER).write_text(json.dumps({"host": socket.gethostname(),
                                             "pid": os.getpid(),
                                             "keep": keep}))
    return folder


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
    """The launched program: its own session (process group), logs in its folder.

    ``problem`` is the :class:`~wheretolearn.problems.external.ExternalCommandProblem`
    being run (its ``argv``, ``env``, ``cwd``, ``n_steps`` and ``step_timeout``)."""

    def __init__(self, problem: Any, p: np.ndarray, sim_id: int,
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
        env = {**os.environ, **pr.env, ENV_SIM_ID: str(self.sim_id),
               ENV_ATTEMPT: str(self.attempt),
               "WHERETOLEARN_OUTDIR": str(self.outdir),
               "WHERETOLEARN_N_STEPS": str(pr.n_steps),
               ENV_PARAMS: json.dumps([float(v) for v in self.p]),
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

