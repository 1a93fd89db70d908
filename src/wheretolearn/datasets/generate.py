"""Generate ``(input, G*(input))`` data sets to zarr, in parallel with Dask, resumably.

Layout of a store ``DIR.zarr`` (zarr format 3, opened by ``xarray.open_zarr``: every
array has named dimensions, ``long_name`` and ``units``, see :mod:`.layout`)::

    inputs      (n, *input_shape)    chunked (chunk, ...) along samples
    outputs     (n, *output_shape)   chunked along samples (and split further when one
                                     sample is large), so every write is chunk-aligned;
                                     unwritten rows read as NaN (fill value)
    completed   (n_chunks,) bool     True once chunk i's inputs and outputs are written
    x, y, t, parameter, ...          coordinate variables of the dimensions
    coords/<name>                    the problem's coordinates (grid, times, ...)
    attrs       problem, options, measure, seed, n, chunk, n_chunks, version, key, complete,
                created_by = "wheretolearn" (``--overwrite`` replaces only such stores)

A run writes into a hidden staging store next to ``out`` and renames it to ``out`` once
complete, so ``out`` never holds half a data set written by this version.

Sample ``j`` belongs to chunk ``i = j // chunk``; the inputs of chunk ``i`` are drawn from a
generator seeded by ``(seed, i)`` (numpy ``SeedSequence``), so the data do not depend on the
number of workers, on scheduling order or on resuming. A rerun on an existing store with the
same content key computes only the chunks not marked completed. The content key is the
sha256 of (problem name, problem options, measure parameters, seed, n, chunk).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .._progress import ProgressBars
from .._validation import (MAX_PROBLEM_OPTION, SIZE_LIMITS, check_int_range, check_memory,
                           check_nonnegative_int, check_positive_int, check_type, format_bytes)

__all__ = ["ComputeOptions", "DamagedStoreError", "DatasetInfo", "InputSampling",
           "check_scheduler", "generate_dataset", "find_or_generate", "open_dataset",
           "content_key", "resolve_measure", "chunk_seed"]

#: Target size of one default data-set chunk (outputs), bytes.
_CHUNK_TARGET_BYTES = 16 * 2**20
#: Largest zarr chunk written to disk, bytes.
_ZARR_CHUNK_MAX_BYTES = 64 * 2**20


@dataclasses.dataclass
class DatasetInfo:
    """What :func:`generate_dataset` produced (JSON-serialisable via :meth:`to_dict`)."""

    path: str
    problem: str
    options: dict
    measure: dict
    seed: int
    n: int
    chunk: int
    n_chunks: int
    key: str
    computed_chunks: list[int]
    reused_chunks: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _bounded(value: int, name: str) -> int:
    """``value`` if within ``SIZE_LIMITS["generate"][name]``, else a ``ValueError``."""
    low, high = SIZE_LIMITS["generate"][name]
    return check_int_range(value, name, low, high)


@dataclasses.dataclass(frozen=True)
class InputSampling:
    """How the inputs of a data set are drawn: with ``problem`` and ``n``, this fixes the
    data (and the content key).

    Parameters
    ----------
    measure : Measure, optional
        Input measure, anything with ``sample(n, generator=torch.Generator)``; default
        ``problem.default_input_measure()``.
    measure_params : dict, optional
        Parameters replacing those of the (default) measure, see :func:`resolve_measure`
        (``--measure-param`` / the ``[measure]`` table of ``wheretolearn generate``).
    seed : int
        Base seed; chunk ``i`` samples with a generator derived from ``(seed, i)``.
    chunk : int, optional
        Samples per task and per write (default: about 16 MiB of outputs, at most 64). Part
        of the content: the chunk fixes which generator draws each sample.
    """

    measure: Any = None
    measure_params: dict | None = None
    seed: int = 0
    chunk: int | None = None

    def __post_init__(self) -> None:
        params = self.measure_params
        if params is not None and not isinstance(params, dict):
            raise TypeError(f"measure_params must be a dict of parameter: value, got {params!r}")
        object.__setattr__(self, "measure_params", None if params is None else dict(params))
        object.__setattr__(self, "seed", check_nonnegative_int(self.seed, "seed"))
        if self.chunk is not None:
            object.__setattr__(self, "chunk",
                               _bounded(check_positive_int(self.chunk, "chunk"), "chunk"))


@dataclasses.dataclass(frozen=True)
class ComputeOptions:
    """How a data set is computed; never changes its content.

    Parameters
    ----------
    workers : int
        Dask ``LocalCluster`` workers (1 thread each; default 2); 0 evaluates in this
        process.
    scheduler : str, optional
        Address of a running Dask scheduler, ``tcp://host:port`` or ``tls://host:port``
        (then ``workers`` is ignored).
    num_threads : int, optional
        torch threads in this process (restored afterwards) and in every Dask worker
        (default: torch's).
    progress : bool
        Show a rich progress bar (default True).
    """

    workers: int = 2
    scheduler: str | None = None
    num_threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "workers",
                           _bounded(check_nonnegative_int(self.workers, "workers"), "workers"))
        if self.scheduler is not None and not isinstance(self.scheduler, str):
            raise TypeError(f"scheduler must be an address such as tcp://host:port, got "
                            f"{self.scheduler!r}")
        if self.num_threads is not None:
            object.__setattr__(self, "num_threads", _bounded(
                check_positive_int(self.num_threads, "num_threads"), "num_threads"))
        if not isinstance(self.progress, bool):
            raise TypeError(f"progress must be True or False, got {self.progress!r}")

    @property
    def in_process(self) -> bool:
        """Whether the chunks are evaluated in this process (no Dask)."""
        return self.workers == 0 and self.scheduler is None


# ---------------------------------------------------------------------- building blocks
def chunk_seed(seed: int, index: int) -> int:
    """Deterministic 63-bit seed for chunk ``index`` of a data set with base ``seed``."""
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def content_key(problem: str, options: dict, measure: dict, seed: int, n: int, chunk: int,
                dtypes: tuple[Any, Any] | None = None) -> str:
    """sha256 hex digest identifying a data set's content; ``dtypes`` = (inputs, outputs)
    storage dtypes, part of the content (a float64 request must not find float32 data)."""
    blob = {"problem": problem, "options": options, "measure": measure, "seed": seed,
            "n": n, "chunk": chunk}
    if dtypes is not None:
        blob["dtypes"] = [str(np.dtype(d)) for d in dtypes]
    blob = json.dumps(blob, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _build_problem(problem: Any, options: dict | None):
    from ..problems import Problem, get_problem

    if isinstance(problem, Problem):
        if options:
            raise ValueError("give problem options only with a problem name, not with an instance")
        return problem
    if not isinstance(problem, str):
        raise TypeError(f"problem must be a problem name or a Problem, "
                        f"got {type(problem).__name__}")
    options = dict(options or {})
    _check_option_sizes(options)
    allowed = _option_names(problem)
    unknown = sorted(set(options) - allowed) if allowed is not None else []
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} for problem {problem!r}; allowed: "
                         f"{', '.join(sorted(allowed))}")
    from ..problems.plugins import canonical_spec

    try:
        # a relative "file.py:factory" is made absolute: workers import the same file
        return get_problem(canonical_spec(problem), **options)
    except TypeError as exc:
        raise ValueError(f"bad option for problem {problem!r}: {exc}") from None


def _check_option_sizes(options: dict) -> None:
    """Refuse an integer problem option (a grid size, a number of steps; seeds aside), or an
    entry of a list option, above :data:`MAX_PROBLEM_OPTION`: the problem would not even be
    built within memory."""
    for key, value in options.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            big = isinstance(v, int) and not isinstance(v, bool) and v > MAX_PROBLEM_OPTION
            if big and "seed" not in key:
                raise ValueError(f"problem option {key!r} must be at most "
                                 f"{MAX_PROBLEM_OPTION} (a size this large does not fit in "
                                 f"memory), got {v}")


def _option_names(name: str) -> set[str] | None:
    """Keyword options the registered problem accepts (None if it takes ``**kwargs`` or the
    name is unknown, so :func:`get_problem` reports it)."""
    from ..problems import problem_signature

    signature = problem_signature(name)
    if signature is None:
        return None
    params = signature.parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def resolve_measure(problem: Any, measure: Any = None, measure_params: dict | None = None):
    """The input measure: ``measure`` if given, else ``problem.default_input_measure()`` with
    ``measure_params`` (e.g. ``{"alpha": 2.5}`` for a random field, ``{"low": ..., "high": ...}``
    for a box) replacing the default's parameters."""
    if measure is None:
        try:
            measure = problem.default_input_measure()
        except NotImplementedError as exc:
            raise ValueError(str(exc)) from None
    if measure_params:
        measure = _with_params(measure, measure_params)
    return measure


def _with_params(measure: Any, params: dict) -> Any:
    """A copy of ``measure`` with some of its parameters replaced."""
    from ..measures import Gaussian, GaussianRandomField, Uniform

    m, dt = measure, getattr(measure, "dtype", None)
    if (not isinstance(m, (GaussianRandomField, Uniform, Gaussian))
            and callable(getattr(m, "with_params", None))):
        return m.with_params(**params)   # NtDInputMeasure, LogNormalField: name unknown keys
    if isinstance(m, GaussianRandomField):
        current = {"alpha": m.alpha, "tau": m.tau, "sigma": m.sigma, "mean": m.mean}

        def build(kw):
            return GaussianRandomField(m.basis, dtype=dt, **kw)
    elif isinstance(m, Uniform):
        current = {"low": m.low, "high": m.high}

        def build(kw):
            return Uniform(kw["low"], kw["high"], dim=m.dim, dtype=dt)
    elif isinstance(m, Gaussian):
        current = {"mean": m.mean, "cov": m.cov}

        def build(kw):
            return Gaussian(kw["mean"], kw["cov"], dtype=dt)
    else:
        raise ValueError(f"measure parameters cannot be set for a {type(m).__name__}")
    unknown = sorted(set(params) - set(current))
    if unknown:
        raise ValueError(f"unknown measure parameter {unknown[0]!r} for a {type(m).__name__}; "
                         f"allowed: {', '.join(sorted(current))}")
    return build({**current, **params})


def _measure_record(measure: Any) -> dict:
    record = {"type": type(measure).__name__}
    if hasattr(measure, "to_dict"):
        record.update(measure.to_dict())
    else:
        record["repr"] = repr(measure)
    return record


def _np_dtype(dtype: Any) -> np.dtype:
    import torch

    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).numpy().dtype
    return np.dtype(dtype or np.float32)


