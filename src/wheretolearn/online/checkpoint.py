"""Atomic checkpoints of an online study (model, optimiser, buffer, sampler; SPEC §5).

Two levels:

* :func:`save_checkpoint` / :func:`load_checkpoint`: one state file, written atomically;
* :class:`CheckpointStore`: the checkpoints of a run folder. One checkpoint is a *folder*
  ``checkpoints/NNNNNN/`` holding ``checkpoint.pt`` (everything), ``ledger.json`` (the same
  ledger, readable without torch) and ``manifest.json`` (format, sequence number, batch,
  and the size and SHA-256 of each file). It is written in a hidden staging folder, the
  manifest last, everything fsynced, and published with **one** ``rename``: a reader (or a
  resume after a SIGKILL at any instant) sees a complete checkpoint or none, never a
  ``checkpoint.pt`` whose ``ledger.json`` is missing or older. Resume takes the newest
  checkpoint whose manifest verifies and falls back to the previous one; the store keeps
  the last ``keep`` (2). :class:`CheckpointWriter` writes from a background thread (the
  state handed to it must be a snapshot: :func:`snapshot_state` copies every tensor).

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

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "snapshot_state", "CheckpointStore",
           "CheckpointWriter", "CHECKPOINT_FORMAT", "MANIFEST_FORMAT"]

#: Marker stored with every checkpoint, checked on load.
CHECKPOINT_FORMAT = "wheretolearn-checkpoint/1"

#: Marker of a checkpoint folder's ``manifest.json``.
MANIFEST_FORMAT = "wheretolearn-checkpoint-dir/1"

_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _plain(obj: Any, where: str, copy: bool = False) -> Any:
    """Recursively convert ``obj`` into containers a weights-only ``torch.load`` accepts
    (``copy``: clone tensors too, so that later in-place updates do not reach the result)."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj)).clone()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone() if copy else obj
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, dict):
        return {k: _plain(v, f"{where}[{k!r}]", copy) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]", copy) for i, v in enumerate(obj)]
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


