"""Wire format of the step stream between simulation attempts and the server (SPEC §5).

A *step* message is a fixed header ``(sim_id, attempt, step, ndim)`` (four little-endian
int64), the shape (``ndim`` int64) and the field as float32 bytes. Step ``-1`` is a
*hello* (the attempt started; the payload is the worker address), step ``-2`` a
*heartbeat* (the attempt is alive but its next message waits on back-pressure). Several
messages travel in one queue message, each prefixed by its length (:func:`pack_messages`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validation import check_int, check_seconds

__all__ = ["Streaming", "encode_step", "decode_step", "encode_hello", "encode_heartbeat",
           "pack_messages", "unpack_messages", "HELLO", "HEARTBEAT"]

_HEADER = struct.Struct("<qqqq")  # sim_id, attempt, step (-1: hello, -2: heartbeat), ndim
_LEN = struct.Struct("<q")
#: Step number of a hello message.
HELLO = -1
#: Step number of a heartbeat message.
HEARTBEAT = -2


@dataclass(frozen=True)
class Streaming:
    """How steps travel from a simulation attempt to the server (SPEC §5).

    Parameters
    ----------
    queue_maxsize : int >= 1
        Messages the Dask step queue holds before producers block (back-pressure: at most
        ``queue_maxsize x max_message_bytes`` in flight).
    max_message_bytes : int >= 1
        Steps of one simulation are grouped into one queue message up to this size (a
        step larger than that goes alone).
    flush_seconds : float > 0
        A group older than this is sent even when not full.
    heartbeat_seconds : float > 0
        A producer blocked by back-pressure sends a heartbeat this often.
    poll_seconds : float > 0
        How often an attempt waiting for its child's next step checks whether it was
        cancelled.

    A frozen dataclass of plain fields: it travels pickled with every Dask task.
    """

    queue_maxsize: int = 64
    max_message_bytes: int = 262144
    flush_seconds: float = 0.2
    heartbeat_seconds: float = 0.5
    poll_seconds: float = 0.1

    def __post_init__(self) -> None:
        for name in ("queue_maxsize", "max_message_bytes"):
            check_int(getattr(self, name), name, 1)
        for name in ("flush_seconds", "heartbeat_seconds", "poll_seconds"):
            check_seconds(getattr(self, name), name)


def encode_step(sim_id: int, attempt: int, step: int, field: np.ndarray) -> bytes:
    """Pack one time step ``field`` (any shape, sent as float32) into bytes."""
    arr = np.ascontiguousarray(field, dtype=np.float32)
    shape = struct.pack(f"<{arr.ndim}q", *arr.shape)
    return _HEADER.pack(sim_id, attempt, step, arr.ndim) + shape + arr.tobytes()


def encode_hello(sim_id: int, attempt: int, worker: str) -> bytes:
    """The first message of an attempt: it runs on ``worker``."""
    return _HEADER.pack(sim_id, attempt, HELLO, 0) + worker.encode()


def encode_heartbeat(sim_id: int, attempt: int) -> bytes:
    """The attempt is alive; its next step waits for room in the queue."""
    return _HEADER.pack(sim_id, attempt, HEARTBEAT, 0)


def decode_step(msg: bytes) -> tuple[int, int, int, Any]:
    """Inverse of :func:`encode_step`: ``(sim_id, attempt, step, field)``.

    For a hello (step ``-1``) ``field`` is the worker address (str); for a heartbeat (step
    ``-2``) it is ``None``.
    """
    sim_id, attempt, step, ndim = _HEADER.unpack_from(msg, 0)
    off = _HEADER.size
    if step == HELLO:
        return sim_id, attempt, step, bytes(msg[off:]).decode()
    if step < 0:
        return sim_id, attempt, step, None
    shape = struct.unpack_from(f"<{ndim}q", msg, off)
    off += 8 * ndim
    field = np.frombuffer(msg, dtype=np.float32, offset=off).reshape(shape)
    return sim_id, attempt, step, field  # read-only view; the buffer's Sample copies it


def pack_messages(parts: list[bytes]) -> bytes:
    """Several encoded steps in one queue message (each prefixed by its length)."""
    return b"".join(_LEN.pack(len(p)) + p for p in parts)


def unpack_messages(blob: bytes) -> list[memoryview]:
    """Inverse of :func:`pack_messages`."""
    view, out, off = memoryview(blob), [], 0
    while off < len(view):
        (n,) = _LEN.unpack_from(view, off)
        out.append(view[off + _LEN.size: off + _LEN.size + n])
        off += _LEN.size + n
    return out
