"""What the project wrote, and may therefore replace: run folders and data-set stores.

``--overwrite`` replaces only an output that wheretolearn itself wrote; anything else (a
folder holding a user's files, a foreign zarr store, a plain file) is refused with a
``FileExistsError`` naming it. An output is *ours* when

* a run folder carries the marker file :data:`MARKER` (written by every run folder since
  it was introduced), or -- written by an earlier version -- has a ``config.toml`` and
  only names that run folders contain (:data:`RUN_NAMES`);
* a data-set store is a zarr group whose attributes carry ``created_by = "wheretolearn"``,
  or -- written by an earlier version -- the content ``key``, ``problem`` and
  ``n_chunks`` that :func:`wheretolearn.datasets.generate_dataset` records.

Even then, an entry that the project does not write (``thesis.txt`` dropped into a run
folder) makes the folder foreign: nothing a user put there is ever deleted.

:func:`check_output_location` checks, before any work, that an output path can be
created at all (no parent is a file, the first existing parent is writable).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

__all__ = ["MARKER", "RUN_NAMES", "check_output_location", "check_replaceable", "owner",
           "store_attributes", "write_marker"]

#: Marker file at the top of every run folder the project writes.
MARKER = ".wheretolearn.json"
#: Top-level names found in run folders (bilevel, demo, online, AMA), marker aside.
RUN_NAMES = frozenset({
    "config.toml", "metrics.jsonl", "summary.json", "evaluation.jsonl", "figures",
    "checkpoint.pt", "ledger.json", "model.pt", "checkpoint", "results.json", "report.md",
    "tables", "manifest.json", "checkpoints", "sampler.json", MARKER})
#: Top-level names of a zarr store (formats 2 and 3) besides its arrays and groups.
_ZARR_META = frozenset({"zarr.json", ".zgroup", ".zattrs", ".zmetadata", ".zarray"})

Kind = Literal["run", "dataset"]
_WHAT = {"run": "run folder", "dataset": "data set"}


def write_marker(folder: str | Path, kind: Kind, files: list[str] | None = None) -> Path:
    """Write :data:`MARKER` into ``folder``: ``{"created_by": "wheretolearn", "kind", "version",
    "files"}`` (``files``: the top-level names written, when known)."""
    from . import __version__

    p = Path(folder) / MARKER
    record = {"created_by": "wheretolearn", "kind": kind, "version": __version__}
    if files is not None:
        record["files"] = sorted(files)
    p.write_text(json.dumps(record) + "\n")
    return p


def _is_our_temp(name: str) -> bool:
    """Hidden temporary files that atomic writers leave only when killed mid-write."""
    return name.startswith(".") and ".tmp" in name


def _run_owner(path: Path, names: list[str]) -> tuple[Kind | None, list[str]]:
    allowed = set(RUN_NAMES)
    marker = path / MARKER
    if marker.is_file():
        try:
            record = json.loads(marker.read_text())
        except (OSError, ValueError):
            record = {}
        if not isinstance(record, dict) or record.get("created_by") != "wheretolearn":
            return None, names
        allowed.update(record.get("files") or [])
    elif "config.toml" not in names or not ({"summary.json", "metrics.jsonl",
                                              "checkpoint.pt"} & set(names)):
        return None, names
    foreign = [n for n in names if n not in allowed and not _is_our_temp(n)]
    return "run", foreign


def store_attributes(path: str | Path) -> dict:
    """The root attributes of a zarr store, read from its metadata file directly (so that
    a store with a damaged array is still recognised); ``{}`` when there are none."""
    p = Path(path)
    for meta, field in (("zarr.json", "attributes"), (".zattrs", None)):
        try:
            record = json.loads((p / meta).read_text())
        except (OSError, ValueError):
            continue
        attrs = record.get(field, {}) if field else record
        return attrs if isinstance(attrs, dict) else {}
    return {}


def _dataset_owner(path: Path, names: list[str]) -> tuple[Kind | None, list[str]]:
    if not ({"zarr.json", ".zgroup"} & set(names)):
        return None, names
    attrs = store_attributes(path)
    ours = attrs.get("created_by") == "wheretolearn" or {"key", "problem", "n_chunks"} <= set(attrs)
    if not ours:
        return None, names
    # members: sub-folders that are zarr nodes (their metadata may be damaged, not absent)
    foreign = [n for n in names if n not in _ZARR_META and not (
        (path / n).is_dir() and any((path / n / m).exists() for m in _ZARR_META | {"c"}))]
    return "dataset", foreign


def owner(path: str | Path) -> tuple[Kind | None, list[str]]:
    """``(kind, foreign)``: which kind of project output ``path`` is (``None``: not ours) and
    the top-level entries in it that the project did not write."""
    p = Path(path)
    if not p.is_dir():
        return None, []
    names = sorted(e.name for e in p.iterdir())
    kind, foreign = _dataset_owner(p, names)
    if kind is None:
        kind, foreign = _run_owner(p, names)
    return kind, foreign


def check_replaceable(path: str | Path, kind: Kind, *, overwrite: bool) -> bool:
    """Raise ``FileExistsError`` unless ``path`` may receive a new output of ``kind``.

    Returns ``True`` when something exists that will be replaced (only when ``overwrite``
    and the existing output is a ``kind`` output that the project wrote, with nothing
    else in it), ``False`` when ``path`` is absent or an empty folder."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return False
    if not p.is_dir() or p.is_symlink():
        raise FileExistsError(f"output path {str(p)!r} exists and is not a folder; "
                              "--overwrite replaces only what wheretolearn wrote, never a file")
    if not any(p.iterdir()):
        return False
    found, foreign = owner(p)
    what = _WHAT[kind]
    if found is None:
        raise FileExistsError(
            f"output folder {str(p)!r} already exists and was not written by wheretolearn"
            f"{'' if overwrite else ' (or is not empty)'}; it is never replaced, even with "
            "--overwrite: choose another --out")
    if found != kind:
        raise FileExistsError(f"output folder {str(p)!r} holds a wheretolearn {_WHAT[found]}, "
                              f"not a {what}; it is not replaced: choose another --out")
    if foreign:
        raise FileExistsError(
            f"output folder {str(p)!r} is a wheretolearn {what} but also holds {foreign[0]!r}, "
            "which wheretolearn did not write; it is not replaced: move that out or choose "
            "another --out")
    if not overwrite:
        raise FileExistsError(f"output folder {str(p)!r} already exists and is not empty; "
                              "choose another --out or pass --overwrite")
    return True


def check_output_location(path: str | Path) -> None:
    """Raise ``ValueError`` when ``path`` cannot be created: a parent is a file, or the first
    existing parent folder is not writable (read-only file system, permissions)."""
    p = Path(path).expanduser().absolute()
    parent = p.parent
    while not parent.exists():
        if parent.is_symlink():
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"cannot create {str(p)!r}: {str(parent)!r} is a file, not a folder")
    target = p if p.exists() else parent
    if target.is_dir() and not os.access(target, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write in {str(target)!r} (read-only file system or no "
                         "permission); choose another --out")
