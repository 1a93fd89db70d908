"""Compare parameter samplers of the online study at the same budget (issues 13 and 23).

``wheretolearn online compare CONFIG.toml --samplers uniform,breed --seeds 10 --out DIR`` runs,
for every sampler and seed, the study of ``CONFIG.toml`` and measures the per-sample relative
L2 error ``||y_hat - y|| / ||y||`` on one validation set shared by all runs. The protocol
(SPEC §5, "Comparing samplers" and "Where the heat study's tail lives"):

* **Validation groups** (:func:`box_validation_set`). ``interior``: a scrambled Sobol (or
  Halton) set strictly inside the box, 512 simulations by default -- the headline, what a
  sampler can learn. ``faces``: points with 1 to d-1 coordinates on a bound, the others
  space-filling. ``corners``: every corner of the box (at most ``n_corners``, drawn at random
  when 2^d is larger). On the heat study the union's P99 was set by three simulations at or
  next to the all-cold corner (extrapolation that no sampler reaches), so every metric is
  reported per group, never on the union. The set (parameters and fields) is generated once
  and cached on disk (:func:`validation_set`): a folder per key (problem, its options,
  bounds, steps, design, sizes, seed), written atomically, read back with
  ``allow_pickle=False`` (plain ``.npy`` arrays and a JSON key; never pickle).
* **Paired seeds.** Seed ``s`` sets ``[study] seed = s`` (network initialisation, buffer
  randomness) and sampler seed ``s + 1`` (the engine's rule) for *every* sampler, so the runs
  of one seed share their base stream and differ only by where they simulate.
* **Same budget.** Every run simulates ``n_simulations`` and trains ``passes`` (default 1.5,
  OGAS's budget) passes over the samples generated: ``passes x n_simulations x steps``
  trained samples, the end-of-ensemble drain included (:func:`lockstep_study`). The achieved
  passes are recorded per run.
* **Statistics** (:func:`ratio_statistics`). Per seed and metric the ratio
  ``uniform / sampler`` (> 1: better than uniform, as in OGAS), summarised by its geometric
  mean (the mean of the log-ratios) with a paired percentile bootstrap 95 % interval over
  seeds (seeds resampled with replacement, 10 000 resamples, a fixed seed so that the
  interval is reproducible). Metrics: mean, median, P95, P99, CVaR 0.99 (mean error at or
  above the 99th percentile) and max. The per-seed log P99 ratio had sd about 0.3 on the old
  protocol: resolving 1.3x needs 10 or more paired seeds (default 10).

Lockstep engine. Comparisons run the study's components (problem, sampler, buffer, trainer)
in one process in lockstep instead of on Dask: simulations are launched in waves of
``[executor] workers`` (each asked from the sampler just before it starts, as the engine
does), their steps enter the buffer, then the wave's share of the training batches is trained
(every batch told to the sampler), then the next wave. After the last wave the buffer is
closed and drained as in the engine (a reservoir serves every stored sample once more). With
threads, how many batches a simulation overlaps depends on machine load; in lockstep it does
not. The old protocol paced 4.75 batches per simulation (the default heat study's measured
950 batches for 200 simulations on 2 cores): about 0.6 passes.

Sampler names: ``uniform``, ``halton``, ``sobol``, ``lhs``, ``breed`` and Breed variants
``breed-weighted`` (importance-weighted training loss), ``breed-nrmse`` / ``breed-mse``
(fitness loss), ``breed-ess`` (ESS trigger), ``breed-step`` / ``breed-batch`` (fitness
baseline), ``breed-meanfit`` (a simulation's fitness is the mean of its deviations, not the
0.9 quantile), ``breed-retry`` (out-of-bounds children shrink sigma and are drawn again,
not reflected), ``breed-r05`` / ``breed-r0`` (the bred share starts at R = 0.5, the paper and the
default, or at 0, OGAS),
and valued variants that set one number, the option's short name followed by the value:
``sigma`` (``breed-sigma0.05``), ``rstart``, ``rend``, ``window``, ``period``, ``quantile``
(``fitness_quantile``) and ``power`` (``selection_power``), in any combination
(``breed-mse-batch``, ``breed-sigma0.05-rend0.9``); the other Breed options come from the
configuration's ``[sampler]`` table. The variants change one option each, so a comparison
measures each change on its own.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .._validation import check_int, check_type
from .config import OnlineStudyConfig, SamplerSection

__all__ = ["GROUPS", "METRICS", "PER_SIMULATION", "ValidationDesign", "ValidationSet",
           "ComparisonProtocol", "box_validation_set", "validation_set", "tail_metrics",
           "ratio_statistics", "sampler_config", "lockstep_study", "compare_samplers",
           "summarise_comparison", "comparison_table", "write_comparison"]

#: Metrics of the per-sample errors, in table order.
METRICS = ("mean", "median", "p95", "p99", "cvar99", "max")
#: Validation groups (codes 0, 1, 2 of :attr:`ValidationSet.group`); ``interior`` headlines.
GROUPS = ("interior", "faces", "corners")
#: Suffix of the per-simulation view of a group: the tails of each validation simulation's
#: mean error over its time steps (where in the box the surrogate is wrong), beside the
#: per-sample tails (which on heat are mostly the first three time steps of every other
#: simulation: an error in time that no choice of parameters can move).
PER_SIMULATION = " per simulation"
DESIGNS = ("sobol", "halton")
#: Breed variant -> the ``[sampler]`` keys it sets.
_VARIANTS = {"weighted": {"weighted": True}, "nrmse": {"fitness_loss": "nrmse"},
             "mse": {"fitness_loss": "mse"}, "ess": {"trigger": "ess"},
             "step": {"fitness_baseline": "step"}, "batch": {"fitness_baseline": "batch"},
             "meanfit": {"fitness_quantile": "mean"}, "retry": {"children": "retry"},
             "r05": {"r_start": 0.5}, "r0": {"r_start": 0.0}}
#: Valued Breed variant: short name -> ``[sampler]`` key (``breed-sigma0.05`` sets sigma).
_VALUED = {"sigma": "sigma", "rstart": "r_start", "rend": "r_end", "window": "window",
           "period": "period", "quantile": "fitness_quantile", "power": "selection_power"}
_VALUED_RE = re.compile(r"^(" + "|".join(_VALUED) + r")(\d+(?:\.\d*)?|\.\d+)$")
_CACHE_VERSION = 1
_LABELS = {"mean": "mean", "median": "median", "p95": "P95", "p99": "P99",
           "cvar99": "CVaR0.99", "max": "max"}


# -- validation set ----------------------------------------------------------------------
def _space_filling(design: str, d: int, n: int, seed: Any) -> np.ndarray:
    """``n`` scrambled Sobol or Halton points of the unit cube ``(n, d)``."""
    from scipy.stats import qmc

    if n == 0:
        return np.zeros((0, d))
    engine = (qmc.Sobol(d, scramble=True, rng=np.random.default_rng(seed)) if design == "sobol"
              else qmc.Halton(d, scramble=True, rng=np.random.default_rng(seed)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)     # Sobol balance for n != 2^m
        return engine.random(n)


@dataclass(frozen=True)
class ValidationDesign:
    """The validation set of a comparison (module docstring, "Validation groups").

    Parameters
    ----------
    n_interior : int >= 1
        Scrambled ``design`` points strictly inside the box (the headline group).
    n_faces : int >= 0
        Space-filling points with 1 to d-1 coordinates on a bound (none when d = 1).
    n_corners : int >= 0
        Corners: all ``2^d`` when ``2^d <= n_corners``, else ``n_corners`` at random.
    seed : int >= 0
        Each group has its own stream of it, so changing one size leaves the others.
    design : {"sobol", "halton"}
        Space-filling sequence of the interior and face points.
    """

    n_interior: int = 512
    n_faces: int = 128
    n_corners: int = 64
    seed: int = 2024
    design: str = "sobol"

    def __post_init__(self) -> None:
        for name, low in (("n_interior", 1), ("n_faces", 0), ("n_corners", 0), ("seed", 0)):
            object.__setattr__(self, name, check_int(getattr(self, name), name, low))
        if self.design not in DESIGNS:
            raise ValueError(f"design must be one of {list(DESIGNS)}, got {self.design!r}")

    def n_simulations(self, dim: int) -> int:
        """Validation simulations in a box of dimension ``dim``: interior, faces (none when
        ``dim = 1``) and at most ``2^dim`` corners."""
        return (self.n_interior + (self.n_faces if dim > 1 else 0)
                + min(self.n_corners, 2 ** dim))


@dataclass(frozen=True)
class ComparisonProtocol:
    """How :func:`compare_samplers` compares (module docstring): paired seeds, the same
    training budget for every run, the validation set and the bootstrap of the ratios.

    Parameters
    ----------
    seeds : int >= 1
        Runs of seeds ``0..seeds-1`` for every sampler (default 10).
    passes : float > 0 or None
        Trained passes over the samples generated, the drain included (default 1.5) ...
    batches_per_simulation : float > 0 or None
        ... or the old fixed pace instead; exactly one of the two is set.
    validation : ValidationDesign
    bootstrap_seed : int >= 0, n_boot : int >= 1
        Seed and resamples of the paired percentile bootstrap (:func:`ratio_statistics`).
    """

    seeds: int = 10
    passes: float | None = 1.5
    batches_per_simulation: float | None = None
    validation: ValidationDesign = ValidationDesign()
    bootstrap_seed: int = 0
    n_boot: int = 10000

    def __post_init__(self) -> None:
        for name, low in (("seeds", 1), ("bootstrap_seed", 0), ("n_boot", 1)):
            object.__setattr__(self, name, check_int(getattr(self, name), name, low))
        _check_budget(self.passes, self.batches_per_simulation)
        check_type(self.validation, ValidationDesign, "validation")

    def budget(self) -> dict:
        """``{"passes", "batches_per_simulation"}``: the budget of each run
        (:func:`lockstep_study`)."""
        return {"passes": self.passes, "batches_per_simulation": self.batches_per_simulation}


def _check_budget(passes: float | None, batches_per_simulation: float | None) -> None:
    if (passes is None) == (batches_per_simulation is None):
        raise ValueError("give exactly one of passes and batches_per_simulation, got "
                         f"{passes!r} and {batches_per_simulation!r}")
    for name, v in (("passes", passes), ("batches_per_simulation", batches_per_simulation)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not (math.isfinite(v) and v > 0)):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")


def box_validation_set(bounds: Any, validation: ValidationDesign = ValidationDesign()
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Validation parameters in three groups; returns ``(params (V, d), group (V,))``.

    Rows (sizes and seed from ``validation``): ``n_interior`` scrambled ``design`` points
    strictly inside the box (group 0), then ``n_faces`` space-filling points with
    ``k ~ U{1..d-1}`` random coordinates set to a random bound each (group 1: on a face, not
    a corner; none when d = 1), then the corners (group 2): all ``2^d`` when
    ``2^d <= n_corners``, else ``n_corners`` distinct ones at random. Each group has its own
    stream of ``seed``, so changing one size leaves the others.
    """
    b = np.asarray(bounds, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 2 or not np.all(b[:, 0] < b[:, 1]):
        raise ValueError(f"bounds must have shape (d, 2) with low < high, got {b.tolist()}")
    check_type(validation, ValidationDesign, "validation")
    design, n_interior, n_faces, n_corners = (validation.design, validation.n_interior,
                                              validation.n_faces, validation.n_corners)
    d = b.shape[0]
    s_int, s_face, s_corner = np.random.SeedSequence(validation.seed).spawn(3)
    interior = _space_filling(design, d, n_interior, s_int)
    lo, hi = b[:, 0], b[:, 1]
    interior = np.clip(lo + interior * (hi - lo), np.nextafter(lo, hi), np.nextafter(hi, lo))

    n_faces = n_faces if d > 1 else 0
    rng = np.random.default_rng(s_face)
    unit = _space_filling(design, d, n_faces, rng)
    on = np.zeros(unit.shape, dtype=bool)
    for row in on:
        row[rng.choice(d, size=int(rng.integers(1, d)), replace=False)] = True  # 1..d-1 on
    at_high = rng.integers(0, 2, size=unit.shape) == 1
    faces = np.clip(lo + unit * (hi - lo), np.nextafter(lo, hi), np.nextafter(hi, lo))
    faces = np.where(on, np.where(at_high, hi, lo), faces)

    rng = np.random.default_rng(s_corner)
    if d < 63 and 2 ** d <= n_corners:
        bits = (np.arange(2 ** d)[:, None] >> np.arange(d)[::-1]) & 1
    else:
        seen: dict[bytes, np.ndarray] = {}
        while len(seen) < n_corners:
            for row in rng.integers(0, 2, size=(n_corners, d)):
                if len(seen) < n_corners:
                    seen.setdefault(row.tobytes(), row)
        bits = np.array(list(seen.values())).reshape(-1, d)
    corners = np.where(bits == 1, hi, lo)
    params = np.concatenate([interior, faces, corners])
    group = np.repeat(np.arange(3, dtype=np.int8), [len(interior), len(faces), len(corners)])
    return params, group


@dataclass(frozen=True)
class ValidationSet:
    """Validation simulations: ``params (V, d)``, ``group (V,)`` codes into :data:`GROUPS`,
    ``fields (V, T, O)`` float32 (a read-only memory map when cached), the cache ``key``, its
    folder ``path`` (None: in memory) and whether the cache was ``reused``."""

    params: np.ndarray
    group: np.ndarray
    fields: np.ndarray
    key: dict
    path: Path | None = None
    reused: bool = False

    def sizes(self) -> dict:
        """Simulations and samples per group."""
        t = int(self.fields.shape[1])
        return {g: {"simulations": int((self.group == i).sum()),
                    "samples": int((self.group == i).sum()) * t} for i, g in enumerate(GROUPS)}


def _key_digest(key: dict) -> str:
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _load_cached(folder: Path, key: dict) -> ValidationSet | None:
    """The cached set of ``folder`` if its key matches and its arrays are consistent."""
    try:
        stored = json.loads((folder / "key.json").read_text())
        if stored != json.loads(json.dumps(key, sort_keys=True, default=str)):
            return None
        params = np.load(folder / "params.npy", allow_pickle=False)
        group = np.load(folder / "group.npy", allow_pickle=False)
        fields = np.load(folder / "fields.npy", allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError):
        return None
    v = key["n_simulations"]
    if (params.shape != (v, len(key["bounds"])) or group.shape != (v,)
            or fields.shape[:2] != (v, key["n_steps"]) or fields.dtype != np.float32):
        return None
    return ValidationSet(params, group, fields, key, folder, reused=True)


def _simulate_into(problem: Any, params: np.ndarray, out: np.ndarray, chunk: int,
                   progress: Callable[[int], None] | None) -> None:
    n_steps = out.shape[1]
    for i in range(0, len(params), chunk):
        p = params[i:i + chunk]
        out[i:i + len(p)] = np.asarray(problem(p), dtype=np.float32).reshape(len(p), n_steps,
                                                                              -1)
        if progress is not None:
            progress(i + len(p))


def validation_set(problem: Any, bounds: Any, *, problem_name: str, problem_options: dict,
                   validation: ValidationDesign = ValidationDesign(),
                   cache: str | Path | None = None, chunk: int = 16,
                   progress: Callable[[int], None] | None = None) -> ValidationSet:
    """The validation set of :func:`box_validation_set` (design ``validation``) with its
    fields ``problem(params)``.

    With ``cache`` (a folder), the set lives in ``cache/<problem>-<digest>/`` (``key.json``,
    ``params.npy``, ``group.npy``, ``fields.npy``): reused when its key (problem name and
    options, bounds, steps, design, sizes, seed) matches, else generated into a staging
    folder and renamed into place (atomic; a concurrent writer of the same key wins, its
    copy is used). Fields are read back as a read-only memory map. ``progress(done)`` is
    called after every ``chunk`` simulations generated.
    """
    b = np.asarray(bounds, dtype=np.float64)
    params, group = box_validation_set(b, validation)
    n_steps = int(problem.n_steps)
    v = validation
    key = {"version": _CACHE_VERSION, "problem": str(problem_name),
           "options": problem_options, "bounds": b.tolist(), "n_steps": n_steps,
           **asdict(v), "n_simulations": len(params)}
    key = json.loads(json.dumps(key, sort_keys=True, default=str))
    n_out = int(np.prod(problem.output_shape)) // n_steps
    if cache is None:
        fields = np.empty((len(params), n_steps, n_out), dtype=np.float32)
        _simulate_into(problem, params, fields, chunk, progress)
        return ValidationSet(params, group, fields, key)
    cache = Path(cache)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(str(problem_name)).name)[:40] or "problem"
    folder = cache / f"{name}-{_key_digest(key)}"
    if folder.exists():
        found = _load_cached(folder, key)
        if found is not None:
            return found
        shutil.rmtree(folder)                # our own folder, stale or broken: regenerate
    cache.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=cache))
    try:
        np.save(stage / "params.npy", params, allow_pickle=False)
        np.save(stage / "group.npy", group, allow_pickle=False)
        fields = np.lib.format.open_memmap(stage / "fields.npy", mode="w+", dtype=np.float32,
                                           shape=(len(params), n_steps, n_out))
        _simulate_into(problem, params, fields, chunk, progress)
        fields.flush()
        del fields
        (stage / "key.json").write_text(json.dumps(key, sort_keys=True, indent=1) + "\n")
        try:
            os.replace(stage, folder)
        except OSError:
            if not folder.exists():
                raise
            shutil.rmtree(stage, ignore_errors=True)      # another writer won the race
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    found = _load_cached(folder, key)
    if found is None:
        raise RuntimeError(f"validation cache {str(folder)!r} was written but does not read "
                           "back; remove it and run again")
    return ValidationSet(found.params, found.group, found.fields, key, folder, reused=False)


