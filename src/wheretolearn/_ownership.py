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

Even then, every path *anywhere* inside (not only at the top) must be one the project
writes, or the folder is foreign and nothing in it is deleted:

* a run folder whose marker records its paths (``"paths"``, written when the folder is
  finalised, see :func:`list_tree`) may hold only those recorded paths that also match
  the layout the project writes (:func:`_run_path_ok`): a forged entry (``thesis.txt``,
  ``../x``, ``/etc/passwd``) gives no permission;
* a run folder without such a record (an earlier version, an online run) may hold only
  that layout: the top-level :data:`RUN_NAMES`, ``figures/*.png``, numbered
  ``checkpoints/`` with their three files, atomic writers' temporary files, and the
  ``families/<name>/`` sub-runs of a bilevel ``family = "best"`` run, each of that same
  layout (its own marker included, no ``families/`` below it);
* a data-set store may hold only zarr nodes, their metadata and their chunk files.

Symbolic links are never ours: a folder holding one is refused, so nothing outside it is
ever reached. :func:`remove_owned` deletes only what is ours, without following links.

:func:`check_output_location` checks, before any work, that an output path can be
created at all (no parent is a file, the first existing parent is writable) and that it
is not the current folder, a folder above it, the root or the home folder.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

__all__ = ["MARKER", "RUN_NAMES", "check_output_location", "check_replaceable", "list_tree",
           "owner", "remove_owned", "store_attributes", "write_marker"]

#: Marker file at the top of every run folder the project writes.
MARKER = ".wheretolearn.json"
#: Top-level names found in run folders (bilevel, demo, online, AMA), marker aside.
RUN_NAMES = frozenset({
    "config.toml", "metrics.jsonl", "summary.json", "evaluation.jsonl", "compare.jsonl",
    "figures",
    "checkpoint.pt", "ledger.json", "model.pt", "particles.pt", "checkpoint", "results.json",
    "report.md",
    "tables", "manifest.json", "checkpoints", "sampler.json", MARKER})
#: Top-level names of a zarr store (formats 2 and 3) besides its arrays and groups.
_ZARR_META = frozenset({"zarr.json", ".zgroup", ".zattrs", ".zmetadata", ".zarray"})
#: Files of one numbered checkpoint folder (``checkpoints/000001/``).
_CHECKPOINT_FILES = frozenset({"checkpoint.pt", "ledger.json", "manifest.json"})
#: How many foreign paths an error names.
_SHOWN = 3

_CHECKPOINT_DIR = re.compile(r"\d{6,}")
_CHECKPOINT_STAGING = re.compile(r"\.\d{6,}\.[A-Za-z0-9_]+")
_RANDOM = re.compile(r"[A-Za-z0-9_]+")
_DIGITS = re.compile(r"\d+")
_V2_CHUNK = re.compile(r"\d+(\.\d+)*")
#: A sub-run folder of a bilevel ``family = "best"`` run (``families/gaussian/``).
_FAMILY_DIR = re.compile(r"[a-z][a-z0-9_]*")

Kind = Literal["run", "dataset"]
_WHAT = {"run": "run folder", "dataset": "data set"}
#: ``(relative POSIX path, "file" | "dir" | "link" | "other")``
Entry = tuple[str, str]


def write_marker(folder: str | Path, kind: Kind, paths: list[str] | None = None) -> Path:
    """Write :data:`MARKER` into ``folder``: ``{"created_by": "wheretolearn", "kind",
    "version"}`` and, when known, ``"format": 2, "paths"``: every path written (relative
    POSIX paths, folders with a trailing ``/``, see :func:`list_tree`)."""
    from . import __version__

    p = Path(folder) / MARKER
    record: dict = {"created_by": "wheretolearn", "kind": kind, "version": __version__}
    if paths is not None:
        record.update({"format": 2, "paths": sorted(paths)})
    p.write_text(json.dumps(record) + "\n")
    return p


# ---------------------------------------------------------------------- walking a folder
def _kind(entry: os.DirEntry) -> str:
    """``"link"``, ``"dir"``, ``"file"`` or ``"other"``; links are never followed."""
    if entry.is_symlink():
        return "link"
    if entry.is_dir(follow_symlinks=False):
        return "dir"
    return "file" if entry.is_file(follow_symlinks=False) else "other"


def _entries(folder: Path) -> list[tuple[str, str]]:
    """``(name, kind)`` of the entries of ``folder``, sorted by name."""
    with os.scandir(folder) as it:
        return sorted((e.name, _kind(e)) for e in it)


def _label(rel: str, kind: str) -> str:
    return rel + "/" if kind == "dir" else rel


def list_tree(folder: str | Path) -> list[str]:
    """Every file and folder below ``folder`` as relative POSIX paths (folders end in
    ``/``), links and the marker left out: what :func:`write_marker` records."""
    out: list[str] = []

    def walk(path: Path, rel: str) -> None:
        for name, kind in _entries(path):
            if kind == "dir":
                out.append(f"{rel}{name}/")
                walk(path / name, f"{rel}{name}/")
            elif kind == "file" and not (rel == "" and name == MARKER):
                out.append(rel + name)

    walk(Path(folder), "")
    return out


def _classify(root: Path, accept: Callable[[tuple[str, ...], str], bool]) -> tuple[
        list[Entry], list[str]]:
    """``(ours, foreign)`` below ``root``: ``accept(parts, kind)`` decides each entry; a
    foreign folder is named, not entered; links and special files are always foreign."""
    ours: list[Entry] = []
    foreign: list[str] = []

    def walk(path: Path, parts: tuple[str, ...]) -> None:
        for name, kind in _entries(path):
            sub = (*parts, name)
            rel = "/".join(sub)
            if kind in ("file", "dir") and accept(sub, kind):
                ours.append((rel, kind))
                if kind == "dir":
                    walk(path / name, sub)
            else:
                foreign.append(_label(rel, kind))

    walk(root, ())
    return ours, foreign


# ---------------------------------------------------------------------- run folders
def _is_temp(name: str, bases: frozenset[str] | set[str]) -> bool:
    """A hidden temporary file of an atomic writer of one of ``bases`` (``.NAME.tmp``,
    ``.NAME.XXXXXXXX.tmp``), left only when a writer was killed mid-write."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    core = name[1:-4]
    base, _, random = core.rpartition(".")
    return core in bases or (base in bases and bool(_RANDOM.fullmatch(random)))


def _run_path_ok(parts: tuple[str, ...], kind: str) -> bool:
    """Whether the project writes a ``kind`` entry at ``parts`` in a run folder."""
    head, depth, name = parts[0], len(parts), parts[-1]
    if depth == 1:
        return (name in RUN_NAMES or (kind == "dir" and name in (".dask-tls", "families"))
                or (kind == "file" and _is_temp(name, RUN_NAMES)))
    if head == "families":   # a bilevel ``family = "best"`` run: one run folder per family
        if depth == 2:
            return kind == "dir" and bool(_FAMILY_DIR.fullmatch(name))
        return parts[2] != "families" and _run_path_ok(parts[2:], kind)
    if head == "figures":
        return depth == 2 and kind == "file" and name.endswith(".png") and name[0] != "."
    if head == ".dask-tls":
        return depth == 2 and kind == "file" and name.startswith(".dask-jobqueue.worker.")
    if head != "checkpoints":
        return False
    if depth == 2:
        return kind == "dir" and bool(_CHECKPOINT_DIR.fullmatch(name)
                                      or _CHECKPOINT_STAGING.fullmatch(name))
    return depth == 3 and kind == "file" and (name in _CHECKPOINT_FILES
                                              or _is_temp(name, _CHECKPOINT_FILES))


def _clean_entry(entry: object) -> str | None:
    """A recorded path as the walk names it, or ``None`` when it is not a plain relative
    path (absolute, ``..``, ``.``, empty parts, backslashes, not a string)."""
    if not isinstance(entry, str) or not entry or entry.startswith("/") or "\\" in entry:
        return None
    parts = entry[:-1].split("/") if entry.endswith("/") else entry.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return entry


def _recorded(record: dict) -> set[str] | None:
    """The valid recorded paths of a marker (``None``: the marker records none)."""
    paths = record.get("paths")
    if record.get("format") != 2 or not isinstance(paths, list):
        return None
    return {e for e in map(_clean_entry, paths) if e is not None}


def _run_rule(path: Path, names: list[str]) -> Callable[[tuple[str, ...], str], bool] | None:
    """How to tell our paths in the run folder ``path`` (``None``: not a run folder of ours)."""
    marker = path / MARKER
    if marker.is_file() and not marker.is_symlink():
        try:
            record = json.loads(marker.read_text())
        except (OSError, ValueError):
            record = {}
        if not isinstance(record, dict) or record.get("created_by") != "wheretolearn":
            return None
        recorded = _recorded(record)
        if recorded is not None:
            return lambda parts, kind: _run_path_ok(parts, kind) and (
                parts == (MARKER,) or _label("/".join(parts), kind) in recorded)
    elif "config.toml" not in names or not ({"summary.json", "metrics.jsonl",
                                              "checkpoint.pt"} & set(names)):
        return None
    return _run_path_ok


def store_attributes(path: str | Path) -> dict:
    """The root attributes of a zarr store, read from its metadata file directly (so that
    a store with a damaged array is still recognised); ``{}`` when there are none."""
    p = Path(path)
    for meta, field in (("zarr.json", "attributes"), (".zattrs", None)):
        if (p / meta).is_symlink():
            continue
        try:
            record = json.loads((p / meta).read_text())
        except (OSError, ValueError):
            continue
        attrs = record.get(field, {}) if field and isinstance(record, dict) else record
        return attrs if isinstance(attrs, dict) else {}
    return {}


# ---------------------------------------------------------------------- data-set stores
def _is_node(folder: Path) -> bool:
    """A zarr group or array folder (its metadata may be damaged, not its chunks absent)."""
    return any((folder / m).is_file() and not (folder / m).is_symlink() for m in _ZARR_META) or (
        (folder / "c").is_dir() and not (folder / "c").is_symlink())


def _store_paths(root: Path) -> tuple[list[Entry], list[str]]:
    """``(ours, foreign)`` below the zarr store ``root``: nodes, their metadata files and
    chunk files (``c/0/1`` of format 3, ``0.1`` or ``0/1`` of format 2); nothing else."""
    ours: list[Entry] = []
    foreign: list[str] = []

    def chunks(path: Path, rel: str) -> None:
        for name, kind in _entries(path):
            if kind in ("file", "dir") and _DIGITS.fullmatch(name):
                ours.append((rel + name, kind))
                if kind == "dir":
                    chunks(path / name, f"{rel}{name}/")
            else:
                foreign.append(_label(rel + name, kind))

    def node(path: Path, rel: str) -> None:
        for name, kind in _entries(path):
            sub = path / name
            if kind == "file" and (name in _ZARR_META or name == "c"
                                   or _V2_CHUNK.fullmatch(name)):
                ours.append((rel + name, kind))
            elif kind == "dir" and (name == "c" or _DIGITS.fullmatch(name)):
                ours.append((rel + name, kind))
                chunks(sub, f"{rel}{name}/")
            elif kind == "dir" and _is_node(sub):
                ours.append((rel + name, kind))
                node(sub, f"{rel}{name}/")
            else:
                foreign.append(_label(rel + name, kind))

    node(root, "")
    return ours, foreign


def _dataset_ours(path: Path, names: list[str]) -> bool:
    if not ({"zarr.json", ".zgroup"} & set(names)):
        return False
    attrs = store_attributes(path)
    return attrs.get("created_by") == "wheretolearn" or {"key", "problem", "n_chunks"} <= set(attrs)


# ---------------------------------------------------------------------- ownership
def _scan(path: Path) -> tuple[Kind | None, list[Entry], list[str]]:
    """``(kind, ours, foreign)`` of the folder ``path`` (kind ``None``: not ours)."""
    names = sorted(e.name for e in path.iterdir())
    if _dataset_ours(path, names):
        return ("dataset", *_store_paths(path))
    rule = _run_rule(path, names)
    if rule is None:
        return None, [], names
    return ("run", *_classify(path, rule))


def owner(path: str | Path) -> tuple[Kind | None, list[str]]:
    """``(kind, foreign)``: which kind of project output ``path`` is (``None``: not ours) and
    the paths anywhere in it (relative, POSIX, folders ending in ``/``) that the project
    did not write."""
    p = Path(path)
    if not p.is_dir() or p.is_symlink():
        return None, []
    kind, _, foreign = _scan(p)
    return kind, foreign


def remove_owned(path: str | Path, kind: Kind) -> list[str]:
    """Delete what wheretolearn wrote in the ``kind`` output ``path``, then ``path`` when
    empty; return the paths kept (anything not ours, e.g. added since it was checked).

    Links are removed as links only when ours, which they never are: nothing outside
    ``path`` is ever reached. Nothing is deleted when ``path`` is not a ``kind`` output."""
    p = Path(path)
    if p.is_symlink() or not p.is_dir():
        raise ValueError(f"{str(p)!r} is not a folder; nothing is deleted")
    found, ours, foreign = _scan(p)
    if found != kind:
        return sorted(e.name for e in p.iterdir())
    for rel, entry_kind in ours:
        if entry_kind == "file":
            _unlink_file(p / rel)
    for rel, entry_kind in sorted(ours, key=lambda e: -e[0].count("/")):
        if entry_kind == "dir":
            _rmdir_empty(p / rel)
    _rmdir_empty(p)
    if not p.exists():
        return []
    # what is left: the foreign paths, and whatever appeared while deleting
    return sorted(set(foreign) | set(_classify(p, lambda parts, kind: kind == "dir")[1]))


def _unlink_file(path: Path) -> None:
    """Delete a plain file (never a link's target, never a folder)."""
    try:
        if path.is_file() and not path.is_symlink():
            path.unlink()
    except FileNotFoundError:
        pass


def _rmdir_empty(path: Path) -> None:
    """Remove ``path`` when it is an empty folder (not a link); keep it otherwise."""
    try:
        if not path.is_symlink():
            path.rmdir()
    except OSError:
        pass


def _name_paths(foreign: list[str]) -> str:
    """``'a', 'b/' and 3 more``: the first few foreign paths."""
    shown = ", ".join(repr(f) for f in foreign[:_SHOWN])
    more = len(foreign) - _SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def check_replaceable(path: str | Path, kind: Kind, *, overwrite: bool) -> bool:
    """Raise ``FileExistsError`` unless ``path`` may receive a new output of ``kind``.

    Returns ``True`` when something exists that will be replaced (only when ``overwrite``
    and the existing output is a ``kind`` output that the project wrote, with nothing
    else anywhere in it), ``False`` when ``path`` is absent or an empty folder."""
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
            f"output folder {str(p)!r} is a wheretolearn {what} but also holds "
            f"{_name_paths(foreign)}, which wheretolearn did not write (links are never "
            "followed); it is not replaced: move those out or choose another --out")
    if not overwrite:
        raise FileExistsError(f"output folder {str(p)!r} already exists and is not empty; "
                              "choose another --out or pass --overwrite")
    return True


def normalise_out(path: str | Path) -> Path:
    """``path`` made absolute (``~`` expanded); ``..`` parts are resolved, so that the last
    part is a real name (staging folders are named after it)."""
    p = Path(path).expanduser().absolute()
    return p.resolve() if ".." in p.parts else p


def _check_not_enclosing(p: Path) -> None:
    """Refuse an output that is the current folder, a folder above it, the file system root
    or the home folder (replacing or filling it would touch everything in it)."""
    target = p.resolve()
    places = {Path(target.anchor)}
    try:
        cwd = Path.cwd().resolve()
        places.update((cwd, *cwd.parents))
    except OSError:                     # the current folder was deleted
        pass
    try:
        places.add(Path.home().resolve())
    except (OSError, RuntimeError):     # no home folder known
        pass
    if target in places:
        raise ValueError(
            f"output path {str(p)!r} is the current folder, a folder above it, the root or "
            "the home folder; wheretolearn writes a new folder: choose one below it (e.g. "
            "runs/NAME)")


def check_output_location(path: str | Path) -> None:
    """Raise ``ValueError`` when ``path`` cannot be created: it is the current folder or
    encloses it (or is the root or home folder), a parent is a file, or the first existing
    parent folder is not writable (read-only file system, permissions)."""
    p = Path(path).expanduser().absolute()
    _check_not_enclosing(p)
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
