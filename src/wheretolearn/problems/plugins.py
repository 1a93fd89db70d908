"""Problems from outside the package: import paths and the ``wheretolearn.problems`` entry points.

A problem *spec* names one of three things, tried in this order:

1. a name registered in this package (``"heat2d"``, ``"sobol-g"``, ...);
2. an import path ``"package.module:factory"`` or a file path ``"path/to/file.py:factory"``
   (a file path is made absolute by :func:`canonical_spec`, so Dask workers and batch jobs
   started elsewhere import the same file); ``factory(**options)`` must return a
   :class:`~wheretolearn.problems.Problem`;
3. a name that an installed distribution registers in the entry-point group
   ``wheretolearn.problems``, e.g. in its ``pyproject.toml``::

       [project.entry-points."wheretolearn.problems"]
       my-solver = "mypkg.solvers:make_solver"

Every import failure becomes a ``ValueError`` naming the spec and the cause, so the command
line prints one ``error:`` line. Workers resolve the spec string themselves: they never rely
on the driver having imported the module.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

__all__ = ["ENTRY_POINT_GROUP", "canonical_spec", "entry_point_problems", "find_factory",
           "is_import_spec", "load_factory"]

#: Entry-point group in which installed packages register problems by name.
ENTRY_POINT_GROUP = "wheretolearn.problems"


def is_import_spec(spec: str) -> bool:
    """Whether ``spec`` looks like ``"module:factory"`` or ``"file.py:factory"``."""
    module, sep, attr = spec.rpartition(":")
    return bool(sep and module and attr and attr.replace(".", "_").isidentifier())


def canonical_spec(spec: str, *, base: str | Path | None = None) -> str:
    """``spec`` with a relative ``file.py`` part made absolute (against ``base``, default the
    current folder); other specs are returned unchanged."""
    if not is_import_spec(spec):
        return spec
    module, _, attr = spec.rpartition(":")
    if module.endswith(".py"):
        path = Path(module).expanduser()
        if not path.is_absolute():
            path = Path(base or Path.cwd()) / path
        return f"{path.resolve()}:{attr}"
    return spec


def _import_module(module: str, spec: str) -> Any:
    if module.endswith(".py"):
        path = Path(module).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"problem {spec!r}: file {str(path)!r} does not exist")
        name = "_wheretolearn_user_" + "".join(c if c.isalnum() else "_" for c in str(path))
        if name in sys.modules:
            return sys.modules[name]
        loader_spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = mod       # before exec: dataclasses and pickle look it up
        try:
            loader_spec.loader.exec_module(mod)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return mod
    return importlib.import_module(module)


def load_factory(spec: str) -> Callable[..., Any]:
    """The callable named by ``"module:attr"`` / ``"file.py:attr"`` (``attr`` may be dotted).

    Raises ``ValueError`` naming the spec when the module cannot be imported (including
    errors raised while importing it) or has no such attribute.
    """
    module, _, attr = spec.rpartition(":")
    try:
        obj = _import_module(module, spec)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 -- any import failure is a user-input error here
        raise ValueError(f"problem {spec!r}: cannot import {module!r} "
                         f"({type(exc).__name__}: {exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"problem {spec!r}: {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"problem {spec!r}: {attr!r} is a {type(obj).__name__}, not a "
                         "callable returning a Problem")
    return obj


def entry_point_problems() -> dict[str, metadata.EntryPoint]:
    """Problems registered by installed distributions, by name (read on every call, so a
    package installed while Python runs is found)."""
    importlib.invalidate_caches()
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load_entry_point(name: str) -> Callable[..., Any] | None:
    """The factory registered under ``name`` in :data:`ENTRY_POINT_GROUP`, or None."""
    ep = entry_point_problems().get(name)
    if ep is None:
        return None
    try:
        factory = ep.load()
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"problem {name!r}: its entry point {ep.value!r} cannot be loaded "
                         f"({type(exc).__name__}: {exc})") from exc
    if not callable(factory):
        raise ValueError(f"problem {name!r}: entry point {ep.value!r} is not callable")
    return factory


def find_factory(spec: str) -> Callable[..., Any] | None:
    """The factory a user spec names: an import / file path (:func:`load_factory`) or an
    installed plugin name (:func:`load_entry_point`); None when ``spec`` is neither."""
    return load_factory(spec) if is_import_spec(spec) else load_entry_point(spec)
