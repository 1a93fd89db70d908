"""How an external program's time steps come back: step files, or the in-situ client.

:class:`_FileStream` picks up the step files the program writes (naming rule and
completeness in the module doc of :mod:`wheretolearn.problems.external`;
:func:`read_step_file`); :class:`_ClientStream` is the engine's side of
:mod:`wheretolearn.client_protocol`: a local socket, the hello checked against the
per-simulation token, then the steps. Both check every step and watch for hangs and
cancellation through :class:`_Watch`.
"""

from __future__ import annotations

import hmac
import math
import os
import re
import secrets
import select
import socket
import subprocess
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..client_protocol import END_STEP, ENV_ADDRESS, ENV_TOKEN, HEADER, MAGIC
from ._supervisor import _Process, _task_cancelled

__all__ = ["STEP_FILE_PATTERN", "read_step_file"]

#: Step files: ``<anything><step>.npy|.npz``, not starting with a dot.
STEP_FILE_PATTERN = re.compile(r"^(?!\.).*?(\d+)\.(npy|npz)$")
_HELLO_TIMEOUT = 2.0          # seconds a new connection has to send its whole hello
_MAX_PENDING = 32             # connections waiting for their hello, at most (oldest dropped)


class _Watch:
    """Shared loop bookkeeping: received steps, step checks, timeouts, cancellation.

    ``problem`` is the :class:`~wheretolearn.problems.external.ExternalCommandProblem`
    being run, ``run`` its :class:`~._supervisor._Process`."""

    def __init__(self, problem: Any, run: _Process):
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

    def __init__(self, problem: Any, run: _Process, outdir: Path):
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
            self.run.start({ENV_ADDRESS: f"{host}:{port}",
                            ENV_TOKEN: token})
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
        expected = MAGIC + token.encode()
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
            while len(buf) >= HEADER.size:
                step, nbytes = HEADER.unpack_from(buf, 0)
                if len(buf) < HEADER.size + nbytes:
                    break
                payload = bytes(buf[HEADER.size: HEADER.size + nbytes])
                del buf[: HEADER.size + nbytes]
                if step == END_STEP:
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
