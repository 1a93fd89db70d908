"""Configuration of an online study (``examples/heat_online.toml``), validated by pydantic.

Tables: ``[study]`` (problem and budget), ``[sampler]``, ``[buffer]``, ``[training]``,
``[executor]``, ``[validation]``, ``[checkpoint]`` and ``[cluster]``
(:class:`~wheretolearn.cluster.ClusterConfig`). Unknown keys are errors; every
error message names the key, the value and what is allowed. Defaults are the CPU settings
of SPEC §5 (64 x 64 heat equation, 200 simulations of 100 steps, reservoir 2500 / 500,
Melissa's MLP and optimiser); ``OnlineStudyConfig.paper()`` gives the SC'23 sizes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from ..cluster import ClusterConfig

__all__ = ["OnlineStudyConfig", "StudySection", "SamplerSection", "BufferSection",
           "TrainingSection", "ExecutorSection", "ValidationSection", "CheckpointSection",
           "load_online_config", "check_run_trusted"]


class _Section(BaseModel):
    # One rule per key, the same from TOML and from flags: no coercion (``dim = true``,
    # ``n = "8"`` or ``2.0`` for an int are errors; an int is a valid float) and no inf/nan.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StudySection(_Section):
    """``[study]``: the problem, its options and the simulation budget.

    ``n``, ``n_steps``, ``dt``, ``side`` go to ``get_problem(problem, ...)``. ``max_seconds``
    stops the study after that wall time (checkpointed, resumable).
    """

    problem: str = "heat2d"
    options: dict[str, Any] = Field(default_factory=dict)
    command: list[str] | None = None
    launcher: list[str] | None = None
    keep_outputs: bool = False
    n: int = Field(64, ge=2, le=4096)
    n_steps: int = Field(100, ge=1, le=1_000_000)
    dt: float = Field(0.01, gt=0)
    side: float = Field(1.0, gt=0)
    n_simulations: int = Field(200, ge=1, le=10_000_000)
    seed: int = Field(0, ge=0)
    max_seconds: float | None = Field(None, gt=0)

    def problem_options(self) -> dict[str, Any]:
        """Keyword options of the problem: ``[study.options]`` plus, for ``heat2d``, ``n``,
        ``n_steps``, ``dt``, ``side``, and for a ``command`` (problem ``external``) the command,
        ``launcher``, ``keep_outputs`` and ``n_steps``. Any other problem gets
        ``[study.options]`` only (``n``, ``n_steps``, ``dt``, ``side`` are heat2d's)."""
        base: dict[str, Any] = {}
        if self.command is not None:
            base = {"command": list(self.command), "n_steps": self.n_steps,
                    "keep_outputs": self.keep_outputs}
            if self.launcher:
                base["launcher"] = list(self.launcher)
        elif self.problem == "heat2d":
            base = {"n": self.n, "n_steps": self.n_steps, "dt": self.dt, "side": self.side}
        return {**base, **self.options}

    @model_validator(mode="after")
    def _command(self) -> "StudySection":
        if self.command is None:
            if self.launcher is not None or self.keep_outputs:
                raise ValueError("launcher and keep_outputs apply only with a command")
            return self
        if not self.command:
            raise ValueError("command must name a program, got an empty list")
        if "problem" in self.model_fields_set and self.problem != "external":
            raise ValueError(f"command runs an external program (problem 'external'), but "
                             f"problem is {self.problem!r}; remove one of them")
        self.problem = "external"
        return self


class SamplerSection(_Section):
    """``[sampler]``: name (``uniform``, ``halton``, ``sobol``, ``lhs``, ``breed``), seed
    (default: study seed + 1) and optional ``bounds`` (d, 2) overriding the problem's parameter
    bounds.

    ``boundary_share`` (every sampler, default 0; Breed: its base sampler): every
    ``round(1 / boundary_share)``-th simulation is a boundary point, each coordinate snapped
    to a bound with probability 1/2 (at least one), from a stream of its own, so the other
    simulations are those of ``boundary_share = 0`` (:mod:`wheretolearn.online.samplers`).

    Breed options (only with ``name = "breed"``; see :mod:`wheretolearn.online.breed`; each
    key is one field of :class:`~wheretolearn.online.breed.BreedOptions` or of one of its
    groups, :meth:`breed_options`, except ``fitness_loss`` and ``weighted``, the study's):
    ``base`` sampler of the non-bred share (at the sampler's seed: Breed's generation 0 is
    that sampler's sequence), ``sigma`` (relative to the range), ``children`` (``reflect``:
    folded back into the box at the bounds, default; ``retry``: the paper's shrink-and-retry,
    with ``shrink`` and ``max_tries``), ``period`` (batches), ``min_finished``, ``r_start``,
    ``r_end``, ``r_break`` (default the paper's 0.5 -> 0.7 over 3 resamplings; OGAS's 0 ->
    0.7 gave a better mean but worse faces and corners on heat, issue 23), ``window``
    (simulations), ``min_steps``, ``queue_size``, ``trigger`` (``period`` | ``ess``),
    ``ess_threshold``, ``min_period``, ``fitness_loss`` (``mse``, default, | ``nrmse``: the
    per-sample loss whose deviations make the fitness), ``fitness_baseline`` (``batch``,
    default, the paper: deviation from the batch mean; ``step``: of losses divided by their
    time step's running mean). Measured in issue 23 (10 paired seeds): MSE / batch / R from
    0.5 gives the better per-sample interior tail on heat (P99 1.10x vs 1.05x) and Gray-Scott
    (CVaR 1.23x vs 1.13x); nRMSE / step gives the better per-simulation tail on heat.
    ``fitness_quantile`` (a simulation's fitness is this quantile of its recorded
    deviations, default 0.9; ``"mean"``: the paper's mean), ``selection_power`` (parent
    probabilities proportional to ``(f - min f)^p``; 1, the paper, by default), ``weighted``
    (weight the training loss by the importance weights, unbiased for the base design) and
    ``weight_cap`` (those weights are normalised to mean 1 over each batch and capped at
    ``weight_cap`` times it, default 10). ``min_candidates``: a resampling waits for that
    many parent candidates. The study passes its ``n_simulations``: no resampling once the
    last simulation was requested. Unset sizes are derived from the buffer (SPEC §5 gives
    OGAS's rules): ``period`` = 3 x capacity in
    simulations and ``min_finished`` = 2 x watermark in simulations as OGAS, but ``window``
    = 2 x capacity in simulations and ``min_steps`` = 0.1 x steps per simulation instead of
    OGAS's 1 x and 0.33 x: at the default pace (about 5 batches per simulation) a simulation
    has about 30 of its steps trained while it is among the last 25, so OGAS's rule left 1 to
    5 candidates per resampling and every child of a generation came from one parent
    (measured, issue 13 notes).
    """

    name: str = "uniform"
    seed: int | None = Field(None, ge=0)
    bounds: list[list[float]] | None = None
    boundary_share: float = Field(0.0, ge=0, le=1)
    base: Literal["uniform", "halton", "sobol", "lhs"] = "uniform"
    sigma: float = Field(0.1, gt=0, le=1)
    children: Literal["reflect", "retry"] = "reflect"
    shrink: float = Field(0.3, gt=0, lt=1)
    max_tries: int = Field(10, ge=1, le=10_000)
    period: int | None = Field(None, ge=1, le=100_000_000)
    min_finished: int | None = Field(None, ge=0, le=10_000_000)
    r_start: float = Field(0.5, ge=0, le=1)
    r_end: float = Field(0.7, ge=0, le=1)
    r_break: int = Field(3, ge=0, le=10_000)
    window: int | None = Field(None, ge=1, le=10_000_000)
    min_steps: int | None = Field(None, ge=1, le=1_000_000)
    queue_size: int = Field(10, ge=1, le=100_000)
    trigger: Literal["period", "ess"] = "period"
    ess_threshold: float = Field(0.5, gt=0, le=1)
    min_period: int = Field(20, ge=1, le=100_000_000)
    fitness_loss: Literal["mse", "nrmse"] = "mse"
    fitness_baseline: Literal["batch", "step"] = "batch"
    fitness_quantile: float | Literal["mean"] = 0.9
    selection_power: float = Field(1.0, gt=0, le=100)
    min_candidates: int = Field(5, ge=1, le=10_000_000)
    weighted: bool = False
    weight_cap: float = Field(10.0, ge=1)

    #: Keys that only Breed reads.
    BREED_KEYS: ClassVar[tuple[str, ...]] = (
        "base", "sigma", "children", "shrink", "max_tries", "period", "min_finished",
        "r_start", "r_end", "r_break", "window", "min_steps", "queue_size", "trigger",
        "ess_threshold", "min_period", "fitness_loss", "fitness_baseline", "fitness_quantile",
        "selection_power", "min_candidates", "weighted", "weight_cap")

    @model_validator(mode="after")
    def _breed_only(self) -> "SamplerSection":
        if self.name != "breed":
            for key in self.BREED_KEYS:
                value, default = getattr(self, key), type(self).model_fields[key].default
                if value != default:
                    raise ValueError(f"sampler option {key} = {value!r} applies only to "
                                     f"name = 'breed' (this sampler is {self.name!r})")
        elif self.boundary_share > 0 and math.floor(1 / self.boundary_share + 0.5) == 1:
            raise ValueError(f"boundary_share = {self.boundary_share} puts every base point on "
                             "the boundary; breed needs interior base points: use "
                             "boundary_share <= 2/3")
        return self

    @field_validator("fitness_quantile")
    @classmethod
    def _quantile(cls, value: float | str) -> float | str:
        if value != "mean" and not 0 < value <= 1:
            raise ValueError(f"fitness_quantile must be a number in (0, 1] or 'mean', got "
                             f"{value!r}")
        return value

    def options(self, *, n_steps: int, capacity: int, watermark: int,
                n_simulations: int | None = None) -> dict[str, Any]:
        """Keyword arguments for ``make_sampler``: ``boundary_share`` when set and, for
        Breed, ``options`` (:meth:`breed_options`) and ``n_simulations`` (the study's
        budget, when given)."""
        extra: dict[str, Any] = ({"boundary_share": self.boundary_share}
                                 if self.boundary_share else {})
        if self.name != "breed":
            return extra
        opts = {"options": self.breed_options(n_steps=n_steps, capacity=capacity,
                                              watermark=watermark), **extra}
        if n_simulations is not None:
            opts["n_simulations"] = n_simulations
        return opts

    def breed_options(self, *, n_steps: int, capacity: int, watermark: int) -> Any:
        """The :class:`~wheretolearn.online.breed.BreedOptions` of these keys, one to one,
        with the unset sizes derived from the buffer as documented."""
        from .breed import BreedOptions

        sims = max(1, capacity // n_steps)
        flat = {key: getattr(self, key) for key in BreedOptions.KEYS}
        flat.update(window=self.window or 2 * sims, period=self.period or 3 * sims,
                    min_finished=(self.min_finished if self.min_finished is not None
                                  else 2 * math.ceil(watermark / n_steps)),
                    min_steps=self.min_steps or max(1, math.ceil(0.1 * n_steps)))
        return BreedOptions.from_flat(flat)

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        from .sampler_registry import SAMPLERS

        if value not in SAMPLERS:
            raise ValueError(f"unknown sampler {value!r}; allowed: {', '.join(sorted(SAMPLERS))}")
        return value

    @field_validator("bounds")
    @classmethod
    def _bounds(cls, value: list[list[float]] | None) -> list[list[float]] | None:
        if value is None:
            return value
        for i, row in enumerate(value):
            if len(row) != 2:
                raise ValueError(f"bounds[{i}] must be [low, high], got {row!r}")
            lo, hi = row
            if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
                raise ValueError(f"bounds[{i}] must be finite with low < high, got [{lo}, {hi}]"
                                 " (inverted or empty bounds)")
        return value


class BufferSection(_Section):
    """``[buffer]``: kind (``fifo``, ``firo``, ``reservoir``), capacity and watermark
    (samples; training starts once the buffer holds ``watermark``), ``pseudo_epochs`` (FIRO),
    ``policy`` (reservoir eviction: ``replace`` = Melissa, ``uniform`` = Algorithm R)."""

    kind: Literal["fifo", "firo", "reservoir"] = "reservoir"
    capacity: int = Field(2500, ge=1, le=100_000_000)
    watermark: int = Field(500, ge=1, le=100_000_000)
    pseudo_epochs: int = Field(1, ge=1, le=10_000)
    policy: Literal["replace", "uniform"] = "replace"

    def options(self) -> dict[str, Any]:
        """Kind-specific keyword options for ``make_buffer``."""
        if self.kind == "firo":
            return {"pseudo_epochs": self.pseudo_epochs}
        if self.kind == "reservoir":
            return {"policy": self.policy}
        return {}

    @model_validator(mode="after")
    def _watermark(self) -> "BufferSection":
        if self.watermark > self.capacity:
            raise ValueError(f"buffer watermark ({self.watermark}) must not exceed capacity "
                             f"({self.capacity})")
        return self


class TrainingSection(_Section):
    """``[training]``: Melissa's heat surrogate and optimiser (SPEC §5).

    ``max_batches`` stops training after that many batches (None: until the ensemble is
    done and the buffer drained). ``min_batches``: when the ensemble is done earlier, keep
    training on what the buffer holds (a reservoir keeps serving; a FIFO drains) until
    that many batches before the end-of-ensemble drain.
    """

    batch_size: int = Field(10, ge=1, le=1_000_000)
    hidden: list[int] = Field(default_factory=lambda: [256, 256])
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    milestones: list[int] = Field(default_factory=lambda: [1000, 2000])
    gamma: float = Field(0.5, gt=0, le=1)
    max_batches: int | None = Field(None, ge=1, le=10_000_000_000)
    min_batches: int | None = Field(None, ge=1, le=10_000_000_000)
    torch_threads: int | None = Field(None, ge=1, le=1024)  # None: cores left by local workers

    @field_validator("hidden")
    @classmethod
    def _hidden(cls, value: list[int]) -> list[int]:
        if not value or len(value) > 1_000 or any(h < 1 or h > 100_000 for h in value):
            raise ValueError("hidden must be a non-empty list of at most 1000 widths, each "
                             f"between 1 and 100000, got {value}")
        return value

    def adam_schedule(self) -> Any:
        """``lr``, ``weight_decay``, ``milestones``, ``gamma`` as the trainer's
        :class:`~wheretolearn.online.trainer.AdamSchedule` (one to one)."""
        from .trainer import AdamSchedule

        return AdamSchedule(lr=self.lr, weight_decay=self.weight_decay,
                            milestones=tuple(self.milestones), gamma=self.gamma)


class ExecutorSection(_Section):
    """``[executor]``: ensemble execution and fault tolerance.

    One meaning per name: ``workers`` = Dask worker processes a local cluster starts (and
    the workers asked of a batch cluster); ``max_concurrent`` = simulation attempts in
    flight at once (default: ``workers``; :attr:`attempts_in_flight` is the value in use);
    ``simulation_timeout`` seconds without a message; ``max_retries`` = failed attempts
    (crash, timeout, lost worker) a lineage may be relaunched after, redraws included --
    one more failure gives it up (the summary's ``relaunches`` counts the relaunches that
    happened); ``failures_before_redraw`` failures of one parameter set (crashes, timeouts
    and lost workers alike) before the lineage gets new parameters (None: never; the old
    key ``crashes_before_redraw``, Melissa's name, is accepted); ``fail_rate`` fault
    injection; ``queue_maxsize``
    messages in the Dask queue before producers block (so at most ``queue_maxsize x
    max_message_bytes`` in flight); ``max_message_bytes``: steps of one simulation are
    grouped into messages up to this size; ``hang_seconds``: longest a fault-injected hang
    lasts when nobody cancels it (default 3 x timeout).

    The executor's option objects are made from these keys: :meth:`plan`,
    :meth:`fault_injection` and :meth:`streaming`.
    """

    workers: int = Field(2, ge=1, le=100_000)
    max_concurrent: int | None = Field(None, ge=1, le=100_000)
    simulation_timeout: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0, le=1_000)
    failures_before_redraw: int | None = Field(
        None, ge=1, validation_alias=AliasChoices("failures_before_redraw",
                                                  "crashes_before_redraw"))
    fail_rate: float = Field(0.0, ge=0, lt=1)
    queue_maxsize: int = Field(64, ge=1, le=1_000_000)
    max_message_bytes: int = Field(262144, ge=1, le=2**31 - 1)
    hang_seconds: float | None = Field(None, gt=0)

    @property
    def attempts_in_flight(self) -> int:
        """Most simulation attempts in flight at once: ``max_concurrent``, else ``workers``."""
        return self.max_concurrent or self.workers

    @property
    def crashes_before_redraw(self) -> int | None:
        """Former name of :attr:`failures_before_redraw`."""
        return self.failures_before_redraw

    def plan(self, n_simulations: int) -> Any:
        """The :class:`~wheretolearn.online.executor.EnsemblePlan` of these keys, for a
        budget of ``n_simulations`` lineages (``[study] n_simulations``)."""
        from .executor import EnsemblePlan

        return EnsemblePlan(n_simulations=n_simulations, max_concurrent=self.attempts_in_flight,
                            simulation_timeout=self.simulation_timeout,
                            max_retries=self.max_retries,
                            failures_before_redraw=self.failures_before_redraw)

    def fault_injection(self, seed: int) -> Any:
        """The :class:`~wheretolearn.online.faults.FaultInjection` of ``fail_rate`` and
        ``hang_seconds``, drawn with ``seed`` (``[study] seed``)."""
        from .faults import FaultInjection

        return FaultInjection(fail_rate=self.fail_rate, seed=seed,
                              hang_seconds=self.hang_seconds)

    def streaming(self) -> Any:
        """The :class:`~wheretolearn.online.messages.Streaming` of ``queue_maxsize`` and
        ``max_message_bytes`` (the other fields keep their defaults)."""
        from .messages import Streaming

        return Streaming(queue_maxsize=self.queue_maxsize,
                         max_message_bytes=self.max_message_bytes)


class ValidationSection(_Section):
    """``[validation]``: ``n_val`` held-out simulations generated up front with their own
    ``seed`` (uniform on the bounds), evaluated every ``every_batches`` batches -- but only
    while the validation time so far stays within ``max_fraction`` of the trainer's wall
    time (None: always), so that validation never eats the training steps' time; the first
    scheduled validation and the final one always run."""

    n_val: int = Field(10, ge=1, le=1_000_000)
    seed: int = Field(12345, ge=0)
    every_batches: int = Field(100, ge=1, le=10_000_000_000)
    max_fraction: float | None = Field(0.05, gt=0, le=1)


class CheckpointSection(_Section):
    """``[checkpoint]``: save everything every ``every_batches`` batches and at the end."""

    every_batches: int = Field(500, ge=1, le=10_000_000_000)


class OnlineStudyConfig(_Section):
    """A whole online study (all tables)."""

    study: StudySection = Field(default_factory=StudySection)
    sampler: SamplerSection = Field(default_factory=SamplerSection)
    buffer: BufferSection = Field(default_factory=BufferSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    executor: ExecutorSection = Field(default_factory=ExecutorSection)
    validation: ValidationSection = Field(default_factory=ValidationSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _consistent(self) -> "OnlineStudyConfig":
        if self.buffer.capacity < self.training.batch_size:
            raise ValueError(f"buffer capacity ({self.buffer.capacity}) is below the batch size "
                             f"({self.training.batch_size}); it must hold at least one batch")
        # [sampler] bounds against the problem's parameters: checked once it is built
        # (preflight.check_online_problem), from its declared input_shape.
        return self

    def problem_spec(self) -> dict[str, Any]:
        """``{"name", "options"}`` the driver and every worker build the problem from.

        An external command gets ``[sampler] bounds`` as its ``bounds`` (unless its options
        give them), ``step_timeout`` = 2 x ``simulation_timeout`` (the executor declares the
        timeout first; this is the backstop), ``cwd`` = the current folder, so workers
        started elsewhere run it in the same place, and on a batch cluster ``cores`` (the
        ``{cores}`` of a launcher) = ``[cluster] cores / processes``."""
        import os

        from ..problems.plugins import canonical_spec

        options = self.study.problem_options()
        if self.study.problem == "external":
            if self.sampler.bounds is not None:
                options.setdefault("bounds", self.sampler.bounds)
            if "bounds" not in options:
                raise ValueError("a command needs parameter bounds: set [sampler] bounds = "
                                 "[[low, high], ...] (one row per {p0}, {p1}, ...)")
            if "field_shape" not in options:
                raise ValueError("a command needs the shape of one step's field: set "
                                 "[study.options] field_shape = [n, ...]")
            options.setdefault("step_timeout", 2 * self.executor.simulation_timeout)
            if self.cluster.kind in ("slurm", "pbs", "sge"):
                # {cores} of a launcher: the cores of one worker's share of its batch job
                options.setdefault("cores", max(1, self.cluster.cores // self.cluster.processes))
            options.setdefault("cwd", os.getcwd())
        return {"name": canonical_spec(self.study.problem), "options": options}

    def problem_code(self) -> str | None:
        """What in ``[study]`` names code from outside the package, as ``key = value``: a
        ``command`` (problem ``external``) or a problem that is not built-in (an import
        path, a file, a plugin name); None for a built-in problem."""
        from ..problems.trust import is_builtin_problem

        s = self.study
        if s.command is not None or s.problem == "external":
            return f"command = {s.command or s.options.get('command')!r}"
        return None if is_builtin_problem(s.problem) else f"problem = {s.problem!r}"

    def user_code(self) -> str | None:
        """What a run of this configuration would import or launch that it names itself
        (:meth:`problem_code`, or a ``[cluster]`` key: the ``python`` the workers run, the
        scheduler ``address`` it connects to -- whose replies it unpickles -- or
        ``job_extra_directives`` of the job script), as ``key = value``; None if nothing."""
        found = self.problem_code()
        if found is not None:
            return found
        c = self.cluster
        if c.python is not None:
            return f"[cluster] python = {c.python!r}"
        if c.kind == "address":
            return f"[cluster] address = {c.address!r}"
        if c.job_extra_directives:
            return f"[cluster] job_extra_directives = {c.job_extra_directives!r}"
        return None

    @classmethod
    def paper(cls) -> "OnlineStudyConfig":
        """The SC'23 sizes: 1000 x 1000 grid, 25 000 simulations, reservoir 6000 / 1000."""
        return cls(study=StudySection(n=1000, n_simulations=25000),
                   buffer=BufferSection(capacity=6000, watermark=1000))

    def with_overrides(self, **overrides: Any) -> "OnlineStudyConfig":
        """A re-validated copy with ``{"executor.workers": 4, ...}`` style overrides."""
        data = self.model_dump()
        for dotted, value in overrides.items():
            if value is None:
                continue
            node = data
            *path, last = dotted.split(".")
            for key in path:
                node = node[key]
            node[last] = value
        return OnlineStudyConfig.model_validate(data)


def load_online_config(path: str, **overrides: Any) -> OnlineStudyConfig:
    """Read a TOML file into an :class:`OnlineStudyConfig` (``overrides`` as in
    :meth:`OnlineStudyConfig.with_overrides`)."""
    import tomllib

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {str(p)!r} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {str(p)!r} is not valid TOML: {exc}") from None
    cfg = _anchor_paths(OnlineStudyConfig.model_validate(data), p.resolve().parent)
    return cfg.with_overrides(**overrides) if overrides else cfg


def _anchor_paths(cfg: OnlineStudyConfig, base: Any) -> OnlineStudyConfig:
    """Relative paths of a config file are relative to its folder: a ``file.py:factory``
    problem and the folder a ``command`` runs in (``[study.options] cwd``)."""
    from ..problems.plugins import canonical_spec

    study = cfg.study
    update: dict[str, Any] = {"problem": canonical_spec(study.problem, base=base)}
    if study.command is not None:
        cwd = Path(study.options.get("cwd", "."))
        update["options"] = {**study.options, "cwd": str((base / cwd).resolve())}
    data = cfg.model_dump()
    data["study"].update(update)
    if study.command is not None and "problem" not in study.model_fields_set:
        data["study"].pop("problem")
    return OnlineStudyConfig.model_validate(data)


def check_run_trusted(run_dir: Any, config: OnlineStudyConfig, *,
                      how: str = "pass trust=True if you trust who wrote it") -> None:
    """Refuse to run the study in ``run_dir`` (someone else's folder, perhaps) when its
    ``config`` names code (:meth:`OnlineStudyConfig.user_code`): one ``ValueError`` saying
    what it names and ``how`` to go on anyway."""
    from ..problems.trust import user_code_message

    found = config.user_code()
    if found is not None:
        raise ValueError(user_code_message(run_dir, found, how))
