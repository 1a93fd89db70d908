"""In-situ client: a Python simulation loop sends its time steps to wheretolearn.

The Melissa client API, in Python. Inside a program that wheretolearn launches (an
``ExternalCommandProblem`` with ``protocol = "client"``)::

    from wheretolearn.client import connect

    with connect() as c:                  # address and ids come from the environment
        for step in range(n_steps):
            u = advance(u)
            c.send(step, u)               # a numpy array of the announced field shape

``connect()`` reads ``WHERETOLEARN_ADDRESS`` (``host:port``), ``WHERETOLEARN_TOKEN``,
``WHERETOLEARN_SIM_ID``, ``WHERETOLEARN_ATTEMPT`` and ``WHERETOLEARN_PARAMS`` (also
available as ``c.sim_id``, ``c.attempt``, ``c.params``). Leaving the ``with`` block (or
``c.close()``) tells the engine the simulation ended normally; an exception inside the
block closes the connection *without* that, so the attempt counts as crashed even if the
process then exits with status 0. Run outside wheretolearn (no address in the
environment), ``connect()`` raises ``RuntimeError`` -- or, with ``required=False``,
returns a client whose ``send`` does nothing, so the script also runs on its own.

This module imports only numpy and the standard library (it runs inside the user's
program, once per simulation); the wire protocol is :mod:`wheretolearn.client_protocol`.
"""

from __future__ import annotations

import io
import json
import os
import socket
from typing import Any

import numpy as np

from .client_protocol import (END_STEP, ENV_ADDRESS, ENV_ATTEMPT, ENV_PARAMS, ENV_SIM_ID,
                              ENV_TOKEN, HEADER, MAGIC)

__all__ = ["Client", "connect"]


class Client:
    """Connection of one simulation to the engine (see :func:`connect`)."""

    def __init__(self, sock: socket.socket | None, *, sim_id: int, attempt: int,
                 params: list[float]):
        self._sock = sock
        self.sim_id, self.attempt, self.params = sim_id, attempt, params
        self.steps_sent = 0

    @property
    def connected(self) -> bool:
        """False for the stand-alone client of ``connect(required=False)``."""
        return self._sock is not None

    def send(self, step: int, field: Any) -> None:
        """Send time step ``step`` (0-based int) with its ``field`` (array-like)."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        arr = np.ascontiguousarray(field)
        if arr.dtype.hasobject or not np.issubdtype(arr.dtype, np.number):
            raise TypeError(f"field must be a numeric array, got dtype {arr.dtype}")
        if self._sock is None:
            return
        buf = io.BytesIO()
        np.lib.format.write_array(buf, arr, allow_pickle=False)
        payload = buf.getvalue()
        self._sock.sendall(HEADER.pack(int(step), len(payload)) + payload)
        self.steps_sent += 1

    def close(self) -> None:
        """End normally: the engine may now judge the simulation by its steps and status."""
        if self._sock is not None:
            try:
                self._sock.sendall(HEADER.pack(END_STEP, 0))
            finally:
                self._abort()

    def _abort(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()


def connect(address: str | None = None, *, required: bool = True,
            timeout: float = 30.0) -> Client:
    """Connect to the engine that launched this program.

    Parameters
    ----------
    address : str, optional
        ``host:port``; default ``$WHERETOLEARN_ADDRESS``.
    required : bool
        When no address is known: raise ``RuntimeError`` (True) or return a client whose
        ``send`` does nothing (False).
    timeout : float
        Seconds to wait for the connection.
    """
    env = os.environ
    address = address or env.get(ENV_ADDRESS)
    sim_id = int(env.get(ENV_SIM_ID, -1))
    attempt = int(env.get(ENV_ATTEMPT, 0))
    params = json.loads(env.get(ENV_PARAMS, "[]"))
    if not address:
        if required:
            raise RuntimeError(f"not launched by wheretolearn: {ENV_ADDRESS} is not set "
                               "(use connect(required=False) to run stand-alone)")
        return Client(None, sim_id=sim_id, attempt=attempt, params=params)
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address must look like host:port, got {address!r}")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sock.settimeout(None)
    sock.sendall(MAGIC + env.get(ENV_TOKEN, "").encode())
    return Client(sock, sim_id=sim_id, attempt=attempt, params=params)
