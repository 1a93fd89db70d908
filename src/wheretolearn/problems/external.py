"""An external executable as a simulator, the Melissa way: one process per simulation.

:class:`ExternalCommandProblem` runs ``command`` (optionally behind a ``launcher`` such as
``["mpirun", "-n", "{cores}"]`` or ``["srun", "-n", "{cores}"]``) once per simulation and
streams its time steps back as they appear. Two ways for the program to hand over steps:

``protocol = "files"`` (default)
    The program writes one file per time step into the folder ``{outdir}``. Naming rule:
    the step index is the integer just before the extension, counted from 0
    (``step_00000.npy``, ``T-17.npz``); a ``.npy`` holds the field, a ``.npz`` holds it
    under the name ``array`` (default ``"field"``; an archive with a single array may use
    any name). Names starting with ``.`` and other extensions are ignored (write to
    ``.step_3.npy.tmp`` and ``os.replace`` it into place). A file is taken as soon as it is
    complete: a ``.npy`` whose size matches its header, a ``.npz`` whose archive opens. A
    file that still cannot be read once a later step's file exists or the program ended is
    *malformed*. Files are deleted once streamed (unless ``keep_outputs``).

``protocol = "client"``
    The program connects back with :func:`wheretolearn.client.connect` (address and ids in
    its environment) and calls ``c.send(step, field)``; nothing touches the disk.

Placeholders in ``command`` and ``launcher`` (``str.format`` syntax, ``{{`` for a brace):
``{p0}``, ``{p1}``, ... the parameters (full precision; ``{p0:.3f}`` works), ``{sim_id}``,
``{attempt}``, ``{outdir}`` (the step folder, created before the launch), ``{cores}``,
``{python}`` (the Python running the worker) -- plain names only, each optionally with a
conversion (``!s``, ``!r``, ``!a``) and a format spec without fields in it; anything else
(attribute access, indexing, nested fields) is refused up front. The environment also
carries ``WHERETOLEARN_SIM_ID``, ``WHERETOLEARN_ATTEMPT``, ``WHERETOLEARN_OUTDIR``,
``WHERETOLEARN_N_STEPS`` and ``WHERETOLEARN_PARAMS`` (JSON list).

Failures (each raises :class:`SimulationError` after killing the process group, which the
online executor records as a failed attempt and relaunches):

* non-zero exit -> ``exited with status N``, with the last lines of its stderr;
* no new step within ``step_timeout`` seconds -> hang; the program and everything it
  started are killed with SIGTERM, then SIGKILL. The program runs in a session (process
  group) of its own, killed as a group -- except when the calling process leads its own
  session (the online engine's per-attempt process): then the program stays in that group,
  so killing the attempt's group stops it too, and this class kills the program and its
  descendants by pid;
* a malformed step file (unreadable, wrong shape, non-finite values, step out of range);
* exit 0 without all ``n_steps`` steps -> ``exited with status 0 after k of n steps``.

Steps streamed before a failure stay streamed (the online ledger deduplicates by step). The
process group is also killed when the consumer stops iterating (``close()`` of the
generator), and when the Dask task running the simulation is cancelled. The per-attempt
working folder ``workdir/wtl-<sim>-<attempt>-<random>/`` (``out/`` = ``{outdir}``,
``stdout.log``, ``stderr.log``) is removed at the end unless ``keep_outputs``; a folder
whose owner was killed before it could clean up (the online engine kills a hung attempt
with SIGKILL) is removed by the next simulation of the same user started on the same host.
Without ``workdir`` the folders go into the private ``<tempdir>/wheretolearn-<uid>``
(mode 0700; refused if it is a link, another user's or writable by others).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path
from string import Formatter
from typing import Any, Iterator

import numpy as np

from .._validation import check_positive_float, check_positive_int, check_type
from ._step_streams import STEP_FILE_PATTERN, _ClientStream, _FileStream, read_step_file
from ._supervisor import _Process, _work_folder
from .base import register_problem
from .simulator import SimulatorProblem

__all__ = ["ExternalCommandProblem", "LaunchOptions", "SupervisionOptions", "STEP_FILE_PATTERN",
           "read_step_file"]

_CONVERSIONS = ("s", "r", "a")
_PROTOCOLS = ("files", "client")


@dataclasses.dataclass(frozen=True)
class LaunchOptions:
    """How :class:`ExternalCommandProblem` starts its program.

    Each field is also a flat option of ``get_problem("external", **options)`` (a TOML
    ``[study.options]`` key of the same name).

    Parameters
    ----------
    launcher : list of str, optional
        Prefix such as ``["mpirun", "-n", "{cores}"]`` or ``["srun", "-n", "{cores}"]``
        (stored as a tuple).
    cores : int
        Value of ``{cores}`` (default 1).
    cwd : str, optional
        Folder the program runs in (default: the current folder of the process that builds
        the problem); relative paths in ``command`` are relative to it.
    env : dict, optional
        Extra environment variables (keys and values stored as strings).
    """

    launcher: tuple[str, ...] | None = None
    cores: int = 1
    cwd: str | None = None
    env: dict[str, str] | None = None

    def __post_init__(self) -> None:
        launcher = None if self.launcher is None else tuple(_str_list(self.launcher, "launcher"))
        env = self.env
        if env is not None:
            if not isinstance(env, dict):
                raise TypeError(f"env must be a table of variable = value, got {env!r}")
            env = {str(k): str(v) for k, v in env.items()}
        object.__setattr__(self, "launcher", launcher)
        object.__setattr__(self, "cores", check_positive_int(self.cores, "cores"))
        object.__setattr__(self, "env", env)


@dataclasses.dataclass(frozen=True)
class SupervisionOptions:
    """How :class:`ExternalCommandProblem` collects the steps of a run and watches it.

    Each field is also a flat option of ``get_problem("external", **options)``.

    Parameters
    ----------
    protocol : "files" | "client"
        How steps come back (see the module doc).
    array : str
        Array name inside ``.npz`` step files (default ``"field"``).
    step_timeout : float
        Seconds without a new step after which the program counts as hung and is killed
        (default 60).
    workdir : str, optional
        Parent of the per-attempt working folders (default: the private per-user folder
        ``<tempdir>/wheretolearn-<uid>``).
    keep_outputs : bool
        Keep working folders and step files (default False: removed after each attempt).
    """

    protocol: str = "files"
    array: str = "field"
    step_timeout: float = 60.0
    workdir: str | None = None
    keep_outputs: bool = False

    def __post_init__(self) -> None:
        if self.protocol not in _PROTOCOLS:
            raise ValueError(f"protocol must be 'files' or 'client', got {self.protocol!r}")
        object.__setattr__(self, "array", str(self.array))
        object.__setattr__(self, "step_timeout",
                           check_positive_float(self.step_timeout, "step_timeout"))
        object.__setattr__(self, "keep_outputs", bool(self.keep_outputs))


@register_problem("external")
class ExternalCommandProblem(SimulatorProblem):
    """Simulator run as an external program, one process per simulation (see module doc).

    Parameters
    ----------
    command : list of str
        The program and its arguments, with placeholders (``{p0}``, ``{outdir}``, ...).
    bounds : (d, 2) array-like
        Parameter bounds; ``d`` must cover every ``{pK}`` used.
    n_steps : int
        Time steps one simulation produces (steps ``0..n_steps-1``).
    field_shape : tuple of int
        Shape of one step's field.
    names : list of str, optional
        Parameter names (default ``p0..``).
    dtype : "float32" | "float64"
        Dtype of the yielded fields.
    launch : LaunchOptions
        ``launcher``, ``cores``, ``cwd``, ``env``: how the program is started.
    supervision : SupervisionOptions
        ``protocol``, ``array``, ``step_timeout``, ``workdir``, ``keep_outputs``: how its
        steps are collected and the run watched.

    ``get_problem("external", **options)`` takes the fields of ``launch`` and
    ``supervision`` as flat options (``cores=4``, ``step_timeout=30``, ...), as a TOML
    ``[study.options]`` table gives them.
    """

    name = "external"

    def __init__(self, command: list[str], *, bounds: Any, n_steps: int, field_shape: Any,
                 names: list[str] | None = None, dtype: str = "float32",
                 launch: LaunchOptions = LaunchOptions(),
                 supervision: SupervisionOptions = SupervisionOptions()):
        super().__init__(bounds, n_steps=n_steps, field_shape=field_shape, names=names,
                         dtype=dtype)
        self.command = _str_list(command, "command")
        if not self.command:
            raise ValueError("command must name a program, got an empty list")
        check_type(launch, LaunchOptions, "launch")
        check_type(supervision, SupervisionOptions, "supervision")
        self.launcher = list(launch.launcher or [])
        self.cores = launch.cores
        self.cwd = str(Path(launch.cwd).expanduser().resolve()) if launch.cwd else os.getcwd()
        self.env = dict(launch.env or {})
        self.protocol = supervision.protocol
        self.array = supervision.array
        self.workdir = (str(Path(supervision.workdir).expanduser().resolve())
                        if supervision.workdir else None)
        self.keep_outputs = supervision.keep_outputs
        self.step_timeout = supervision.step_timeout
        self._check_placeholders()

    # ------------------------------------------------------------------ interface
    def options(self) -> dict[str, Any]:
        return {**super().options(), "command": list(self.command),
                "launcher": list(self.launcher), "cores": self.cores,
                "protocol": self.protocol, "array": self.array, "cwd": self.cwd,
                "workdir": self.workdir, "keep_outputs": self.keep_outputs,
                "step_timeout": self.step_timeout, "env": dict(self.env)}

    def argv(self, params: Any, *, sim_id: int = 0, attempt: int = 1,
             outdir: str = "OUTDIR") -> list[str]:
        """The command line of one simulation (launcher + command, placeholders filled)."""
        values = self._values(np.asarray(params, dtype=np.float64), sim_id, attempt, outdir)
        return [arg.format_map(values) for arg in self.launcher + self.command]

    def simulate(self, params: Any, *, sim_id: int = 0,
                 attempt: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        """Run the program for ``params (d,)``; yield ``(step, field)`` as steps complete."""
        p = np.asarray(params, dtype=np.float64)
        if p.shape != self.input_shape or not np.all(np.isfinite(p)):
            raise ValueError(f"params must be {self.input_shape} and finite, got shape "
                             f"{p.shape}")
        return self._run(p, int(sim_id), int(attempt))

    # ------------------------------------------------------------------ internals
    def _check_placeholders(self) -> None:
        """Check every launcher and command argument up front (see :func:`_check_template`):
        only the documented plain names, and each argument formats with sample values."""
        d = self.input_shape[0]
        names = [f"p{i}" for i in range(d)] + ["sim_id", "attempt", "outdir", "cores",
                                                "python"]
        shown = (", ".join(f"{{p{i}}}" for i in range(d)) if d <= 3
                 else f"{{p0}}..{{p{d - 1}}}")
        allowed = (f"{shown}, {{sim_id}}, {{attempt}}, {{outdir}}, {{cores}}, {{python}} as "
                   "plain names, each optionally with a conversion (!s, !r, !a) and a format "
                   "spec without fields in it (e.g. {p0:.3f}); {{ and }} for literal braces")
        sample = self._values(np.full(d, 0.5), 0, 1, "OUTDIR")
        for label, args in (("launcher", self.launcher), ("command", self.command)):
            for arg in args:
                _check_template(arg, f"{label} argument {arg!r}", set(names), allowed, sample)

    def _values(self, p: np.ndarray, sim_id: int, attempt: int, outdir: str) -> dict:
        values: dict[str, Any] = {f"p{i}": float(v) for i, v in enumerate(p)}
        values.update(sim_id=sim_id, attempt=attempt, outdir=outdir, cores=self.cores,
                      python=sys.executable)
        return values

    def _run(self, p: np.ndarray, sim_id: int, attempt: int) -> Iterator[tuple[int, np.ndarray]]:
        folder = _work_folder(self.workdir, sim_id, attempt, self.keep_outputs)
        outdir = folder / "out"
        outdir.mkdir()
        run = _Process(self, p, sim_id, attempt, folder, outdir)
        ok = False
        try:
            if self.protocol == "files":
                yield from _FileStream(self, run, outdir).steps()
            else:
                yield from _ClientStream(self, run).steps()
            ok = True
        finally:
            run.kill()
            if not self.keep_outputs:
                shutil.rmtree(folder, ignore_errors=True)
            elif not ok:
                (folder / "FAILED").touch()


def _check_template(arg: str, where: str, names: set[str], allowed: str,
                    sample: dict[str, Any]) -> None:
    """Refuse (``ValueError`` naming ``where``, the field and what is ``allowed``) any
    field of ``arg`` that is not a plain allowed name: attribute access, indexing, unknown
    names, unknown conversions, fields nested in a format spec; then format ``arg`` with
    ``sample`` values so that a bad format spec is caught before anything runs."""
    for field, conversion, spec, depth in _template_fields(arg, where, allowed):
        text = _field_text(field, conversion, spec)
        if depth:
            why = f"has the nested field {text} in a format spec"
        elif field in names:
            why = (f"has the conversion !{conversion} in {text}"
                   if conversion is not None and conversion not in _CONVERSIONS else "")
        elif "." in field or "[" in field:
            why = f"uses attribute access or indexing in {text}"
        else:
            raise ValueError(f"unknown placeholder {{{field}}} in {where}; allowed: {allowed}")
        if why:
            raise ValueError(f"{where} {why}; allowed: {allowed}")
    try:
        arg.format_map(sample)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"{where} cannot be formatted ({exc}); allowed: {allowed}") from None


def _template_fields(template: str, where: str, allowed: str,
                     depth: int = 0) -> Iterator[tuple[str, str | None, str, int]]:
    """Every replacement field of ``template`` as ``(name, conversion, spec, depth)``,
    including the fields nested in format specs (``depth`` > 0), recursively."""
    try:
        parsed = list(Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{where} is not a valid template ({exc}); allowed: "
                         f"{allowed}") from None
    for _, field, spec, conversion in parsed:
        if field is not None:
            yield field, conversion, spec or "", depth
            if spec:
                yield from _template_fields(spec, where, allowed, depth + 1)


def _field_text(field: str, conversion: str | None, spec: str) -> str:
    """A replacement field written back as in the template, e.g. ``{p0!r:>8}``."""
    return ("{" + field + (f"!{conversion}" if conversion is not None else "")
            + (f":{spec}" if spec else "") + "}")


def _str_list(value: Any, name: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of strings (one per argument), got "
                        f"{value!r}")
    return [str(v) for v in value]