def _default_chunk(n: int, output_shape: tuple[int, ...], itemsize: int) -> int:
    """About 16 MiB of outputs, at most 64 samples and at most n / 8 (so that even small data
    sets give several tasks). Independent of the worker count: the chunk fixes the seeds."""
    per_sample = max(1, math.prod(output_shape) * itemsize)
    return int(max(1, min(-(-n // 8), 64, _CHUNK_TARGET_BYTES // per_sample)))


def _zarr_chunks(chunk: int, shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """zarr chunk shape for (n, *shape): ``chunk`` samples, or fewer (a divisor) / a slab of
    one sample when that would exceed the on-disk chunk size cap."""
    per_sample = max(1, math.prod(shape) * itemsize)
    lead = chunk
    while lead > 1 and lead * per_sample > _ZARR_CHUNK_MAX_BYTES:
        lead = max(d for d in range(1, lead) if chunk % d == 0)
    inner = list(shape)
    if lead == 1 and shape and per_sample > _ZARR_CHUNK_MAX_BYTES:
        rest = per_sample // shape[0]
        inner[0] = max(1, _ZARR_CHUNK_MAX_BYTES // max(1, rest))
    return (lead, *inner)


# ---------------------------------------------------------------------- evaluation
_WORKER_PROBLEMS: dict[str, Any] = {}


def _evaluate_chunk(problem: Any, inputs: np.ndarray) -> np.ndarray:
    """Task: evaluate one chunk. ``problem`` is a Problem, or ``(name, options_json)`` for
    problems that cannot be pickled (then built once per worker and cached)."""
    if isinstance(problem, tuple):
        name, options_json = problem
        key = name + options_json
        if key not in _WORKER_PROBLEMS:
            from ..problems import get_problem

            _WORKER_PROBLEMS.clear()
            _WORKER_PROBLEMS[key] = get_problem(name, **json.loads(options_json))
        problem = _WORKER_PROBLEMS[key]
    return np.asarray(problem(inputs))


def _sample_chunk(measure: Any, seed: int, index: int, size: int) -> np.ndarray:
    import torch

    g = torch.Generator().manual_seed(chunk_seed(seed, index))
    return measure.sample(size, generator=g).detach().cpu().numpy()


# ---------------------------------------------------------------------- store
class DamagedStoreError(ValueError):
    """A data-set store whose records are missing or unreadable (never silently reused)."""


def _fill_value(dtype: np.dtype):
    """NaN for floating arrays: rows not written yet (an interrupted run) read as missing,
    never as valid zeros."""
    return np.nan if np.issubdtype(dtype, np.floating) else 0


def _staging_path(out: Path, key: str) -> Path:
    """Hidden store next to ``out`` where a run writes until it is complete; named by the
    content key so that rerunning the same command resumes it."""
    return out.parent / f".{out.name}.partial-{key[:16]}"


def _check_store(group: Any, attrs: dict, path: Path) -> None:
    """Raise :class:`DamagedStoreError` unless ``group`` holds readable ``inputs``,
    ``outputs`` and ``completed`` arrays of the shapes ``attrs`` describes."""
    n, n_chunks = attrs["n"], attrs["n_chunks"]
    want = {"inputs": (n, *attrs["input_shape"]), "outputs": (n, *attrs["output_shape"]),
            "completed": (n_chunks,)}
    for name, shape in want.items():
        try:
            arr = group[name]
            ok = tuple(arr.shape) == tuple(shape)
        except Exception:  # noqa: BLE001  (missing or garbage metadata)
            ok = False
        if not ok:
            raise DamagedStoreError(
                f"data set {str(path)!r} is damaged: its {name!r} array is missing or "
                f"unreadable; delete it or pass --overwrite to generate it again")
    for key in ("key", "n", "n_chunks", "chunk"):
        if key not in group.attrs:
            raise DamagedStoreError(f"data set {str(path)!r} is damaged: attribute {key!r} "
                                    "is missing; delete it or pass --overwrite")


def _reopen(path: Path, attrs: dict):
    """The store at ``path`` if it holds this content key (checked for damage), else None."""
    import zarr

    try:
        # not the consolidated copy: damage to an array's own metadata must show
        group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
        found = group.attrs.get("key")
    except Exception:  # noqa: BLE001
        return None
    if found != attrs["key"]:
        return None
    _check_store(group, attrs, path)
    return group


def _create(path: Path, plan: "_Plan", attrs: dict):
    """A new empty store at ``path`` for ``plan``, with attributes ``attrs`` (named
    dimensions, coordinates, units: see :mod:`wheretolearn.datasets.layout`)."""
    import zarr

    from .layout import dataset_layout

    problem, chunk, in_dtype, out_dtype = plan.problem, plan.chunk, plan.in_dtype, plan.out_dtype
    n, n_chunks, in_shape, out_shape = plan.n, plan.n_chunks, plan.in_shape, plan.out_shape
    layout = dataset_layout(problem, in_shape, out_shape)
    group = zarr.open_group(str(path), mode="w")
    group.create_array("inputs", shape=(n, *in_shape), dtype=in_dtype,
                       fill_value=_fill_value(in_dtype),
                       chunks=_zarr_chunks(chunk, in_shape, in_dtype.itemsize),
                       dimension_names=layout.input_dims, attributes=layout.input_attrs)
    group.create_array("outputs", shape=(n, *out_shape), dtype=out_dtype,
                       fill_value=_fill_value(out_dtype),
                       chunks=_zarr_chunks(chunk, out_shape, out_dtype.itemsize),
                       dimension_names=layout.output_dims, attributes=layout.output_attrs)
    group.create_array("completed", shape=(n_chunks,), dtype=bool, chunks=(1,),
                       fill_value=False, dimension_names=("chunk",),
                       attributes={"long_name": "chunk written completely",
                                   "description": "sample j belongs to chunk j // chunk"})
    coords = {"sample": (("sample",), np.arange(n), {"long_name": "sample index"}),
              **layout.coords}
    for name, (dims, values, vattrs) in coords.items():
        values = np.asarray(values)
        if values.dtype.kind in "US":     # variable-length strings: a stable zarr v3 type
            arr = group.create_array(name, shape=values.shape, dtype=str,
                                     dimension_names=dims, attributes=vattrs)
            arr[...] = values.astype(object)
        else:
            group.create_array(name, data=values, dimension_names=dims, attributes=vattrs)
    cgroup = group.require_group("coords")
    for name, values in problem.coordinates().items():
        cgroup.create_array(name, data=np.asarray(values))
    group.attrs.update({**attrs, "created_by": "wheretolearn", "complete": False,
                        **layout.global_attrs})
    return group


def _open_target(out: Path, plan: "_Plan", overwrite: bool):
    """``(group, staging)``: where the run of ``plan`` writes.

    An existing store at ``out`` with the same content key is resumed in place
    (``staging`` None). Otherwise the run writes into the hidden staging store (resumed if
    an earlier run left one), and ``out`` -- absent, an empty folder, or with
    ``overwrite`` a data set that wheretolearn wrote -- is replaced only once it is
    complete. Anything else at ``out`` is refused before any work."""
    from .._ownership import check_output_location, check_replaceable, owner

    attrs = plan.attrs()
    check_output_location(out)
    if out.is_dir() and not out.is_symlink() and any(out.iterdir()):
        kind, foreign = owner(out)
        if kind == "dataset" and not foreign:
            group = None if overwrite else _reopen(out, attrs)
            if group is not None:
                return group, None
            if not overwrite:
                found = _stored_key(out)
                raise FileExistsError(
                    f"out {str(out)!r} holds a different data set (content key "
                    f"{str(found)[:12]} != {attrs['key'][:12]}); choose another path or "
                    "pass --overwrite")
    check_replaceable(out, "dataset", overwrite=overwrite)
    staging = _staging_path(out, attrs["key"])
    if staging.exists():
        try:
            group = _reopen(staging, attrs)
        except DamagedStoreError:
            group = None
        if group is not None:
            return group, staging
        _remove_leftover(staging)       # our own hidden, key-named leftover: start it again
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _create(staging, plan, attrs), staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)   # just made here: nothing to resume
        raise


def _remove_leftover(staging: Path) -> None:
    """Delete an earlier run's staging store, only what wheretolearn wrote in it; anything
    else found there is named and kept."""
    from .._ownership import remove_owned

    kept = remove_owned(staging, "dataset") if staging.is_dir() and not staging.is_symlink() \
        else [staging.name]
    if kept:
        raise FileExistsError(f"{str(staging)!r} (an earlier run's unfinished data set) holds "
                              f"{kept[0]!r}, which wheretolearn did not write; move it out")


def _stored_key(path: Path) -> Any:
    from .._ownership import store_attributes

    return store_attributes(path).get("key")


def _swap_in(staging: Path, out: Path, overwrite: bool) -> None:
    """Put the finished ``staging`` store at ``out``. What is at ``out`` is checked again
    (it may have changed during the run); a replaced store is deleted only after the new one
    is in place, and only what wheretolearn wrote in it."""
    import uuid
    import warnings

    from .._ownership import check_replaceable, remove_owned

    if not check_replaceable(out, "dataset", overwrite=overwrite) and out.exists():
        out.rmdir()                     # an empty folder
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
        staging.rename(out)
        kept = remove_owned(old, "dataset")
        if kept:
            warnings.warn(f"the replaced data set is kept as {str(old)!r}: it holds "
                          f"{kept[0]!r}, which wheretolearn did not write", stacklevel=2)
    else:
        staging.rename(out)


def open_dataset(path: str | Path) -> dict[str, Any]:
    """Read a generated store: ``{"inputs", "outputs", "coords", "attrs"}`` (numpy arrays)."""
    import zarr

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data set {str(p)!r} does not exist")
    g = zarr.open_group(str(p), mode="r")
    coords = {k: g["coords"][k][...] for k in g["coords"].array_keys()} if "coords" in g else {}
    return {"inputs": g["inputs"][...], "outputs": g["outputs"][...], "coords": coords,
            "attrs": dict(g.attrs)}


# ---------------------------------------------------------------------- driver
def generate_dataset(problem: Any, n: int, out: str | Path, *, options: dict | None = None,
                     sampling: InputSampling = InputSampling(),
                     compute: ComputeOptions = ComputeOptions(),
                     overwrite: bool = False) -> DatasetInfo:
    """Sample ``n`` inputs, evaluate ``G*`` on them in parallel and store both in zarr.

    Parameters
    ----------
    problem : str or Problem
        Registry name (with ``options``) or a built problem (rebuilt on the workers from
        ``problem.name`` and ``problem.options()``).
    n : int
        Number of samples.
    out : path
        Store folder (``*.zarr``). An existing store with the same content key is resumed.
    options : dict, optional
        Problem options for :func:`wheretolearn.problems.get_problem`.
    sampling : InputSampling
        Input measure (default ``problem.default_input_measure()``), parameters replacing
        its own, base seed and chunk size: what fixes the data.
    compute : ComputeOptions
        Dask workers or scheduler, torch threads, progress bar: how the data are computed.
    overwrite : bool
        Replace an existing store whose content key differs -- only a store that
        wheretolearn wrote, and only once the new one is complete. A folder holding anything
        else, a foreign zarr store or a plain file is never replaced (``FileExistsError``).

    Notes
    -----
    A new store is written into a hidden staging store next to ``out``
    (``.NAME.partial-<key>``) and renamed to ``out`` when complete. An interrupted run keeps
    the finished chunks there (missing rows read as NaN) and the same call resumes it.

    Returns
    -------
    DatasetInfo
    """
    t0 = time.perf_counter()
    check_type(sampling, InputSampling, "sampling")
    check_type(compute, ComputeOptions, "compute")
    return _generate(_plan(problem, n, options, sampling), out, compute, overwrite, t0)


def _generate(plan: "_Plan", out: str | Path, compute: "ComputeOptions", overwrite: bool,
              t0: float) -> DatasetInfo:
    """:func:`generate_dataset` of a resolved plan (``t0``: when the call began)."""
    _check_chunk_memory(plan, 0 if compute.in_process else max(1, compute.workers))
    out = _output_path(out)
    if compute.scheduler is not None:
        check_scheduler(compute.scheduler)
    group, staging = _open_target(out, plan, overwrite)
    where = staging if staging is not None else out
    todo = _unfinished_chunks(group, plan.n_chunks)
    write = _ChunkWriter(group, plan)
    try:
        with _torch_threads(compute.num_threads):
            with ProgressBars(compute.progress) as bars:
                advance = bars.task(f"generate {plan.problem.name} (chunks)", plan.n_chunks,
                                    completed=plan.n_chunks - len(todo)).advance
                _compute_chunks(plan, todo, write, compute, advance)
            _finish(group, where, staging, out, overwrite)
    except BaseException as exc:
        _note_leftover(exc, where, staging, plan.n_chunks - len(todo) + write.count,
                       plan.n_chunks)
        raise
    return plan.info(out, todo, time.perf_counter() - t0)


def find_or_generate(cache_dir: str | Path, problem: Any, n: int, *, options: dict | None = None,
                     sampling: InputSampling = InputSampling(),
                     compute: ComputeOptions = ComputeOptions(progress=False)) -> DatasetInfo:
    """Return the data set in ``cache_dir`` with the same content key, generating (or
    finishing) it if needed. The store is ``cache_dir/<problem>-<key[:16]>.zarr``; the
    arguments are those of :func:`generate_dataset` (no progress bar by default)."""
    t0 = time.perf_counter()
    check_type(sampling, InputSampling, "sampling")
    check_type(compute, ComputeOptions, "compute")
    plan = _plan(problem, n, options, sampling)
    path = Path(cache_dir) / f"{plan.problem.name}-{plan.key[:16]}.zarr"
    path.parent.mkdir(parents=True, exist_ok=True)
    return _generate(plan, path, compute, False, t0)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What a run writes, fixed before any work: the built problem and input measure, the
    sizes, the storage dtypes and the content key."""

    problem: Any
    measure: Any
    n: int
    seed: int
    chunk: int
    in_dtype: np.dtype
    out_dtype: np.dtype
    options: dict
    measure_record: dict
    key: str

    @property
    def n_chunks(self) -> int:
        return -(-self.n // self.chunk)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.problem.input_shape)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.problem.output_shape)

    def rows(self, i: int) -> tuple[int, int]:
        """Samples ``lo:hi`` of chunk ``i``."""
        return i * self.chunk, min(self.n, (i + 1) * self.chunk)

    def sample(self, i: int) -> np.ndarray:
        """The inputs ``(hi - lo, *in_shape)`` of chunk ``i``, drawn with seed ``(seed, i)``."""
        lo, hi = self.rows(i)
        return _sample_chunk(self.measure, self.seed, i, hi - lo)

    def attrs(self) -> dict:
        """The store's attributes (provenance, sizes, content key, creation time)."""
        from .. import __version__

        return {"problem": self.problem.name, "options": self.options,
                "measure": self.measure_record, "seed": self.seed, "n": self.n,
                "chunk": self.chunk, "n_chunks": self.n_chunks, "key": self.key,
                "version": __version__, "input_shape": list(self.in_shape),
                "output_shape": list(self.out_shape),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def info(self, out: Path, todo: list[int], seconds: float) -> DatasetInfo:
        return DatasetInfo(path=str(out), problem=self.problem.name, options=self.options,
                           measure=self.measure_record, seed=self.seed, n=self.n,
                           chunk=self.chunk, n_chunks=self.n_chunks, key=self.key,
                           computed_chunks=todo, reused_chunks=self.n_chunks - len(todo),
                           input_shape=self.in_shape, output_shape=self.out_shape,
                           seconds=seconds)


def _plan(problem: Any, n: int, options: dict | None, sampling: InputSampling) -> _Plan:
    """Build the problem and the measure, check that they fit together, choose the chunk
    and compute the content key."""
    n = _bounded(check_positive_int(n, "n"), "n")
    prob = _build_problem(problem, options)
    meas = resolve_measure(prob, sampling.measure, sampling.measure_params)
    in_shape, out_shape = tuple(prob.input_shape), tuple(prob.output_shape)
    event = tuple(getattr(meas, "event_shape", in_shape))
    if event != in_shape:
        raise ValueError(f"measure samples have shape {event} but problem {prob.name!r} "
                         f"expects inputs of shape {in_shape}")
    out_dtype = _np_dtype(getattr(prob, "dtype", None))
    in_dtype = _np_dtype(getattr(meas, "dtype", None))
    chunk = sampling.chunk or _default_chunk(n, out_shape, out_dtype.itemsize)
    prob_options = json.loads(json.dumps(prob.options(), default=str))
    measure_rec = _measure_record(meas)
    key = content_key(prob.name, prob_options, measure_rec, sampling.seed, n, chunk,
                      dtypes=(in_dtype, out_dtype))
    return _Plan(problem=prob, measure=meas, n=n, seed=sampling.seed, chunk=chunk,
                 in_dtype=in_dtype, out_dtype=out_dtype, options=prob_options,
                 measure_record=measure_rec, key=key)


def _output_path(out: str | Path) -> Path:
    """``out`` with ``~`` expanded, resolved when it holds ``..`` (staging stores are named
    after its last part)."""
    out = Path(out).expanduser()
    return out.resolve() if ".." in out.parts else out


def _unfinished_chunks(group: Any, n_chunks: int) -> list[int]:
    done = np.asarray(group["completed"][...], dtype=bool)
    return [i for i in range(n_chunks) if not done[i]]


class _ChunkWriter:
    """``write(i, inputs, outputs)``: store chunk ``i`` in ``group`` in the plan's dtypes,
    then mark it completed; ``count`` chunks written so far."""

    def __init__(self, group: Any, plan: _Plan):
        self.group, self.plan, self.count = group, plan, 0

    def __call__(self, i: int, inputs: np.ndarray, outputs: np.ndarray) -> None:
        lo, hi = self.plan.rows(i)
        self.group["inputs"][lo:hi] = inputs.astype(self.plan.in_dtype, copy=False)
        self.group["outputs"][lo:hi] = np.asarray(outputs).astype(self.plan.out_dtype,
                                                                  copy=False)
        self.group["completed"][i] = True     # only after the data: a crash leaves i to redo
        self.count += 1


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    """torch uses ``num_threads`` threads inside the block (if given); restored after."""
    import torch

    before = torch.get_num_threads()
    try:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        yield
    finally:
        torch.set_num_threads(before)


def _compute_chunks(plan: _Plan, todo: list[int],
                    write: Callable[[int, np.ndarray, np.ndarray], None],
                    compute: ComputeOptions, advance: Callable[[], None]) -> None:
    """Sample, evaluate and write the chunks ``todo``: in this process or on Dask."""
    if not todo:
        return
    if compute.in_process:
        for i in todo:
            x = plan.sample(i)
            write(i, x, _evaluate_chunk(plan.problem, x))
            advance()
    else:
        _run_dask(todo, plan.sample, write, plan.problem, compute, advance)


def _finish(group: Any, where: Path, staging: Path | None, out: Path, overwrite: bool) -> None:
    """Mark the store complete, consolidate its metadata and move a staging store to
    ``out``."""
    group.attrs["complete"] = True
    _consolidate(where)
    if staging is not None:
        _swap_in(staging, out, overwrite)


def _check_chunk_memory(plan: _Plan, workers: int) -> None:
    """Refuse a run whose chunks in flight (two per worker plus the one being written, each
    with its inputs and outputs, twice for the conversions) exceed the machine's memory."""
    per_sample = (math.prod(plan.in_shape) * plan.in_dtype.itemsize
                  + math.prod(plan.out_shape) * plan.out_dtype.itemsize)
    in_flight = 2 * workers + 1
    check_memory({f"{in_flight} chunks of {plan.chunk} samples ({format_bytes(per_sample)} "
                  "each)": 2 * in_flight * plan.chunk * per_sample},
                 "this data set's generation",
                 "lower --chunk or --workers, or the problem's grid options (--option)")


def _consolidate(path: Path) -> None:
    """Consolidated metadata, so ``xarray.open_zarr(path)`` opens the store in one read
    (zarr warns that v3 does not specify it yet; xarray and zarr-python read it)."""
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(path))


def _note_leftover(exc: BaseException, where: Path, staging: Path | None, done: int,
                   total: int) -> None:
    """After a failure: remove a staging store that holds nothing, else say (as a note on
    ``exc``) where the finished chunks are and how to resume."""
    if staging is not None and done == 0:
        shutil.rmtree(staging, ignore_errors=True)
        return
    exc.add_note(f"{done} of {total} chunks are finished and kept in {str(where)!r} (rows not "
                 "written read as NaN); rerun the same command to resume")


def check_scheduler(address: str, timeout: float = 5.0) -> None:
    """Raise ``ValueError`` unless ``address`` (``tcp://host:port`` or ``tls://host:port``)
    is well formed, a TCP connection to it opens within ``timeout`` seconds and a Dask
    scheduler answers there (checked before any work)."""
    from ..cluster import check_scheduler_reachable

    check_scheduler_reachable(address, timeout, identify=True)


def _run_dask(todo: list[int], sample: Callable[[int], np.ndarray],
              write: Callable[[int, np.ndarray, np.ndarray], None], problem: Any,
              compute: ComputeOptions, advance: Callable[[], None]) -> None:
    """Evaluate the chunks ``todo`` on Dask with a bounded number of tasks in flight (two
    per worker), writing each as it finishes."""
    from distributed import as_completed

    with contextlib.ExitStack() as stack:
        client = _dask_client(stack, compute)
        n_workers = max(1, len(client.scheduler_info().get("workers", {})) or compute.workers)
        if compute.num_threads is not None:
            client.run(_set_threads, compute.num_threads)
        payload = _worker_problem(client, problem)
        pending = iter(todo)
        inputs: dict[int, np.ndarray] = {}
        index: dict[str, int] = {}

        def submit(i: int):
            inputs[i] = sample(i)
            fut = client.submit(_evaluate_chunk, payload, inputs[i], pure=False)
            index[fut.key] = i
            return fut

        queue = as_completed([submit(i) for i in _take(pending, 2 * n_workers)])
        for fut in queue:
            i = index.pop(fut.key)
            result = fut.result()
            fut.release()                     # a lost worker must not recompute finished work
            write(i, inputs.pop(i), result)
            advance()
            for j in _take(pending, 1):
                queue.add(submit(j))


def _dask_client(stack: contextlib.ExitStack, compute: ComputeOptions) -> Any:
    """A client of ``compute.scheduler``, else of a new local cluster (closed with
    ``stack``)."""
    from distributed import Client

    if compute.scheduler is not None:
        try:
            return stack.enter_context(Client(compute.scheduler, timeout=30))
        except (OSError, TimeoutError, ValueError) as exc:
            # something listens there, but not a Dask scheduler (or it does not answer)
            raise ValueError(f"no Dask scheduler answers at {compute.scheduler} "
                             f"({type(exc).__name__}: {str(exc)[:200]})") from None
    # TLS with this run's credentials, every listener on 127.0.0.1
    from ..cluster import local_cluster

    cluster = stack.enter_context(local_cluster(max(1, compute.workers), quiet=True))
    return stack.enter_context(Client(cluster))


def _worker_problem(client: Any, problem: Any) -> Any:
    """What the tasks get as their problem: the built problem, sent to every worker once
    (so expensive set-up such as an operator factorisation is not repeated), or -- for a
    problem that cannot be pickled, or a user problem each worker imports itself -- its
    ``(name, options_json)``, rebuilt once per worker."""
    import pickle

    from ..problems import problem_factory, problem_spec

    spec = problem_spec(problem)
    try:
        if problem_factory(spec["name"]) is None:
            # a user problem (import path, plugin): each worker imports it itself
            raise TypeError("not a built-in problem")
        pickle.dumps(problem)
        return client.scatter(problem, broadcast=True)
    except (pickle.PicklingError, TypeError, AttributeError):
        return spec["name"], json.dumps(spec["options"], sort_keys=True, default=str)


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _take(it: Iterable[int], k: int) -> list[int]:
    out = []
    for x in it:
        out.append(x)
        if len(out) == k:
            break
    return out
