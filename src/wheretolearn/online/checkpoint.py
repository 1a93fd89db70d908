"""Atomic checkpoints of an online study (model, optimiser, buffer, sampler; SPEC §5).

``save_checkpoint`` writes the state with ``torch.save`` to a temporary file in the target's
directory, flushes and fsyncs it, then ``os.replace``s it over the target (atomic on POSIX):
a crash or an exception during saving leaves the previous checkpoint intact and no partial
file behind.

Loading is weights-only (no arbitrary pickled objects are executed). To make that possible
the saved state is converted to plain containers: numpy arrays become CPU tensors and numpy
scalars become Python numbers; tuples become lists. The ``load_state_dict`` methods of
the buffers and samplers accept tensors where they stored numpy arrays.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "CHECKPOINT_FORMAT"]

#: Marker stored with every checkpoint, checked on load.
CHECKPOINT_FORMAT = "wheretolearn-checkpoint/1"

_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _plain(obj: Any, where: str) -> Any:
    """Recursively convert ``obj`` into containers a weights-only ``torch.load`` accepts."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj)).clone()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, dict):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(f"checkpoint state{where} has unsupported type {type(obj).__name__}; "
                    "use dicts, lists, numbers, strings, numpy arrays or tensors")


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` to ``path`` atomically.

    Parameters
    ----------
    path : file path; its directory is created if missing.
    state : dict of dicts / lists / numbers / strings / numpy arrays / tensors
        e.g. ``{"trainer": trainer.state_dict(), "buffer": buffer.state_dict(),
        "sampler": sampler.state_dict(), ...}``.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "state": _plain(state, "")}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; not every platform / file system allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` and return its state dict.

    Raises ``ValueError`` naming ``path`` when the file is missing, unreadable, corrupt or not
    a wheretolearn checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise ValueError(f"checkpoint {path} is corrupt or unreadable: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                         ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path} is not a wheretolearn checkpoint "
                         f"(expected format {CHECKPOINT_FORMAT!r})")
    return payload["state"]
