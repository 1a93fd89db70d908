"""Run folders that appear on disk only when a study succeeded.

A study writes everything (resolved config, per-step metrics, summary, figures) into a
hidden staging directory next to the requested output folder; :meth:`RunFolder.commit`
renames it to the final name in one step. Any exception inside the ``with`` block removes
the staging directory, so a failed or interrupted study leaves nothing half-written.

A resumable study (an online study, which checkpoints into its folder while it runs and
is continued from there) creates its folder that way, with its ``config.toml``, then
writes into it in place: :meth:`RunFolder.reopen`. In place, every whole file is still
replaced in one rename (never seen half-written) and :meth:`RunFolder.commit` records
the paths in the marker once the study is finished.

Layout of a finished run folder::

    out/
      config.toml      resolved configuration (every default filled in)
      metrics.jsonl    one JSON object per line (e.g. one per optimisation step)
      summary.json     final numbers
      figures/*.png    plots
      .wheretolearn.json  marker: this folder was written by wheretolearn, and every path
                       in it (``--overwrite`` replaces only such folders holding nothing
                       else, see :mod:`wheretolearn._ownership`)

The class is generic: bilevel, AMA and online studies all use it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._ownership import (MARKER, check_output_location, check_replaceable, list_tree,
                          normalise_out, owner, remove_owned, write_marker)

__all__ = ["RunFolder", "to_jsonable"]


def to_jsonable(value: Any) -> Any:
    """Convert numpy / torch scalars and arrays, paths and tuples into plain JSON types.

    Non-finite floats become ``None`` (JSON has no NaN); everything else that is not
    serialisable raises ``TypeError`` naming its type.
    """
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy arrays/scalars, torch tensors
        obj = value.detach().cpu().tolist() if hasattr(value, "detach") else value.tolist()
        return to_jsonable(obj)
    raise TypeError(f"value of type {type(value).__name__} is not JSON-serialisable")


def toml_ready(value: Any) -> Any:
    """TOML has no null: drop ``None`` entries (they mean "default") and jsonify the rest."""
    if isinstance(value, dict):
        return {str(k): toml_ready(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [toml_ready(v) for v in value if v is not None]
    return to_jsonable(value)


def _check_out_argument(out: Any) -> None:
    if not isinstance(out, (str, os.PathLike)) or str(out) == "":
        raise TypeError(f"out must be a non-empty path, got {out!r}")


def _remove_replaced(old: Path) -> None:
    """Delete the replaced run folder ``old``: only what wheretolearn wrote in it (a file a
    user added since the check is kept there, with a warning naming it)."""
    try:
        kept = remove_owned(old, "run")
    except OSError as exc:
        kept = [f"({exc})"]
    if kept:
        warnings.warn(f"the replaced run folder is kept as {str(old)!r}: it holds "
                      f"{kept[0]!r}, which wheretolearn did not write", stacklevel=3)


class RunFolder:
    """Atomic output folder for one study.

    Parameters
    ----------
    out : str or Path
        Final folder. It must not exist, or be empty, unless ``overwrite=True`` and it is
        a run folder that wheretolearn wrote (then it is replaced, but only once the new
        run has succeeded). A plain file, a data-set store or a folder holding anything
        wheretolearn did not write is never replaced (``FileExistsError``).
    overwrite : bool
        Replace an existing run folder written by wheretolearn.

    Use as a context manager::

        with RunFolder("runs/x") as run:
            run.write_config_toml(cfg)
            run.append_metrics({"step": 0, "loss": 1.0})
            run.write_summary({...})
        # here runs/x exists; on an exception it does not

    Files are written under :attr:`path` (the staging directory while the run is open,
    the final folder after :meth:`commit`).
    """

    def __init__(self, out: str | Path, *, overwrite: bool = False):
        _check_out_argument(out)
        check_output_location(out)
        self.out = normalise_out(out)
        self.overwrite = bool(overwrite)
        self._check_target()
        self.staging = self.out.parent / f".{self.out.name}.staging-{uuid.uuid4().hex[:8]}"
        self._open = False
        self._committed = False
        self._in_place = False

    @classmethod
    def reopen(cls, out: str | Path) -> "RunFolder":
        """The existing run folder ``out``, open to write in place (no staging).

        For a study that goes on in its folder after an interruption (an online study:
        created with ``with RunFolder(out) as run: run.write_config_toml(...)``, then
        reopened to run and to resume). Nothing is removed, even on an exception: what
        was written stays for the next resume. Whole files (config, summary, JSON) are
        still written to a temporary file and renamed. A folder carrying the project's
        marker is marked *in progress* (its path list dropped, so ``--overwrite`` judges
        it by the run-folder layout, as it does an interrupted run) until :meth:`commit`
        records every path again.
        """
        _check_out_argument(out)
        path = normalise_out(out)
        if not path.is_dir() or path.is_symlink():
            raise ValueError(f"out must be an existing run folder to reopen, got {str(out)!r} "
                             f"({'a file' if path.exists() else 'does not exist'})")
        folder = cls.__new__(cls)
        folder.out, folder.overwrite, folder.staging = path, False, path
        folder._open, folder._committed, folder._in_place = True, False, True
        if (path / MARKER).is_file() and owner(path)[0] == "run":
            write_marker(path, "run")
        return folder

    # ---------------------------------------------------------------- lifecycle
    def _check_target(self) -> bool:
        """Refuse an ``out`` that may not be replaced (see :mod:`wheretolearn._ownership`);
        ``True`` when an earlier run folder will be replaced on commit."""
        return check_replaceable(self.out, "run", overwrite=self.overwrite)

    def open(self) -> "RunFolder":
        """Create the staging directory (and the parent of ``out`` if needed); a folder
        reopened in place (:meth:`reopen`) is open already."""
        if self._in_place and self._open:
            return self
        if self._open or self._committed:
            raise RuntimeError("run folder is already open or committed")
        self._check_target()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir()
        self._open = True
        return self

    def commit(self) -> Path:
        """Move the staging directory to ``out``; return the final path.

        In place (:meth:`reopen`): record every path of ``out`` in its marker."""
        if not self._open:
            raise RuntimeError("run folder is not open")
        if self._in_place:
            write_marker(self.out, "run", paths=list_tree(self.out))
            self._open, self._committed = False, True
            return self.out
        try:
            self._check_target()
        except FileExistsError as exc:
            # ``out`` appeared while the run was going: keep the finished run and say where
            raise FileExistsError(f"{exc}; this run's files are kept in "
                                  f"{str(self.staging)!r}") from None
        write_marker(self.staging, "run", paths=list_tree(self.staging))
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{uuid.uuid4().hex[:8]}"
            self.out.rename(old)
            self.staging.rename(self.out)
            _remove_replaced(old)
        else:
            self.staging.rename(self.out)
        self._open = False
        self._committed = True
        return self.out

    def abort(self) -> None:
        """Remove the staging directory; ``out`` is left untouched (in place: nothing is
        removed, the files stay for a resume)."""
        if self._open and self._in_place:
            self._open = False
        elif self._open:
            shutil.rmtree(self.staging, ignore_errors=True)
            self._open = False

    def __enter__(self) -> "RunFolder":
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False

    # ---------------------------------------------------------------- writers
    @property
    def path(self) -> Path:
        """Directory to write into now (staging while open, ``out`` once committed)."""
        if self._committed:
            return self.out
        if not self._open:
            raise RuntimeError("run folder is not open; use it as a context manager")
        return self.staging

    def file(self, name: str) -> Path:
        """Path of a file ``name`` (relative, may contain sub-folders) inside the run.

        Only the names :mod:`wheretolearn._ownership` knows (:data:`RUN_NAMES`,
        ``figures/*.png``) keep the run replaceable with ``--overwrite``."""
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"file name must be relative and stay inside the run, got {name!r}")
        p = self.path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def _replace(self, name: str, text: str) -> Path:
        """Write ``text`` to ``name`` through a temporary file renamed over it (a reader, or
        a study killed mid-write, never sees half a file)."""
        p = self.file(name)
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, p)
        return p

    def write_config_toml(self, config: dict[str, Any], name: str = "config.toml") -> Path:
        """Write the resolved configuration as TOML (``None`` values are left out)."""
        import tomli_w

        return self._replace(name, tomli_w.dumps(toml_ready(config)))

    def append_metrics(self, record: dict[str, Any], name: str = "metrics.jsonl") -> None:
        """Append one JSON object as one line of ``metrics.jsonl``."""
        line = json.dumps(to_jsonable(record), allow_nan=False)
        with self.file(name).open("a") as fh:
            fh.write(line + "\n")

    def truncate_metrics(self, n_lines: int, name: str = "metrics.jsonl") -> list[dict]:
        """Keep the first ``n_lines`` lines of ``metrics.jsonl`` (one rename) and return
        them as records; a resumed study drops the lines written after its checkpoint
        (it redoes those batches). An absent file stays absent (``[]``)."""
        if isinstance(n_lines, bool) or not isinstance(n_lines, int) or n_lines < 0:
            raise ValueError(f"n_lines must be an int >= 0, got {n_lines!r}")
        p = self.file(name)
        if not p.is_file():
            return []
        lines = p.read_text().splitlines()[:n_lines]
        self._replace(name, "".join(line + "\n" for line in lines))
        return [json.loads(line) for line in lines]

    def write_json(self, data: Any, name: str) -> Path:
        """Write ``data`` as indented JSON."""
        return self._replace(name, json.dumps(to_jsonable(data), indent=2, allow_nan=False)
                             + "\n")

    def write_summary(self, summary: dict[str, Any], name: str = "summary.json") -> Path:
        """Write the final summary (``summary.json``)."""
        return self.write_json(summary, name)

    def figure_path(self, name: str) -> Path:
        """Path ``figures/<name>.png`` (the suffix is added when missing)."""
        stem = name if name.endswith(".png") else f"{name}.png"
        return self.file(f"figures/{stem}")

    def __repr__(self) -> str:
        state = "committed" if self._committed else ("open" if self._open else "new")
        state += " in place" if self._in_place else ""
        return f"RunFolder({str(self.out)!r}, {state})"


@dataclass(frozen=True)
class StudyResult:
    """What every study runner returns (``run_bilevel_study``, ``run_ama_study``,
    ``run_online_study``, ``resume_online_study``).

    Attributes
    ----------
    config : the study's validated configuration object (as written to ``config.toml``)
    summary : dict, the contents of the run folder's ``summary.json``
    run_dir : Path, the run folder
    """

    config: Any
    summary: dict
    run_dir: Path
