"""A complete bilevel study: meta-test -> bilevel descent -> baselines -> figures -> summary.

Implements the experiment of paper §5 / SM F.1 (SPEC §3) end to end and writes a run
folder (see :class:`wheretolearn.report.RunFolder`)::

    out/config.toml     resolved BilevelStudyConfig
    out/metrics.jsonl   one record per bilevel step (step, lr, ridge, seen/unseen error, ...)
    out/evaluation.jsonl one record per baseline fit (source, N, repeat, error, seconds)
    out/summary.json    errors, timings, learned distribution (Gaussian, or a mixture's
                        weights / means / covs beside its total mean and cov), family and
                        its parameters, baseline table with 95 % CIs,
                        collapse flags and warnings; with ``trials > 1`` the table holds the
                        mean and 95 % interval over whole runs (``per_trial`` keeps each run)
    out/figures/*.png   error vs step, error vs N, learned vs barycenter / mixture covariance
    out/model.pt        the training set of the KRR the run reports for "optimized" at the
                        largest N (first trial, repeat 0): x, y, bandwidth, ridge, kernel --
                        plain tensors and numbers, so ``load_model`` refits it without
                        importing the problem (:func:`read_training_record`)

With ``trials = T`` the study repeats the *whole* run (bilevel descent and every baseline's
evaluation) T times with different seeds; the meta-test family stays the one of ``seed``
unless ``vary_metatest``. Trial 0 uses exactly the seeds of a single run.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

import torch
from pydantic import (BaseModel, ConfigDict, Field, ValidationInfo, field_validator,
                      model_validator)

from .._progress import ProgressBars
from ..report.runfolder import StudyResult
from .baselines import APPROXIMATE_SOURCES, BASELINE_NAMES

if TYPE_CHECKING:
    from .bilevel import BilevelSchedule, KRRSettings, StepControl
    from .evaluation import EvaluationFit

__all__ = ["BilevelStudyConfig", "run_bilevel_study", "BILEVEL_PROBLEMS", "PAPER_SETTINGS",
           "DEMO_SETTINGS", "resolve_bilevel_config", "aggregate_trials", "describe_measure",
           "final_training_inputs", "read_training_record", "TRAINING_RECORD_FORMAT"]

#: Marker of the bilevel run folder's ``model.pt`` (the final KRR's training set).
TRAINING_RECORD_FORMAT = "wheretolearn-krr-training-set/1"

#: The keys ``bilevel_options`` accepts, by the option object of
#: :func:`~wheretolearn.design.bilevel.bilevel_descent` each sets (the other fields of those
#: objects are top-level keys of :class:`BilevelStudyConfig`).
_BILEVEL_OPTIONS: dict[str, str] = {
    "eval_unseen": "schedule", "lr_end": "schedule", "dtype": "krr", "factor_dtype": "krr",
    "max_move": "control", "backtrack": "control", "jump": "control"}

#: Problems a bilevel study accepts (benchmark functions on R^d, SPEC §3).
BILEVEL_PROBLEMS = ("sobol-g", "friedman1", "friedman2", "rkhs")

#: Per-problem settings of the paper's public configs (SPEC §3 table); N = 250, 1000 steps.
PAPER_SETTINGS: dict[str, dict[str, Any]] = {
    "sobol-g": {"dim": 2, "bandwidth": 1.0, "init_mean": 0.5, "lr": 1e-2},
    "friedman1": {"dim": 5, "bandwidth": 3.0, "init_mean": 0.5, "lr": 5e-4},
    "friedman2": {"dim": 5, "bandwidth": 2.0 / 1.1, "init_mean": 0.5, "lr": 2.5e-7},
    "rkhs": {"dim": 10, "bandwidth": 5.0, "init_mean": 0.0, "lr": 5.0},
}

#: The ``wheretolearn demo`` study: Sobol G in 2-D, shorter run, smaller evaluation.
DEMO_SETTINGS: dict[str, Any] = {
    "problem": "sobol-g", "dim": 2, "n_train": 250, "steps": 300, "lr": 1e-2,
    "bandwidth": 1.0, "init_mean": 0.5, "eval_n": [256, 1024], "repeats": 3, "seed": 0,
}


def resolve_bilevel_config(*layers: dict[str, Any] | None) -> "BilevelStudyConfig":
    """Merge settings left to right (later wins) on top of the paper settings of the problem.

    The problem is taken from the last layer that names one; its :data:`PAPER_SETTINGS`
    fill every key the layers leave unset. Raises pydantic's ``ValidationError`` on unknown
    keys or invalid values.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in (layer or {}).items() if v is not None})
    base = dict(PAPER_SETTINGS.get(merged.get("problem", "sobol-g"), {}))
    base.update(merged)
    return BilevelStudyConfig(**base)