# -- metrics and statistics -----------------------------------------------------------------
def tail_metrics(errors: Any) -> dict[str, float]:
    """Mean, median, P95, P99, CVaR 0.99 (mean of the errors at or above the 99th
    percentile) and max of per-sample errors (any shape, flattened)."""
    from ..report.metrics import tail_summary

    e = np.asarray(errors, dtype=np.float64).ravel()
    out = tail_summary(e)
    out["cvar99"] = float(e[e >= out["p99"]].mean())
    return {m: out[m] for m in METRICS}


def _group_metrics(errors: np.ndarray, group: np.ndarray) -> dict[str, dict[str, float]]:
    """:func:`tail_metrics` of the errors ``(V, T)`` of each validation group, per sample
    (``"interior"``) and per simulation (``"interior per simulation"``: of the ``V`` means
    over time steps)."""
    out = {}
    for i, g in enumerate(GROUPS):
        if (group == i).any():
            out[g] = tail_metrics(errors[group == i])
    for i, g in enumerate(GROUPS):
        if (group == i).any():
            out[g + PER_SIMULATION] = tail_metrics(errors[group == i].mean(axis=1))
    return out


def ratio_statistics(reference: Any, values: Any, *, n_boot: int = 10000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Paired ratios ``reference / values`` over seeds, summarised on the log scale.

    Returns ``ratio`` (geometric mean: ``exp(mean(log r))``), ``lo`` / ``hi`` (percentile
    bootstrap interval at ``level``: seeds resampled with replacement ``n_boot`` times by
    ``numpy.random.default_rng(seed)``, the mean log-ratio of each resample), ``log_sd``
    (sd of the per-seed log-ratios, 0 with one seed) and ``per_seed`` (the ratios).
    """
    u = np.asarray(reference, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if u.shape != v.shape or u.ndim != 1 or len(u) == 0:
        raise ValueError(f"reference and values must be equal-length 1-d arrays with at least "
                         f"one seed, got shapes {u.shape} and {v.shape}")
    if not (np.all(u > 0) and np.all(v > 0) and np.isfinite(u).all() and np.isfinite(v).all()):
        raise ValueError("ratios need finite positive errors, got "
                         f"{u.tolist()} and {v.tolist()}")
    log_r = np.log(u) - np.log(v)
    idx = np.random.default_rng(seed).integers(0, len(log_r), size=(n_boot, len(log_r)))
    boot = log_r[idx].mean(axis=1)
    a = (1.0 - level) / 2
    lo, hi = np.quantile(boot, [a, 1.0 - a])
    return {"ratio": float(np.exp(log_r.mean())), "lo": float(np.exp(lo)),
            "hi": float(np.exp(hi)),
            "log_sd": float(log_r.std(ddof=1)) if len(log_r) > 1 else 0.0,
            "per_seed": np.exp(log_r).tolist()}


# -- samplers and the lockstep engine ---------------------------------------------------------
def sampler_config(config: OnlineStudyConfig, name: str) -> OnlineStudyConfig:
    """``config`` with sampler ``name`` (a registry name or a Breed variant such as
    ``breed-weighted``); a non-Breed sampler drops the Breed options but keeps
    ``boundary_share``."""
    base, *variant = name.split("-")
    unknown = {v for v in variant if v not in _VARIANTS and not _VALUED_RE.match(v)}
    if unknown or (variant and base != "breed"):
        raise ValueError(f"unknown sampler variant {name!r}; use a sampler name or breed-"
                         f"followed by any of {sorted(_VARIANTS)} or a valued variant "
                         f"({', '.join(k + 'X' for k in _VALUED)}, e.g. breed-sigma0.05) "
                         "joined with '-'")
    s = config.sampler
    if base != "breed":
        # the same base design (boundary points included) as every other sampler
        section = SamplerSection(name=base, seed=s.seed, bounds=s.bounds,
                                 boundary_share=s.boundary_share)
    else:
        data = s.model_dump()
        data["name"] = "breed"
        for v in variant:
            data.update(_VARIANTS[v] if v in _VARIANTS else _valued_variant(v))
        section = SamplerSection.model_validate(data)
    return config.model_copy(update={"sampler": section})


def _bounds(config: OnlineStudyConfig, problem: Any) -> np.ndarray:
    return (np.asarray(config.sampler.bounds, dtype=np.float64) if config.sampler.bounds
            else np.asarray(problem.parameter_bounds, dtype=np.float64))


def _drain_size(buffer: Any) -> int:
    """Samples the end-of-ensemble drain will serve: every stored sample once (reservoir,
    FIFO), each FIRO sample its remaining pseudo-epochs."""
    if buffer.kind == "firo":
        return int((buffer.pseudo_epochs - buffer.seen_counts()).clip(min=0).sum())
    return len(buffer)


def _errors(trainer: Any, val: ValidationSet, bounds: np.ndarray, chunk: int = 16
            ) -> np.ndarray:
    """Per-sample relative L2 errors ``(V, T)`` on the validation set, ``chunk`` simulations
    at a time (the fields stay on disk)."""
    import torch

    from .trainer import normalised_step_features

    v, t = val.fields.shape[:2]
    steps = np.arange(t)
    out = np.empty((v, t))
    with torch.no_grad():
        for i in range(0, v, chunk):
            p = val.params[i:i + chunk]
            x = normalised_step_features(np.repeat(p, t, axis=0), np.tile(steps, len(p)),
                                         bounds=bounds, n_steps=t)
            y = np.asarray(val.fields[i:i + len(p)], dtype=np.float64).reshape(len(p) * t, -1)
            diff = trainer.predict(x).astype(np.float64) - y
            err = np.linalg.norm(diff, axis=1) / np.linalg.norm(y, axis=1)
            out[i:i + len(p)] = err.reshape(len(p), t)
    return out


def _valued_variant(token: str) -> dict:
    """``{"sigma": 0.05}`` for ``"sigma0.05"`` (integers for ``window`` and ``period``)."""
    key, value = _VALUED_RE.match(token).groups()
    option = _VALUED[key]
    return {option: int(float(value)) if option in ("window", "period") else float(value)}


def lockstep_study(config: OnlineStudyConfig, *, validation: ValidationSet,
                   passes: float | None = 1.5, batches_per_simulation: float | None = None,
                   progress: Callable[[int], None] | None = None) -> dict:
    """Run the study of ``config`` in lockstep (module docstring); return its errors.

    Budget: with ``passes``, ``passes x n_simulations x steps`` trained samples in all: the
    expected end-of-ensemble drain (the buffer's capacity for a reservoir) is set aside and
    the rest spread over the waves (a wave before the buffer's watermark trains nothing;
    its share moves to the later waves), then the total is topped up to the nearest batch
    before the drain. With ``batches_per_simulation`` instead, that fixed pace per
    simulation (the old protocol). ``[training] max_batches`` and ``min_batches`` apply.
    Torch uses ``[training] torch_threads`` threads, 1 when unset: batches of 10 are too small
    to gain from more, and on a busy 2-core machine 2 threads made a run 8x slower (measured).

    Returns
    -------
    dict with ``errors`` ``(V, T)`` per-sample relative L2 errors, ``params``
    ``(n_simulations, d)`` where it simulated, ``metrics`` per group (:func:`tail_metrics`),
    ``batches``, ``samples_trained``, ``samples_generated``, ``passes`` (achieved),
    ``simulations``, ``seconds`` and, for Breed, ``generations``, ``bred``, ``copies``.
    """
    import torch

    from ..models.mlp import MLP
    from ..problems import get_problem
    from .buffers import Sample, make_buffer
    from .sampler_registry import make_sampler
    from .trainer import OnlineTrainer, normalised_step_features, target_scaling

    _check_budget(passes, batches_per_simulation)
    t0 = time.perf_counter()
    cfg = config
    problem = get_problem(cfg.study.problem, **cfg.study.problem_options())
    n_steps = int(problem.n_steps)
    bounds = _bounds(cfg, problem)
    seed = cfg.study.seed
    sampler = make_sampler(cfg.sampler.name, bounds, seed=(
        cfg.sampler.seed if cfg.sampler.seed is not None else seed + 1),
        **cfg.sampler.options(n_steps=n_steps, capacity=cfg.buffer.capacity,
                              watermark=cfg.buffer.watermark,
                              n_simulations=cfg.study.n_simulations))
    buffer = make_buffer(cfg.buffer.kind, cfg.buffer.capacity, watermark=cfg.buffer.watermark,
                         seed=seed + 2, **cfg.buffer.options())
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.training.torch_threads or 1)
    torch.manual_seed(seed)
    t = cfg.training
    n_out = int(validation.fields.shape[2])
    model = MLP(bounds.shape[0] + 1, n_out, hidden=tuple(t.hidden))
    shift, scale = target_scaling(problem, bounds, validation.fields)    # as the study does
    trainer = OnlineTrainer(model, t.adam_schedule(), y_shift=shift, y_scale=scale)
    adaptive = sampler.adaptive
    key = "per_sample_nrmse" if cfg.sampler.fitness_loss == "nrmse" else "per_sample_loss"
    weighted = cfg.sampler.weighted
    bs = t.batch_size

    def train_one() -> bool:
        if t.max_batches is not None and trainer.batches_seen >= t.max_batches:
            return False
        batch = buffer.get_batch(bs, timeout=0)
        if not batch:
            return False
        w = sampler.weights_for([s.sim_id for s in batch]) if weighted else None
        out = trainer.train_batch(batch, weights=w)
        if adaptive:
            sampler.tell(out["sim_ids"], out["steps"], out[key])
        return True

    n_sims, conc = cfg.study.n_simulations, cfg.executor.attempts_in_flight
    generated = n_sims * n_steps
    if passes is not None:
        drain = min(cfg.buffer.capacity, generated)          # the drain serves the buffer once
        in_loop = max(0.0, passes * generated - drain) / bs   # batches during the ensemble
    else:
        in_loop = batches_per_simulation * n_sims
    launched = 0
    steps = np.arange(n_steps)
    all_params = []
    try:
        while launched < n_sims:
            ids = list(range(launched, min(n_sims, launched + conc)))
            params = np.stack([sampler.ask(1, sim_ids=[i])[0] for i in ids])
            all_params.append(params)
            fields = np.asarray(problem(params), dtype=np.float32).reshape(len(ids), n_steps,
                                                                           -1)
            for j, sim in enumerate(ids):
                x = normalised_step_features(np.repeat(params[j:j + 1], n_steps, axis=0),
                                             steps, bounds=bounds, n_steps=n_steps)
                for step in range(n_steps):
                    while not buffer.put(Sample(sim, step, x[step], fields[j, step]),
                                         timeout=0):
                        train_one()       # a FIFO / FIRO buffer is full: train to make room
                sampler.simulation_finished(sim)
            left_before, launched = n_sims - launched, launched + len(ids)
            # the batches still due, spread evenly over the simulations not yet trained for
            goal = in_loop - (in_loop - trainer.batches_seen) * (n_sims - launched) / left_before
            while trainer.batches_seen < round(goal) and train_one():
                pass
            if progress is not None:
                progress(launched)
        while (t.min_batches is not None and trainer.batches_seen < t.min_batches
               and train_one()):
            pass
        if passes is not None:                # top up to the nearest batch of the target
            while (trainer.samples_seen + _drain_size(buffer) + bs / 2 < passes * generated
                   and train_one()):
                pass
        buffer.close()
        while train_one():
            pass
        errors = _errors(trainer, validation, bounds)
    finally:
        torch.set_num_threads(threads)
    out = {"errors": errors, "params": np.concatenate(all_params),
           "metrics": _group_metrics(errors, validation.group),
           "batches": trainer.batches_seen, "samples_trained": trainer.samples_seen,
           "samples_generated": generated, "passes": trainer.samples_seen / generated,
           "simulations": launched, "seconds": time.perf_counter() - t0}
    m = sampler.metrics()
    out.update({name: int(m[key]) for name, key in (("generations", "sampler_generation"),
                                                     ("bred", "sampler_bred"),
                                                     ("copies", "sampler_copies")) if key in m})
    return out


def compare_samplers(config: OnlineStudyConfig, samplers: Sequence[str], *,
                     protocol: ComparisonProtocol = ComparisonProtocol(),
                     cache: str | Path | None = None, jobs: int = 1,
                     progress: Callable[[str], None] | None = None,
                     on_run: Callable[[dict], None] | None = None) -> dict:
    """Run every sampler with seeds ``0..protocol.seeds-1`` at the same budget; return the
    results.

    ``progress(label)`` is called before the validation set and before each run,
    ``on_run(record)`` after each run. Seed ``s`` sets ``[study] seed = s`` and the sampler
    seed ``s + 1`` for every sampler (paired runs). The budget is ``protocol.passes`` (or the
    old fixed ``protocol.batches_per_simulation``); the validation set is
    :func:`validation_set` of ``protocol.validation`` (cached in ``cache`` when given).
    ``jobs > 1`` runs that many runs at once in separate processes (each run is
    deterministic and single-threaded, so the results are those of ``jobs = 1``; needs
    ``cache``: the processes read the validation set from it). The result holds the
    ``protocol``, the ``validation`` set and the ``runs`` (ordered by seed, then sampler);
    :func:`summarise_comparison` computes the ratios.
    """
    from ..problems import get_problem

    samplers = list(samplers)
    if not samplers:
        raise ValueError("samplers must name at least one sampler")
    if len(set(samplers)) != len(samplers):
        raise ValueError(f"samplers must be distinct, got {samplers}")
    if "uniform" not in samplers:
        raise ValueError(f"samplers must include 'uniform' (the reference), got {samplers}")
    cfgs = {name: sampler_config(config, name) for name in samplers}   # validate all first
    check_type(protocol, ComparisonProtocol, "protocol")
    jobs = check_int(jobs, "jobs", 1)
    problem = get_problem(config.study.problem, **config.study.problem_options())
    bounds = _bounds(config, problem)
    design = protocol.validation
    n_val = design.n_simulations(len(bounds))

    def val_progress(done: int) -> None:
        if progress is not None:
            progress(f"validation set {done}/{n_val} simulations")

    val_progress(0)
    val = validation_set(problem, bounds, problem_name=config.study.problem,
                         problem_options=config.study.problem_options(), validation=design,
                         cache=cache, progress=val_progress)
    if jobs > 1 and val.path is None:
        raise ValueError("jobs > 1 needs a cache folder (the processes read the validation "
                         "set from it); give cache")
    tasks = [(seed, name, cfgs[name].with_overrides(**{"study.seed": seed,
                                                       "sampler.seed": seed + 1}))
             for seed in range(protocol.seeds) for name in samplers]
    budget = protocol.budget()
    runs = []
    if jobs == 1:
        for seed, name, cfg in tasks:
            if progress is not None:
                progress(f"{name} seed {seed}")
            runs.append({"sampler": name, "seed": seed,
                         **lockstep_study(cfg, validation=val, **budget)})
            if on_run is not None:
                on_run(runs[-1])
    else:
        runs = _parallel_runs(tasks, val, budget, jobs, progress, on_run)
    return {"protocol": _protocol_record(config, protocol, samplers, jobs, problem, val),
            "validation": val, "runs": runs}


def _protocol_record(config: OnlineStudyConfig, protocol: ComparisonProtocol,
                     samplers: list[str], jobs: int, problem: Any, val: ValidationSet) -> dict:
    """The ``protocol`` entry of a comparison's result (``compare.json``)."""
    t, design = config.training, protocol.validation
    return {
        "samplers": samplers, "seeds": list(range(protocol.seeds)),
        "seed_rule": "run of seed s: [study] seed = s, sampler seed = s + 1, every sampler",
        "reference": "uniform",
        "passes": protocol.passes, "batches_per_simulation": protocol.batches_per_simulation,
        "jobs": jobs,
        "n_simulations": config.study.n_simulations, "steps_per_simulation":
            int(problem.n_steps), "batch_size": t.batch_size,
        "buffer": {"kind": config.buffer.kind, "capacity": config.buffer.capacity,
                   "watermark": config.buffer.watermark},
        "validation": {**asdict(design), "groups": val.sizes(),
                       "key": _key_digest(val.key),
                       "cache": None if val.path is None else str(val.path),
                       "reused": val.reused},
        "bootstrap": {"seed": protocol.bootstrap_seed, "resamples": protocol.n_boot,
                      "level": 0.95,
                      "statistic": "geometric mean over seeds of uniform / sampler, "
                      "paired percentile bootstrap over seeds"},
        "metrics": list(METRICS), "groups": list(GROUPS),
        "views": ["per sample", "per simulation"], "headline": "interior"}


def _lockstep_job(config_json: str, folder: str, key: dict, budget: dict) -> dict:
    """One lockstep run in a worker process (the validation set read from its cache)."""
    val = _load_cached(Path(folder), key)
    if val is None:
        raise RuntimeError(f"validation cache {folder!r} changed while the comparison ran")
    cfg = OnlineStudyConfig.model_validate_json(config_json)
    return lockstep_study(cfg, validation=val, **budget)


def _parallel_runs(tasks: list, val: ValidationSet, budget: dict, jobs: int,
                   progress: Callable[[str], None] | None,
                   on_run: Callable[[dict], None] | None) -> list[dict]:
    """The runs of ``tasks`` ``(seed, sampler, config)``, ``jobs`` at a time in spawned
    processes; returned in the order of ``tasks``."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    out: list[dict | None] = [None] * len(tasks)
    ctx = multiprocessing.get_context("spawn")        # no forked torch / thread state
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = {pool.submit(_lockstep_job, cfg.model_dump_json(), str(val.path), val.key,
                               budget): i for i, (_, _, cfg) in enumerate(tasks)}
        for fut in as_completed(futures):
            i = futures[fut]
            seed, name, _ = tasks[i]
            out[i] = {"sampler": name, "seed": seed, **fut.result()}
            if progress is not None:
                progress(f"{name} seed {seed} done")
            if on_run is not None:
                on_run(out[i])
    return out


# -- summary, table, files ----------------------------------------------------------------
def summarise_comparison(result: dict) -> dict:
    """``{group: {sampler: {metric: stats}}}`` over seeds: ``mean`` / ``std`` of the value
    and the paired ratio statistics of :func:`ratio_statistics` (``ratio``, ``lo``, ``hi``,
    ``log_sd``, ``per_seed``) of ``uniform / sampler``, bootstrap seed and resamples from
    ``result["protocol"]["bootstrap"]``."""
    boot = result["protocol"]["bootstrap"]
    runs = result["runs"]
    samplers = result["protocol"]["samplers"]
    ref = {r["seed"]: r["metrics"] for r in runs if r["sampler"] == "uniform"}
    table: dict = {}
    for g in runs[0]["metrics"]:
        if not all(g in r["metrics"] for r in runs):
            continue
        table[g] = {}
        for name in samplers:
            rows = sorted((r for r in runs if r["sampler"] == name), key=lambda r: r["seed"])
            entry = {}
            for m in METRICS:
                v = np.array([r["metrics"][g][m] for r in rows])
                u = np.array([ref[r["seed"]][g][m] for r in rows])
                entry[m] = {"mean": float(v.mean()),
                            "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                            **ratio_statistics(u, v, n_boot=boot["resamples"],
                                               seed=boot["seed"], level=boot["level"])}
            table[g][name] = entry
    return table


def _passes_line(result: dict) -> str:
    p = [r["passes"] for r in result["runs"]]
    want = result["protocol"]["passes"]
    ask = (f"requested {want:g}" if want is not None else
           f"fixed pace {result['protocol']['batches_per_simulation']:g} batches/simulation")
    return f"training passes: {ask}, achieved {min(p):.3f}-{max(p):.3f}"


def comparison_table(summary: dict, result: dict) -> str:
    """Markdown: per group, per metric, the absolute error of each sampler (mean over seeds)
    and, for the others, the geometric-mean ratio uniform / sampler with its 95 % interval."""
    proto = result["protocol"]
    samplers, n = proto["samplers"], len(proto["seeds"])
    sizes = proto["validation"]["groups"]
    lines = []
    for g, entries in summary.items():
        head = " (headline)" if g == proto["headline"] else ""
        base = g.removesuffix(PER_SIMULATION)
        count = (f"{sizes[base]['simulations']} simulations (mean error over time steps)"
                 if g != base else f"{sizes[g]['simulations']} simulations, "
                 f"{sizes[g]['samples']} samples")
        lines += [f"### {g}{head}: {count}", "",
                  "| metric | " + " | ".join(samplers) + " |",
                  "|---|" + "---|" * len(samplers)]
        for m in METRICS:
            cells = []
            for name in samplers:
                e = entries[name][m]
                cell = f"{e['mean']:.4f}"
                if name != "uniform":
                    cell += f" ×{e['ratio']:.2f} [{e['lo']:.2f}, {e['hi']:.2f}]"
                cells.append(cell)
            lines.append(f"| {_LABELS[m]} | " + " | ".join(cells) + " |")
        lines.append("")
    b = proto["bootstrap"]
    lines += [f"Per-sample relative L2 error, mean over {n} paired seed(s); ×r [lo, hi]:",
              "geometric mean over seeds of uniform / sampler (> 1: better than uniform) and",
              (f"its 95 % paired bootstrap interval ({b['resamples']} resamples of the seeds, "
               f"bootstrap seed {b['seed']})."), "CVaR0.99: mean error at or above P99; "
              + _passes_line(result) + "."]
    return "\n".join(lines)


def _figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inner = result["validation"].group == 0
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in result["protocol"]["samplers"]:
        err = np.sort(np.concatenate([r["errors"][inner].ravel() for r in result["runs"]
                                      if r["sampler"] == name]))
        surv = 1.0 - np.arange(len(err)) / len(err)
        ax[0].loglog(err, surv, label=name)
        p99 = [r["metrics"]["interior"]["p99"] for r in result["runs"] if r["sampler"] == name]
        ax[1].scatter([name] * len(p99), p99, s=18)
    ax[0].axhline(0.01, color="k", lw=0.5, ls=":")
    ax[0].set(xlabel="per-sample relative L2 error", ylabel="fraction of samples above",
              title="interior error distribution (all seeds)")
    ax[0].legend(fontsize=8)
    ax[1].set(ylabel="interior P99 per seed", title="interior P99 over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_comparison(result: dict, out: str | Path, *, config_path: str | None = None,
                     stage: str | Path | None = None) -> dict:
    """Write ``compare.json``, ``compare.md``, ``errors.npz`` and
    ``figures/compare_errors.png`` into the new folder ``out`` (staged -- in ``stage`` when
    given, e.g. a folder that already holds the validation cache -- then renamed, so a
    failure leaves nothing); return the summary table."""
    from ..report.runfolder import to_jsonable

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"output folder {str(out)!r} already exists; choose another --out")
    summary = summarise_comparison(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = (Path(stage) if stage is not None
             else Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent)))
    try:
        protocol = json.loads(json.dumps(to_jsonable(result["protocol"])))
        cache = protocol["validation"]["cache"]
        if cache is not None and Path(cache).resolve().is_relative_to(stage.resolve()):
            protocol["validation"]["cache"] = str(out / Path(cache).resolve().relative_to(
                stage.resolve()))
        skip = ("errors", "params")
        runs = [{k: v for k, v in r.items() if k not in skip} for r in result["runs"]]
        payload = {"protocol": protocol, "config": config_path, "summary": summary,
                   "runs": runs}
        (stage / "compare.json").write_text(json.dumps(to_jsonable(payload), indent=1,
                                                       allow_nan=False) + "\n")
        table = comparison_table(summary, result)
        (stage / "compare.md").write_text(table + "\n")
        val = result["validation"]
        arrays = {"validation_group": val.group, "validation_params": val.params}
        for r in result["runs"]:
            arrays[f"{r['sampler']}_seed{r['seed']}"] = r["errors"].astype(np.float32)
            arrays[f"params_{r['sampler']}_seed{r['seed']}"] = r["params"]
        np.savez_compressed(stage / "errors.npz", **arrays)
        (stage / "figures").mkdir(exist_ok=True)
        _figure(result, stage / "figures" / "compare_errors.png")
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return summary
