"""The wire protocol between :mod:`wheretolearn.client` and the engine, defined once.

An ``ExternalCommandProblem`` with ``protocol = "client"`` listens on a TCP socket and
launches the program with its address and a per-simulation token in the environment; the
program's :func:`wheretolearn.client.connect` connects back. On that connection the client
sends, in order:

* the hello: ``MAGIC`` followed by the token's bytes (ASCII). The engine compares it in
  constant time and drops a connection whose hello is wrong or late;
* each time step: ``HEADER`` -- ``(step, payload bytes)`` as little-endian int64 and uint64
  -- followed by the field as the bytes of a ``.npy`` file (``allow_pickle=False``);
* at a normal end: ``HEADER`` with step ``END_STEP`` (-1) and 0 payload bytes. A connection
  that closes without it counts as a crash, whatever the exit status.

Environment variables of the launched program that the client reads (the engine sets
them): ``ENV_ADDRESS`` (``host:port``), ``ENV_TOKEN``, ``ENV_SIM_ID``, ``ENV_ATTEMPT``,
``ENV_PARAMS`` (JSON list of the parameters).

Standard library only: the client, which runs inside the user's program, imports it.
"""

from __future__ import annotations

import struct

__all__ = ["MAGIC", "HEADER", "END_STEP", "ENV_ADDRESS", "ENV_TOKEN", "ENV_SIM_ID",
           "ENV_ATTEMPT", "ENV_PARAMS"]

#: First bytes of the hello; the token follows.
MAGIC = b"WTL1"
#: Header of each message: step (int64), payload bytes (uint64), little-endian.
HEADER = struct.Struct("<qQ")
#: The step of the closing message (0 payload bytes): the simulation ended normally.
END_STEP = -1

ENV_ADDRESS = "WHERETOLEARN_ADDRESS"
ENV_TOKEN = "WHERETOLEARN_TOKEN"
ENV_SIM_ID = "WHERETOLEARN_SIM_ID"
ENV_ATTEMPT = "WHERETOLEARN_ATTEMPT"
ENV_PARAMS = "WHERETOLEARN_PARAMS"