def snapshot_state(state: dict) -> dict:
    """A deep copy of ``state`` in checkpoint form (tensors cloned, numpy arrays converted),
    safe to write from another thread while training goes on."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    return _plain(state, "", copy=True)


def _write_file(path: Path, write: Any) -> dict:
    """Write ``path`` with ``write(fh)``, fsync it; return its ``{"bytes", "sha256"}``."""
    with open(path, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    return _file_digest(path)


def _file_digest(path: Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


class CheckpointStore:
    """The checkpoints of one run folder: ``<run_dir>/checkpoints/NNNNNN/`` (see module doc).

    Parameters
    ----------
    run_dir : path
        The run folder.
    keep : int
        Complete checkpoints kept (older ones are deleted after a new one is published);
        at least 2, so that a damaged newest one has a fallback.
    """

    DIRNAME = "checkpoints"
    _NAME = re.compile(r"^\d{6,}$")

    def __init__(self, run_dir: str | os.PathLike, *, keep: int = 2):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 2:
            raise ValueError(f"keep must be an integer >= 2, got {keep!r}")
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / self.DIRNAME
        self.keep = keep

    # ------------------------------------------------------------ reading
    def _numbered(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        dirs = [p for p in self.root.iterdir() if p.is_dir() and self._NAME.match(p.name)]
        return sorted(dirs, key=lambda p: int(p.name))

    def verify(self, folder: str | os.PathLike) -> dict:
        """The manifest of checkpoint ``folder`` after checking every file it names.

        Raises ``ValueError`` naming the folder and what is wrong (no manifest, a missing
        file, a size or SHA-256 that differs).
        """
        folder = Path(folder)
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"checkpoint {folder} has no readable manifest.json "
                             f"({type(exc).__name__})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"checkpoint {folder} manifest is not {MANIFEST_FORMAT!r}")
        for name, want in manifest.get("files", {}).items():
            path = folder / name
            if not path.is_file():
                raise ValueError(f"checkpoint {folder} lacks {name}")
            if _file_digest(path) != want:
                raise ValueError(f"checkpoint {folder}: {name} does not match its manifest")
        return manifest

    def complete(self) -> list[Path]:
        """Folders of the complete (verified) checkpoints, oldest first."""
        out = []
        for p in self._numbered():
            try:
                self.verify(p)
            except ValueError:
                continue
            out.append(p)
        return out

    def latest(self) -> Path | None:
        """Folder of the newest complete checkpoint (``None`` when there is none)."""
        for p in reversed(self._numbered()):
            try:
                self.verify(p)
            except ValueError:
                continue
            return p
        return None

    def load_latest(self, *, map_location: Any = "cpu") -> tuple[dict, Path] | None:
        """``(state, folder)`` of the newest checkpoint that verifies and loads, falling back
        to older ones; ``None`` when there is none."""
        for p in reversed(self._numbered()):
            try:
                self.verify(p)
                return load_checkpoint(p / "checkpoint.pt", map_location=map_location), p
            except ValueError:
                continue
        return None

    # ------------------------------------------------------------ writing
    def clean_staging(self) -> None:
        """Remove staging folders left by a writer that was killed."""
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith(".") and p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)

    def publish(self, state: dict, *, ledger_json: dict | None = None,
                info: dict | None = None) -> Path:
        """Write ``state`` (and ``ledger_json`` as ``ledger.json``) as the next checkpoint.

        Returns the published folder. ``info`` (JSON-able) goes into the manifest.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        self.root.mkdir(parents=True, exist_ok=True)
        numbered = self._numbered()
        seq = int(numbered[-1].name) + 1 if numbered else 1
        final = self.root / f"{seq:06d}"
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{seq:06d}."))
        try:
            payload = {"format": CHECKPOINT_FORMAT, "state": _plain(state, "")}
            files = {"checkpoint.pt": _write_file(staging / "checkpoint.pt",
                                                  lambda fh: torch.save(payload, fh))}
            if ledger_json is not None:
                text = json.dumps(ledger_json, indent=1).encode()
                files["ledger.json"] = _write_file(staging / "ledger.json",
                                                   lambda fh: fh.write(text))
            manifest = {"format": MANIFEST_FORMAT, "seq": seq, "files": files, **(info or {})}
            mtext = json.dumps(manifest, indent=1).encode()
            _write_file(staging / "manifest.json", lambda fh: fh.write(mtext))
            _fsync_dir(staging)
            os.rename(staging, final)          # the one step that publishes it
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(self.root)
        for old in self._numbered()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final


class CheckpointWriter:
    """Publish checkpoints to a :class:`CheckpointStore` from one background thread.

    :meth:`submit` hands over a *snapshot* (see :func:`snapshot_state`) and returns at
    once; at most one write is in flight (a second submit first waits for the previous
    one). :meth:`wait` blocks until the last write finished and re-raises its error.
    ``seconds_writing`` sums the writes' durations; ``seconds_blocked`` the time callers
    waited for a previous write.
    """

    def __init__(self, store: CheckpointStore):
        self.store = store
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.seconds_writing = 0.0
        self.seconds_blocked = 0.0
        self.published: list[Path] = []

    def _run(self, state: dict, ledger_json: dict | None, info: dict | None) -> None:
        import time

        t0 = time.monotonic()
        try:
            self.published.append(self.store.publish(state, ledger_json=ledger_json,
                                                     info=info))
        except BaseException as exc:  # noqa: BLE001 -- re-raised by wait()
            self._error = exc
        finally:
            self.seconds_writing += time.monotonic() - t0

    def submit(self, state: dict, *, ledger_json: dict | None = None,
               info: dict | None = None) -> None:
        """Start writing ``state`` in the background (after the previous write ended)."""
        import time

        t0 = time.monotonic()
        self.wait()
        self.seconds_blocked += time.monotonic() - t0
        self._thread = threading.Thread(target=self._run, args=(state, ledger_json, info),
                                        name="wheretolearn-checkpoint", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until no write is in flight; raise the error of a failed write."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err