class BilevelStudyConfig(BaseModel):
    """Settings of one bilevel study; defaults are the paper's Sobol G configuration.

    Every field can be given in a TOML file (same names) or on the command line.
    """

    # strict: one rule per key from TOML and flags alike (``dim = true``, ``"2"`` or ``2.0``
    # are not an int); an int is a valid float
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)

    problem: str = Field("sobol-g", description="sobol-g | friedman1 | friedman2 | rkhs")
    dim: int = Field(2, description="input dimension d")
    n_train: int = Field(250, description="training samples N per bilevel step")
    steps: int = Field(1000, description="bilevel gradient steps")
    lr: float = Field(1e-2, description="initial learning rate (cosine-annealed to 0)")
    bandwidth: float = Field(1.0, description="kernel length scale s")
    kernel: Literal["gaussian", "laplace"] = Field(
        "gaussian", description="KRR kernel: exp(-|x-x'|^2/(2 s^2)) or exp(-|x-x'|/s), in the "
                                "bilevel step and the final fits (coresets keep the Gaussian)")
    family: Literal["gaussian", "mixture", "particles", "best"] = Field(
        "gaussian", description="training distribution moved by the descent: one Gaussian "
                                "(the paper's), a Gaussian mixture (weights, means, factors), "
                                "particles (the training inputs themselves), or 'best': run "
                                "all three and report the one with the lowest *seen* error")
    components: Optional[int] = Field(
        None, description="mixture components K (family = 'mixture' only; default: "
                          "n_measures, which starts from the Q_j themselves)")
    mixture_init: Literal["auto", "metatest", "kmeans", "split"] = Field(
        "auto", description="initial mixture: the Q_j fitted to their seen samples (needs K = "
                            "n_measures), k-means of the pooled seen samples, or the initial "
                            "Gaussian split into K; auto: metatest when K = n_measures, else "
                            "kmeans")
    particles: Optional[int] = Field(
        None, description="particles M (family = 'particles' or 'best'; default: n_train, "
                          "so every step trains on the particles themselves)")
    particle_init: Literal["metatest", "start"] = Field(
        "metatest", description="initial particles: M of the pooled seen meta-test samples "
                                "(without replacement) or M draws of the initial Gaussian")
    particle_bandwidth: float = Field(
        1.0, gt=0, le=100, description="KDE bandwidth of the learned particles' smoothing "
        "(draws beyond M at evaluation), as a multiple of Silverman's rule (default 1)")
    init: Literal["normal", "barycenter"] = Field(
        "normal", description="initial nu: N(init_mean 1, init_std^2 I) or the barycenter of Q "
                              "(for a mixture: the Gaussian that mixture_init = 'split' splits)")
    init_mean: float = Field(0.5, description="m0 of the initial N(m0 1, s0^2 I)")
    init_std: float = Field(1.0, description="s0 of the initial N(m0 1, s0^2 I)")
    optimizer: Literal["sgd", "adam"] = "sgd"
    normalize_labels: bool = Field(
        False, description="divide the bilevel objective by the mean square of the seen labels")
    use_iterate: Literal["final", "best"] = Field(
        "best", description="which nu is 'optimized': the iterate with the lowest *seen* error "
                            "(default; the unseen set is never used for choosing) or the last")
    ridge_start: float = 1e-3
    ridge_end: float = 1e-7
    eval_n: list[int] = Field(default_factory=lambda: [1024, 4096])
    eval_ridge: float = Field(1e-7, description="ridge eps of the final fits (K + N eps I)")
    eval_dtype: Literal["float32", "float64"] = "float64"
    repeats: int = 3
    trials: int = Field(1, description="whole runs with different seeds (paper: 10); the "
                                       "table then gives mean and 95 % interval over trials")
    vary_metatest: bool = Field(False, description="draw a new meta-test family per trial")
    trial_offset: int = Field(0, description="index of the first trial: trials k .. k+T-1 of "
                                             "a study can run as separate jobs")
    check_start: bool = Field(
        True, description="before the evaluation, fit KRR on eval_n[0] samples of the chosen "
                          "iterate and of the start and keep the start when the chosen one is "
                          "not better on the *seen* split")
    seed: int = 0
    n_measures: int = 10
    n_seen: int = 500
    n_unseen: int = 4500
    dtype: Literal["float32", "float64"] = "float32"
    baselines: list[str] = Field(default_factory=lambda: list(BASELINE_NAMES))
    num_threads: Optional[int] = Field(
        None, description="torch threads for the whole study (restored afterwards); unset: "
                          "wheretolearn's default policy (1 thread for the small per-step "
                          "kernels, see wheretolearn._threads)")
    bilevel_options: dict[str, Any] = Field(
        default_factory=dict, description="further settings of bilevel_descent's option "
        "objects: eval_unseen, lr_end (BilevelSchedule), dtype, factor_dtype (KRRSettings), "
        "max_move, backtrack, jump (StepControl)")

    @field_validator("problem")
    @classmethod
    def _known_problem(cls, v: str) -> str:
        from ..problems.plugins import canonical_spec, entry_point_problems, is_import_spec

        # user functions of vectors: "pkg.mod:factory", "file.py:factory" or a plugin name,
        # built as factory(dim=d) and checked in _run_trial (docs/user_solver.md)
        if v in BILEVEL_PROBLEMS or is_import_spec(v):
            return canonical_spec(v)
        if v in entry_point_problems():
            return v
        raise ValueError(f"unknown problem; choose one of {', '.join(BILEVEL_PROBLEMS)}, an "
                         "installed plugin or an import path 'package.module:factory'")

    @field_validator("dim", "n_train", "steps", "repeats", "trials", "n_measures", "n_seen",
                     "n_unseen")
    @classmethod
    def _positive_int(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be a positive integer")
        return v

    @field_validator("dim")
    @classmethod
    def _dimension_fits_problem(cls, v: int, info: ValidationInfo) -> int:
        need = {"friedman1": 5, "friedman2": 4}.get(info.data.get("problem"), 1)
        if v < need:
            raise ValueError(f"problem {info.data.get('problem')!r} needs dim >= {need}")
        return v

    @field_validator("num_threads", "components", "particles")
    @classmethod
    def _threads(cls, v: Optional[int]) -> Optional[int]:
        if v is not None and v < 1:
            raise ValueError("must be a positive integer")
        return v

    @model_validator(mode="before")
    @classmethod
    def _default_components(cls, data: Any) -> Any:
        """A mixture without ``components`` has one per meta-test measure (resolved here, so
        the written config records K)."""
        if (isinstance(data, dict) and data.get("family") in ("mixture", "best")
                and data.get("components") is None):
            data = {**data, "components": data.get("n_measures",
                                                   cls.model_fields["n_measures"].default)}
        if (isinstance(data, dict) and data.get("family") in ("particles", "best")
                and data.get("particles") is None):
            data = {**data, "particles": data.get("n_train",
                                                  cls.model_fields["n_train"].default)}
        return data

    @model_validator(mode="after")
    def _mixture_settings(self) -> "BilevelStudyConfig":
        if self.particle_bandwidth != 1.0 and self.family not in ("particles", "best"):
            raise ValueError(f"particle_bandwidth applies to family = 'particles' or 'best' "
                             f"only, got particle_bandwidth = {self.particle_bandwidth} with "
                             f"family = {self.family!r}")
        if self.particles is not None:
            if self.family not in ("particles", "best"):
                raise ValueError(f"particles applies to family = 'particles' or 'best' only, "
                                 f"got particles = {self.particles} with family = "
                                 f"{self.family!r}")
            if self.particles > self.n_train:
                raise ValueError(f"particles must be at most n_train = {self.n_train} (every "
                                 f"step trains on all particles), got {self.particles}")
            pool = self.n_measures * self.n_seen
            if self.particle_init == "metatest" and self.particles > pool:
                raise ValueError(f"particles must be at most the {pool} pooled seen samples "
                                 f"that particle_init = 'metatest' subsamples, got "
                                 f"{self.particles}")
            if self.kernel != "gaussian":
                raise ValueError("family = 'particles' differentiates the Gaussian kernel; "
                                 f"got kernel = {self.kernel!r}")
        if self.family in ("gaussian", "particles"):
            if self.components is not None:
                raise ValueError("components applies to family = 'mixture' only (and 'best'), got "
                                 f"components = {self.components} with family = "
                                 f"{self.family!r}")
            return self
        k = self.n_components
        if k > self.n_train:
            raise ValueError(f"components must be at most n_train = {self.n_train} (each "
                             f"component needs draws in every step), got {k}")
        method = self.mixture_init
        if method == "metatest" and k != self.n_measures:
            raise ValueError(f"mixture_init = 'metatest' starts from the {self.n_measures} "
                             f"meta-test measures and needs components = {self.n_measures}, "
                             f"got {k}")
        pool = self.n_measures * self.n_seen
        if (method == "kmeans" or (method == "auto" and k != self.n_measures)) and k > pool:
            raise ValueError(f"components must be at most the {pool} pooled seen samples that "
                             f"k-means clusters, got {k}")
        return self

    @property
    def n_components(self) -> int:
        """Mixture components ``K`` (1 for the Gaussian family)."""
        return int(self.components) if self.family in ("mixture", "best") else 1

    @field_validator("seed", "trial_offset")
    @classmethod
    def _nonnegative(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be a non-negative integer")
        return v

    @field_validator("lr", "bandwidth", "init_std", "ridge_start", "ridge_end", "eval_ridge")
    @classmethod
    def _positive_finite(cls, v: float) -> float:
        if not math.isfinite(v) or v <= 0:
            raise ValueError("must be a finite number > 0")
        return v

    @field_validator("init_mean")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @field_validator("eval_n")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if not v or any(n < 1 for n in v):
            raise ValueError("must be a non-empty list of positive sample sizes")
        return v

    @field_validator("baselines")
    @classmethod
    def _known_baselines(cls, v: list[str]) -> list[str]:
        bad = [b for b in v if b not in BASELINE_NAMES]
        if bad:
            raise ValueError(f"unknown baseline {bad[0]!r}; choose from {', '.join(BASELINE_NAMES)}")
        if len(set(v)) != len(v):
            raise ValueError("baselines must be distinct")
        return v

    @field_validator("bilevel_options")
    @classmethod
    def _no_shadowing(cls, v: dict[str, Any]) -> dict[str, Any]:
        taken = {"n_train", "steps", "lr", "bandwidth", "ridge_start", "ridge_end", "optimizer",
                 "generator", "normalize_labels", "callback", "problem", "metatest", "init",
                 "num_threads", "kernel"}
        clash = sorted(taken & set(v))
        if clash:
            raise ValueError(f"set {clash[0]!r} as a top-level key, not in bilevel_options")
        unknown = sorted(set(v) - set(_BILEVEL_OPTIONS))
        if unknown:
            raise ValueError(f"unknown bilevel option {unknown[0]!r}; allowed: "
                             f"{', '.join(sorted(_BILEVEL_OPTIONS))}")
        return v

    @model_validator(mode="after")
    def _option_objects_valid(self) -> "BilevelStudyConfig":
        """Build the option objects once, so a bad ``bilevel_options`` value fails here."""
        try:
            self.schedule(), self.krr_settings(), self.step_control()
        except TypeError as exc:   # pydantic reports ValueErrors only
            raise ValueError(str(exc)) from None
        return self

    def _bilevel_option(self, owner: str) -> dict[str, Any]:
        return {k: v for k, v in self.bilevel_options.items() if _BILEVEL_OPTIONS[k] == owner}

    def schedule(self) -> "BilevelSchedule":
        """The descent's :class:`~wheretolearn.design.bilevel.BilevelSchedule`: ``steps``,
        ``n_train``, ``lr``, ``ridge_start``, ``ridge_end`` and ``bilevel_options``'
        ``eval_unseen`` / ``lr_end``."""
        from .bilevel import BilevelSchedule

        return BilevelSchedule(steps=self.steps, n_train=self.n_train, lr=self.lr,
                               ridge_start=self.ridge_start, ridge_end=self.ridge_end,
                               **self._bilevel_option("schedule"))

    def krr_settings(self) -> "KRRSettings":
        """The descent's :class:`~wheretolearn.design.bilevel.KRRSettings`: ``bandwidth``,
        ``kernel``, ``normalize_labels``, ``num_threads`` and ``bilevel_options``' ``dtype`` /
        ``factor_dtype``."""
        from .bilevel import KRRSettings

        return KRRSettings(bandwidth=self.bandwidth, kernel=self.kernel,
                           normalize_labels=self.normalize_labels, num_threads=self.num_threads,
                           **self._bilevel_option("krr"))

    def step_control(self) -> "StepControl":
        """The descent's :class:`~wheretolearn.design.bilevel.StepControl`: ``optimizer`` and
        ``bilevel_options``' ``max_move`` / ``backtrack`` / ``jump``."""
        from .bilevel import StepControl

        return StepControl(optimizer=self.optimizer, **self._bilevel_option("control"))

    def evaluation_fit(self) -> "EvaluationFit":
        """The final fits' :class:`~wheretolearn.design.evaluation.EvaluationFit`:
        ``bandwidth``, ``eval_ridge``, ``kernel``, ``eval_dtype``, ``num_threads``."""
        from .evaluation import EvaluationFit

        return EvaluationFit(bandwidth=self.bandwidth, ridge=self.eval_ridge, kernel=self.kernel,
                             dtype=self.eval_dtype, num_threads=self.num_threads)


def _normal_gaussian(cfg: BilevelStudyConfig, dtype: torch.dtype):
    """``N(init_mean 1, init_std^2 I)``: the problem's normal start (and the "normal" baseline,
    whatever ``init`` is)."""
    from ..measures import Gaussian

    d = cfg.dim
    return Gaussian(torch.full((d,), cfg.init_mean, dtype=dtype),
                    scale_tril=cfg.init_std * torch.eye(d, dtype=dtype))


def _initial_gaussian(cfg: BilevelStudyConfig, metatest, dtype: torch.dtype):
    """``N(init_mean 1, init_std^2 I)`` or the barycenter of the seen meta-test Gaussians."""
    from .baselines import seen_barycenter

    if cfg.init == "barycenter":
        return seen_barycenter(metatest.seen_x, dtype)
    return _normal_gaussian(cfg, dtype)


def _initial_measure(cfg: BilevelStudyConfig, metatest, dtype: torch.dtype, trial: int):
    """The start of the descent: the initial Gaussian, or for ``family = "mixture"`` the
    mixture :func:`~wheretolearn.design.bilevel_families.mixture_start` builds (k-means seeded
    per trial)."""
    start = _initial_gaussian(cfg, metatest, dtype)
    if cfg.family == "gaussian":
        return start
    from .bilevel_families import mixture_start, particle_start
    from .evaluation import source_seed

    g = torch.Generator().manual_seed(source_seed(_trial_seed(cfg.seed, trial, 1), 5))
    if cfg.family == "particles":
        return particle_start(metatest.seen_x, cfg.particles, method=cfg.particle_init,
                              start=start, generator=g, dtype=dtype)
    return mixture_start(metatest.seen_x, cfg.n_components, method=cfg.mixture_init,
                         start=start, generator=g, dtype=dtype)


def run_bilevel_study(config: BilevelStudyConfig | dict, out_dir: str | Path, *,
                      progress: bool = True, overwrite: bool = False,
                      console=None) -> StudyResult:
    """Run one bilevel study (``trials`` whole runs) and write its run folder.

    Steps per trial: build the meta-test family (J Gaussians, seen / unseen samples); start
    from the initial Gaussian; run :func:`~wheretolearn.design.bilevel.bilevel_descent`
    (each step's record goes to ``metrics.jsonl``); fit KRR on ``eval_n`` samples of the
    optimised Gaussian and every baseline (``repeats`` draws each). Then draw figures (of
    trial 0) and write ``summary.json``. The folder appears only if all of it succeeds.

    Parameters
    ----------
    config : BilevelStudyConfig or dict
        A dict is validated into a config (unknown keys are errors).
    out_dir : path
        Run folder; must not exist or be empty unless ``overwrite``.
    progress : bool
        Show rich progress bars.
    overwrite : bool
        Replace an existing run folder.
    console : rich.console.Console, optional

    Returns
    -------
    StudyResult
        ``config`` (validated), ``summary`` (as written to ``summary.json``;
        ``summary["warnings"]`` holds one line per problem found: collapse, no improvement)
        and ``run_dir``.
    """
    cfg = config if isinstance(config, BilevelStudyConfig) else BilevelStudyConfig(**config)
    summary = _study(cfg, out_dir, progress=progress, overwrite=overwrite, console=console)
    run_dir = Path(summary.pop("out"))
    return StudyResult(cfg, summary, run_dir)


def _study(cfg: BilevelStudyConfig, out_dir: str | Path, *, progress: bool, overwrite: bool,
           console) -> dict:
    """:func:`run_bilevel_study` returning the summary plus ``"out"`` (the folder)."""
    from .._threads import torch_threads
    from ..report.figures import plot_study_figures
    from ..report.runfolder import RunFolder

    if cfg.family == "best":
        return _run_best(cfg, out_dir, progress=progress, overwrite=overwrite, console=console)
    run = RunFolder(out_dir, overwrite=overwrite)  # refuses an existing folder before any work
    t_start = time.perf_counter()
    with torch_threads(cfg.num_threads), run, ProgressBars(progress, console=console) as bar:
        run.write_config_toml(cfg.model_dump())
        trials = [_run_trial(cfg, cfg.trial_offset + k, run, bar) for k in range(cfg.trials)]
        summary = (trials[0]["summary"] if cfg.trials == 1
                   else aggregate_trials([t["summary"] for t in trials]))
        first = trials[0]
        summary["figures"] = plot_study_figures(
            run, summary, first["result"].history, first["metatest"], learned=first["chosen"],
            reference={k: first["sources"][k] for k in ("barycenter", "mixture")
                       if k in first["sources"]})
        _write_training_record(run.file("model.pt"), cfg, summary, first["problem"])
        summary["seconds_total"] = time.perf_counter() - t_start
        run.write_summary(summary)
    summary["out"] = str(run.out)
    return summary


#: The families ``family = "best"`` runs, in order.
BEST_FAMILIES = ("gaussian", "mixture", "particles")


def _family_config(cfg: BilevelStudyConfig, family: str) -> BilevelStudyConfig:
    """``cfg`` for one family of a ``family = "best"`` study."""
    data = cfg.model_dump()
    data.update(family=family, components=cfg.components if family == "mixture" else None,
                particles=cfg.particles if family == "particles" else None,
                particle_bandwidth=cfg.particle_bandwidth if family == "particles" else 1.0)
    return BilevelStudyConfig(**data)


def _run_best(cfg: BilevelStudyConfig, out_dir, *, progress: bool, overwrite: bool,
              console) -> dict:
    """``family = "best"``: one study per family of :data:`BEST_FAMILIES` in
    ``out/families/<name>/`` (same seeds), and at the top the summary, figures and ``model.pt``
    of the one with the lowest *seen* error (``selection_seen_error``: the seen error at
    ``eval_n[0]`` of the distribution the family reports, mean over trials; the unseen split
    is never used), with every family's score under ``family_selection``."""
    import shutil

    from .._threads import torch_threads
    from ..report.runfolder import RunFolder

    run = RunFolder(out_dir, overwrite=overwrite)
    t_start = time.perf_counter()
    with torch_threads(cfg.num_threads), run:
        run.write_config_toml(cfg.model_dump())
        results = {}
        for fam in BEST_FAMILIES:
            sub = run.path / "families" / fam
            sub.parent.mkdir(parents=True, exist_ok=True)
            results[fam] = _study(_family_config(cfg, fam), sub, progress=progress,
                                  overwrite=False, console=console)
        scores = {fam: _selection_score(r) for fam, r in results.items()}
        winner = min(BEST_FAMILIES, key=lambda f: (not math.isfinite(scores[f]), scores[f]))
        summary = {k: v for k, v in results[winner].items() if k != "out"}
        summary["figures"] = [f"families/{winner}/{f}" for f in summary.get("figures", [])]
        src = run.path / "families" / winner / "model.pt"
        if src.is_file():
            shutil.copyfile(src, run.file("model.pt"))
        summary["family_selection"] = {
            "chosen": winner, "criterion": "selection_seen_error (seen split only)",
            "seen_error": scores,
            "unseen_optimized": {f: r["baselines"].get("optimized") for f, r in results.items()},
            "folders": {f: f"families/{f}" for f in BEST_FAMILIES}}
        summary["family_searched"] = "best"
        summary["warnings"] = [f"{f}: {w}" for f, r in results.items() for w in r["warnings"]]
        summary["seconds_total"] = time.perf_counter() - t_start
        run.write_summary(summary)
    summary["out"] = str(run.out)
    return summary


def _selection_score(summary: dict) -> float:
    """The seen error ``family = "best"`` compares (``selection_seen_error``, else the
    descent's ``reported_seen_error``)."""
    v = summary.get("selection_seen_error")
    if v is None:
        v = summary.get("reported_seen_error")
    return float(v) if v is not None else math.inf


def _trial_seed(seed: int, trial: int, stream: int) -> int:
    """Seed of one random stream (1: bilevel draws, 2: evaluation) of one trial of a study
    seeded ``seed``; trial 0 keeps the seeds of a single run."""
    from .evaluation import source_seed

    if stream == 1:
        return source_seed(seed, 1) if trial == 0 else source_seed(seed, 1, trial)
    return seed if trial == 0 else source_seed(seed, 2, trial)


def _run_trial(cfg: BilevelStudyConfig, trial: int, run, bar) -> dict:
    """One whole run: meta-test, bilevel descent, evaluation of every source."""
    from .._validation import resolve_dtype, torch_generator
    from ..problems import get_problem
    from .bilevel import bilevel_descent
    from .metatest import make_metatest

    dtype = resolve_dtype(cfg.dtype)
    problem = get_problem(cfg.problem, dim=cfg.dim)
    if cfg.problem not in BILEVEL_PROBLEMS:
        from ..problems import check_function_contract

        check_function_contract(problem, cfg.dim)
    metatest = make_metatest(problem, n_measures=cfg.n_measures, n_seen=cfg.n_seen,
                             n_unseen=cfg.n_unseen,
                             seed=cfg.seed + trial if cfg.vary_metatest else cfg.seed,
                             dtype=dtype)
    init = _initial_measure(cfg, metatest, dtype, trial)
    label = f" trial {trial}" if cfg.trials > 1 or trial else ""
    family = {"gaussian": "", "mixture": f" mixture K={cfg.n_components}",
              "particles": f" particles M={cfg.particles}"}[cfg.family]
    task = bar.task(f"bilevel {cfg.problem} d={cfg.dim}{family}{label}", cfg.steps)

    def on_step(record: dict) -> None:
        run.append_metrics({"trial": trial, **record})
        task.advance(info=f"unseen {record.get('unseen_error', float('nan')):.4f}")

    result = bilevel_descent(problem, metatest, init, schedule=cfg.schedule(),
                             krr=cfg.krr_settings(), control=cfg.step_control(),
                             generator=torch_generator(_trial_seed(cfg.seed, trial, 1)),
                             callback=on_step)
    chosen = result.best if cfg.use_iterate == "best" else result.final
    if cfg.family == "particles" and cfg.particle_bandwidth != 1.0:
        from ..measures.empirical import ParticleMeasure, silverman_bandwidth

        chosen = ParticleMeasure(chosen.points, bandwidth=cfg.particle_bandwidth
                                 * silverman_bandwidth(chosen.points.detach()))
    check = _start_check(cfg, problem, metatest, init, chosen, trial) if cfg.check_start else None
    if check is not None and check["kept_start"]:
        chosen = init
    sources = _sources(cfg, metatest, chosen, dtype)
    evaluation = _evaluate(cfg, problem, metatest, list(sources.values()), bar, run, trial)
    summary = _summary(cfg, result, chosen, evaluation, metatest, trial)
    summary["start_check"] = check
    # the seen error of the distribution reported as "optimized" at eval_n[0] (what
    # family = "best" compares; never the unseen split)
    summary["selection_seen_error"] = (
        summary["reported_seen_error"] if check is None
        else check["seen_error_start"] if check["kept_start"] else check["seen_error_chosen"])
    if check is not None and check["kept_start"]:
        summary["collapse"]["no_improvement"] = summary["collapse"]["flagged"] = True
        summary["warnings"].append(
            f"at N={check['n']} the chosen iterate's seen error ({check['seen_error_chosen']:.4f}) "
            f"is not below the start's ({check['seen_error_start']:.4f}): 'optimized' reports "
            f"the start distribution")
    return {"summary": summary, "result": result, "chosen": chosen, "metatest": metatest,
            "sources": {k: getattr(v, "measure", None) for k, v in sources.items()},
            "problem": problem}


_CHECK_DRAWS = 2


def _start_check(cfg, problem, metatest, init, chosen, trial: int) -> dict:
    """Seen error of KRR on ``eval_n[0]`` samples of the chosen iterate and of the start
    (mean of two draws each, same seeds for both). The bilevel objective is measured at
    ``n_train`` with one draw per step, so the iterate it picks can lose to the start at the
    evaluation size; this check uses the seen split only, never the unseen one."""
    from .evaluation import fit_and_score, source_seed

    n = cfg.eval_n[0]
    errs = {}
    for label, measure in (("chosen", chosen), ("start", init)):
        vals = []
        for r in range(_CHECK_DRAWS):
            g = torch.Generator().manual_seed(source_seed(_trial_seed(cfg.seed, trial, 2), 3, r))
            x = measure.sample(n, generator=g).detach()
            err, _ = fit_and_score(problem, metatest, x, bandwidth=cfg.bandwidth,
                                   ridge=cfg.eval_ridge, dtype=cfg.eval_dtype, split="seen",
                                   kernel=cfg.kernel)
            vals.append(err)
        errs[label] = sum(vals) / len(vals)
    return {"n": n, "draws": _CHECK_DRAWS, "seen_error_chosen": errs["chosen"],
            "seen_error_start": errs["start"],
            "kept_start": bool(errs["chosen"] >= errs["start"])}


def _sources(cfg, metatest, chosen, dtype) -> dict:
    """Every training source of the table, by name; "normal" is the problem's normal start
    ``N(init_mean 1, init_std^2 I)`` whatever the bilevel run started from."""
    from .baselines import make_sources

    names = ["optimized", *cfg.baselines]
    built = make_sources(names, init=_normal_gaussian(cfg, dtype), final=chosen,
                         metatest=metatest, bandwidth=cfg.bandwidth, ridge=cfg.eval_ridge)
    return dict(zip(names, built))


def _evaluate(cfg, problem, metatest, sources, bar, run, trial: int = 0) -> dict:
    from .evaluation import evaluate_sources

    task = bar.task("baselines", len(sources) * len(cfg.eval_n) * cfg.repeats)

    def on_fit(rec: dict) -> None:
        run.append_metrics({"trial": trial, **rec}, name="evaluation.jsonl")
        task.advance(info=f"{rec['source']} N={rec['n']}: {rec['error']:.4f}")

    return evaluate_sources(problem, metatest, sources, cfg.eval_n, fit=cfg.evaluation_fit(),
                            repeats=cfg.repeats, seed=_trial_seed(cfg.seed, trial, 2),
                            callback=on_fit)


def _collapse_report(cfg, result, seen_reported: float) -> tuple[dict, list[str]]:
    """Collapse flags for ``summary.json`` and one warning line per problem found (floor hits
    are warned about, not flagged: the step was taken, projected back)."""
    from ..measures.gaussian import DIAG_CLAMP
    from .bilevel_families import WEIGHT_FLOOR

    c = dict(result.collapse)
    start_seen = result.history[0]["seen_error"]
    c["no_improvement"] = bool(seen_reported >= start_seen)
    c["flagged"] = bool(c.get("events", 0) or c.get("collapsed") or c["no_improvement"])
    warnings = []
    if c.get("events"):
        action = ("rejected, the learning rate halved each time" if result.options.get("backtrack")
                  else "NOT rejected (backtrack off)")
        warnings.append(f"bilevel descent collapsed {c['events']} time(s) (first at step "
                        f"{c['first_step']}: {', '.join(c['reasons'])}); those steps were "
                        f"{action}")
    floors = (c.get("floors") or {}).get("counts") or {}
    if floors.get("scale_floor"):
        warnings.append(f"{floors['scale_floor']} update(s) drove a Cholesky diagonal entry to "
                        f"zero or below (first at step {c['floors']['first_step']}); it was set "
                        f"to {DIAG_CLAMP:g}: a component was collapsing to zero variance")
    if floors.get("weight_floor"):
        warnings.append(f"{floors['weight_floor']} update(s) pushed a mixture weight below "
                        f"{WEIGHT_FLOOR:g} x the largest; it was held there (the component "
                        f"was dying)")
    if c["no_improvement"]:
        warnings.append(f"no reported iterate improved on the start's seen error "
                        f"({start_seen:.4f} -> {seen_reported:.4f}): the 'optimized' column is "
                        f"not an improvement; try a smaller lr")
    return c, warnings


def _summary(cfg, result, chosen, evaluation: dict, metatest, trial: int = 0) -> dict:
    """Assemble ``summary.json`` (plain JSON types only)."""
    hist = result.history
    unseen = [h["unseen_error"] for h in hist]
    seen = [h["seen_error"] for h in hist]
    best_step = int(result.best_step)
    learned = chosen.detach()
    reported_step = best_step if cfg.use_iterate == "best" else len(hist) - 1
    collapse, warnings = _collapse_report(cfg, result, seen[reported_step])
    return {
        "problem": cfg.problem,
        "dim": cfg.dim,
        "steps": cfg.steps,
        "n_train": cfg.n_train,
        "kernel": cfg.kernel,
        "optimizer": cfg.optimizer,
        "normalize_labels": cfg.normalize_labels,
        "init": cfg.init,
        "family": cfg.family,
        "components": cfg.n_components if cfg.family == "mixture" else None,
        "mixture_init": cfg.mixture_init if cfg.family == "mixture" else None,
        "particles": cfg.particles if cfg.family == "particles" else None,
        "particle_init": cfg.particle_init if cfg.family == "particles" else None,
        "smoothing": (learned.smoothing() if hasattr(learned, "smoothing") else None),
        "label_gradient": result.options.get("label_gradient"),
        "use_iterate": cfg.use_iterate,
        "trials": 1,
        "trial": trial,
        "initial_error": unseen[0],
        "final_error": unseen[-1],
        "best_error": unseen[best_step],
        "best_step": hist[best_step]["step"],
        "min_unseen_error": _nanmin(unseen),
        "initial_seen_error": seen[0],
        "final_seen_error": seen[-1],
        "reported_seen_error": seen[reported_step],
        "collapse": collapse,
        "warnings": warnings,
        "seconds_per_step": float(result.seconds_per_step),
        "grad_seconds_per_step": float(result.grad_seconds_per_step),
        "learned": describe_measure(learned),
        "initial": describe_measure(result.initial),
        "eval_n": list(cfg.eval_n),
        "repeats": cfg.repeats,
        "ci_over": "repeats",
        "baselines": {name: {n: cell["mean"] for n, cell in by_n.items()}
                      for name, by_n in evaluation.items()},
        "baselines_ci": {name: {n: {"lo": cell["lo"], "hi": cell["hi"], "n": cell["n"],
                                    "values": cell["values"]} for n, cell in by_n.items()}
                         for name, by_n in evaluation.items()},
        "metatest": {"n_measures": cfg.n_measures, "n_seen": cfg.n_seen,
                     "n_unseen": cfg.n_unseen, "seed": cfg.seed},
        "approximate": {k: v for k, v in APPROXIMATE_SOURCES.items() if k in evaluation},
    }


def describe_measure(measure) -> dict:
    """``{"mean", "cov"}`` of a Gaussian; a mixture adds ``"weights"``, ``"means"`` and
    ``"covs"`` of its components (``mean`` / ``cov`` are then its total moments); particles
    add ``"particles"`` (M), ``"points"`` and ``"smoothing"``."""
    out = {"mean": measure.mean.detach().double().tolist(),
           "cov": measure.cov.detach().double().tolist()}
    if hasattr(measure, "n_components") or hasattr(measure, "smoothing"):
        out.update(measure.to_dict())
    return out


def _nanmin(values) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return min(finite) if finite else math.nan


_PER_TRIAL_SCALARS = ("initial_error", "final_error", "best_error", "min_unseen_error",
                      "initial_seen_error", "final_seen_error", "reported_seen_error",
                      "seconds_per_step", "grad_seconds_per_step", "selection_seen_error")


def aggregate_trials(summaries: list[dict]) -> dict:
    """Summary over whole runs from the single-trial summaries (``summary.json`` of studies
    with ``trials = 1``, or the trials of one study): each table cell is the mean over trials
    of the trial's mean over repeats, with the 95 % Student-t interval over trials
    (``ci_over = "trials"``); scalar errors and timings are averaged, each trial is kept
    under ``per_trial``."""
    from ..report.metrics import mean_ci95

    per = list(summaries)
    if not per:
        raise ValueError("summaries must hold at least one trial summary, got none")
    out = dict(per[0])
    out.update(trials=len(per), ci_over="trials",
               per_trial=[{k: p.get(k) for k in ("trial", *_PER_TRIAL_SCALARS, "collapse",
                                                 "learned", "baselines")} for p in per],
               warnings=[f"trial {p['trial']}: {w}" for p in per for w in p["warnings"]])
    out.pop("trial")
    for key in _PER_TRIAL_SCALARS:   # None / NaN: not logged in that trial (eval_unseen=k)
        vals = [p[key] for p in per if p.get(key) is not None and math.isfinite(p[key])]
        out[key] = float(sum(vals) / len(vals)) if vals else None
    out["collapse"] = {"flagged_trials": [p["trial"] for p in per if p["collapse"]["flagged"]],
                       "flagged": any(p["collapse"]["flagged"] for p in per)}
    table, table_ci = {}, {}
    for name, by_n in per[0]["baselines"].items():
        table[name], table_ci[name] = {}, {}
        for n in by_n:
            vals = [p["baselines"][name][n] for p in per]
            if any(v is None for v in vals):
                table[name][n] = None
                table_ci[name][n] = {"lo": None, "hi": None, "n": 0, "values": []}
                continue
            ci = mean_ci95(vals)
            table[name][n] = ci["mean"]
            table_ci[name][n] = {"lo": ci["lo"], "hi": ci["hi"], "n": ci["n"], "values": vals}
    out["baselines"], out["baselines_ci"] = table, table_ci
    return out


def final_training_inputs(learned: dict, n: int, *, seed: int, trial: int = 0,
                          dtype: Any = "float32") -> torch.Tensor:
    """Inputs ``(n, d)`` float64 of the KRR the study reports for "optimized" at N = ``n``:
    ``n`` draws of the learned distribution (``summary["learned"]``: ``{"mean", "cov"}`` of a
    Gaussian, or a mixture's ``{"weights", "means", "covs", ...}``, in the study's ``dtype``)
    with the seed of repeat 0 of the evaluation of trial ``trial``."""
    from .._validation import resolve_dtype
    from ..measures import Gaussian, GaussianMixture
    from ..measures.empirical import ParticleMeasure
    from .evaluation import name_key, source_seed

    dt = resolve_dtype(dtype)
    if "points" in learned:
        measure = ParticleMeasure.from_dict(learned, dtype=dt)
    elif "weights" in learned:
        measure = GaussianMixture.from_dict(learned, dtype=dt)
    else:
        measure = Gaussian(torch.tensor(learned["mean"], dtype=dt),
                           torch.tensor(learned["cov"], dtype=dt), dtype=dt)
    g = torch.Generator().manual_seed(source_seed(_trial_seed(seed, trial, 2),
                                                  name_key("optimized"), n, 0))
    return measure.sample(n, generator=g).detach().to(torch.float64)


def _write_training_record(path: Path, cfg: BilevelStudyConfig, summary: dict,
                           problem: Any) -> None:
    """``model.pt``: the training set of the final KRR at the largest N (see the module
    docstring), labelled by ``problem``, for ``load_model`` to refit without the problem."""
    n = max(cfg.eval_n)
    x = final_training_inputs(summary["learned"], n, seed=cfg.seed, trial=cfg.trial_offset,
                              dtype=cfg.dtype)
    y = torch.as_tensor(problem(x)).detach().to(torch.float64)
    torch.save({"format": TRAINING_RECORD_FORMAT, "n": n, "x": x, "y": y,
                "bandwidth": float(cfg.bandwidth), "ridge": float(cfg.eval_ridge),
                "kernel": cfg.kernel}, path)


def read_training_record(path: str | Path) -> dict | None:
    """The ``model.pt`` of a bilevel run (``{"n", "x", "y", "bandwidth", "ridge",
    "kernel"}``, read weights-only), or None when there is no such file.

    Raises ``ValueError`` naming the file when it is not such a record.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        rec = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- torch raises several types for foreign files
        raise ValueError(f"{str(path)!r} is not readable as a weights-only file "
                         f"({type(exc).__name__})") from None
    ok = (isinstance(rec, dict) and rec.get("format") == TRAINING_RECORD_FORMAT
          and isinstance(rec.get("n"), int) and isinstance(rec.get("x"), torch.Tensor)
          and isinstance(rec.get("y"), torch.Tensor) and rec["x"].ndim == 2
          and rec["x"].shape[0] == rec["n"] == rec["y"].shape[0])
    if not ok:
        raise ValueError(f"{str(path)!r} is not a bilevel training record "
                         f"({TRAINING_RECORD_FORMAT!r} with n, x (n, d), y (n, ...))")
    return rec
