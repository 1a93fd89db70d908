"""A complete AMA study (paper §5, SM F.3-F.4; SPEC §4): meta-test family -> AMA runs
(repeats) -> baselines at several N -> figures -> summary, in a run folder::

    out/config.toml        resolved AMAStudyConfig
    out/metrics.jsonl      one record per AMA iteration and repeat
    out/evaluation.jsonl   one record per guard fit (source, N, repeat, seen and unseen error)
    out/compare.jsonl      pool problems (burgers) with ``compare``: one record per
                           active-learning round (strategy, trial, N, error)
    out/summary.json       per-iteration in-loop OOD error / AMA loss (mean, 95 % CI), the
                           guard (fresh models on learned / initial / barycenter / mixture,
                           ``recommended`` and its margin), Lipschitz estimates, learned
                           parameters, timings; pool problems also ``compare``, the per-N
                           table of every method (distribution and active-learning baselines)
    out/model.pt           the final model of repeat 0 (``load_model(out)``; a DeepONet also
                           ``DeepONet.load``), its constructor arguments next to the weights
    out/particles.pt       radiative (particle AMA): ``{start: [learned particles (M, d) per
                           repeat]}`` (``torch.load``); summary.json then also holds
                           ``knudsen``, ``particle_j`` (J along the flow), ``reductions`` and,
                           per start, ``starts`` (``--particle-start both`` runs two)
    out/figures/*.png

Presets: ``ci`` (under a minute), ``small`` (under 10 minutes on 2 cores), ``paper`` (the
SPEC's sizes). Settings merge as preset < ``--config`` TOML < flags.
"""

from __future__ import annotations

import contextlib
import copy
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .._progress import ProgressBars
from ..report.runfolder import StudyResult

__all__ = ["AMAStudyConfig", "AMA_PRESETS", "resolve_ama_config", "run_ama_study", "recommend"]

#: Training settings of a model other than the DeepONet, over the problem's preset. The FNO:
#: small batches (a step's cost grows with the batch: at an equal CPU budget on Darcy 24 x 24,
#: batches of 10 beat 5, 20 and 40) and an inverse-time decay of the learning rate (issue 26,
#: benchmarks/bench_models.py); ``paper`` keeps the FNO paper's batches of 20. Layering:
#: problem preset < these < TOML < flags.
AMA_MODEL_TRAINING: dict[str, dict[str, dict[str, Any]]] = {
    "fno": {"ci": {},
            "small": {"batch_size": 10, "decay_rate": 1.0, "decay_steps": 500},
            "paper": {"batch_size": 20, "decay_rate": 1.0, "decay_steps": 1000}},
}

#: Preset settings per problem (SPEC §4 for ``paper``; scaled down for CPU otherwise).
AMA_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "ntd": {
        "ci": {"n": 12, "n_measures": 20, "n_seen": 4, "n_unseen": 8, "n_train": 100,
               "n_opt": 50, "iterations": 2, "steps": 300, "batch_size": 50, "eval_every": 50,
               "patience": 0, "retrain_rounds": 1, "retrain_steps": 100,
               "de": {"popsize": 8, "tol": 1e-8, "maxiter": 15},
               "adam": {"lr": 0.05, "steps": 5, "rounds": 1}, "eval_n": [100],
               "repeats": 2, "lipschitz_samples": 2, "lipschitz_iterations": 15},
        "small": {"n": 24, "n_measures": 20, "n_seen": 10, "n_unseen": 40, "n_train": 400,
                  "n_opt": 200, "iterations": 3, "steps": 1500, "batch_size": 100,
                  "eval_every": 100, "patience": 0, "retrain_rounds": 1, "retrain_steps": 500,
                  "de": {"popsize": 15, "tol": 1e-10, "maxiter": 40},
                  "adam": {"lr": 0.05, "steps": 20, "rounds": 2}, "eval_n": [400],
                  "repeats": 3, "lipschitz_samples": 4, "lipschitz_iterations": 20},
        "paper": {"n": 128, "n_measures": 20, "n_seen": 100, "n_unseen": 500, "n_train": 1000,
                  "n_opt": 1000, "iterations": 10, "steps": 5000, "batch_size": 1000,
                  "eval_every": 100, "patience": 0, "retrain_rounds": 10, "retrain_steps": 1000,
                  "de": {"popsize": 30, "tol": 1e-12, "maxiter": 1000},
                  "adam": {"lr": 1e-2, "steps": 500, "rounds": 3},
                  "eval_n": [250, 500, 1000], "repeats": 5, "lipschitz_samples": 8,
                  "lipschitz_iterations": 30},
    },
    "darcy": {
        "ci": {"n": 12, "n_measures": 20, "n_seen": 3, "n_unseen": 6, "n_train": 60,
               "n_opt": 16, "iterations": 2, "steps": 300, "batch_size": 30, "eval_every": 50,
               "patience": 0, "retrain_rounds": 1, "retrain_steps": 100,
               "adam": {"lr": 0.05, "steps": 10, "rounds": 2}, "eval_n": [60], "repeats": 2,
               "lipschitz_samples": 2, "lipschitz_iterations": 10},
        "small": {"n": 24, "n_measures": 20, "n_seen": 5, "n_unseen": 20, "n_train": 200,
                  "n_opt": 40, "iterations": 3, "steps": 1000, "batch_size": 100,
                  "eval_every": 100, "patience": 0, "retrain_rounds": 1, "retrain_steps": 300,
                  "adam": {"lr": 0.05, "steps": 20, "rounds": 2}, "eval_n": [200],
                  "repeats": 3, "lipschitz_samples": 3, "lipschitz_iterations": 15},
        "paper": {"n": 64, "n_measures": 20, "n_seen": 50, "n_unseen": 200, "n_train": 200,
                  "n_opt": 200, "iterations": 10, "steps": 5000, "batch_size": 200,
                  "eval_every": 100, "patience": 0, "retrain_rounds": 2, "retrain_steps": 1000,
                  "adam": {"lr": 1e-2, "steps": 25, "rounds": 2}, "eval_n": [50, 100, 200],
                  "repeats": 13, "lipschitz_samples": 8, "lipschitz_iterations": 30},
    },
    # one test distribution (the pool, K = 1); eval_n is also the active-learning schedule
    # (its first size the random start); n_steps of the solver follow n (burgers_steps)
    "burgers": {
        "ci": {"n": 32, "n_measures": 1, "n_pool": 40, "n_seen": 5, "n_unseen": 10,
               "n_train": 20, "n_opt": 10, "iterations": 1, "steps": 100, "batch_size": 10,
               "eval_every": 25, "patience": 0, "retrain_rounds": 0, "retrain_steps": 50,
               "lbfgsb": {"maxiter": 5}, "eval_n": [10, 20],
               "repeats": 2, "lipschitz_samples": 2, "lipschitz_iterations": 5},
        "small": {"n": 128, "n_measures": 1, "n_pool": 600, "n_seen": 50, "n_unseen": 150,
                  "n_train": 200, "n_opt": 100, "iterations": 3, "steps": 1000,
                  "batch_size": 50, "eval_every": 100, "patience": 0, "retrain_rounds": 1,
                  "retrain_steps": 500, "lbfgsb": {"maxiter": 50},
                  "eval_n": [10, 50, 100, 200], "repeats": 3, "lipschitz_samples": 3,
                  "lipschitz_iterations": 15},
        "paper": {"n": 8192, "n_measures": 1, "n_pool": 1843, "n_seen": 55, "n_unseen": 150,
                  "n_train": 1843, "n_opt": 1843, "iterations": 10, "steps": 10000,
                  "batch_size": 128, "lr": 1e-3, "decay_steps": 2000, "decay_rate": 0.9,
                  "val_fraction": 0.1, "eval_every": 100, "patience": 10,
                  "retrain_rounds": 0, "retrain_steps": 1000, "lbfgsb": {"maxiter": 1},
                  "eval_n": [10, *range(50, 1001, 50)], "repeats": 10,
                  "branch_hidden": [1024, 512, 256, 128], "trunk_hidden": [128, 128, 128, 128],
                  "width": 128, "lipschitz_samples": 8, "lipschitz_iterations": 30},
    },
    # particles: n_train is the number M of particles (the particles are the training set);
    # n_opt is unused (part1 averages over the particles); eval_n <= M (subsets of particles)
    "radiative": {
        "ci": {"n": 11, "n_modes": 3, "n_measures": 3, "n_seen": 3, "n_unseen": 6,
               "n_train": 12, "n_opt": 12, "iterations": 2, "steps": 150, "batch_size": 12,
               "eval_every": 50, "patience": 0, "retrain_rounds": 0, "retrain_steps": 50,
               "flow": {"eta": 3e-3, "shrink": "divide", "tol": 1e-8, "max_steps": 3},
               "eval_n": [6, 12], "repeats": 1, "lipschitz_samples": 2,
               "lipschitz_iterations": 5, "branch_hidden": [32, 32], "trunk_hidden": [32, 32],
               "width": 16},
        "small": {"n": 31, "n_modes": 10, "n_measures": 3, "n_seen": 10, "n_unseen": 40,
                  "n_train": 120, "n_opt": 120, "iterations": 3, "steps": 1500,
                  "batch_size": 30, "eval_every": 100, "patience": 0, "retrain_rounds": 1,
                  "retrain_steps": 500,
                  "flow": {"eta": 3e-3, "shrink": "divide", "tol": 1e-6, "max_steps": 15},
                  "eval_n": [30, 60, 120], "repeats": 2, "lipschitz_samples": 3,
                  "lipschitz_iterations": 10, "branch_hidden": [100, 100, 64],
                  "trunk_hidden": [100, 100, 64], "width": 32},
        "paper": {"n": 51, "n_modes": 20, "n_measures": 3, "n_seen": 50, "n_unseen": 200,
                  "n_train": 120, "n_opt": 120, "iterations": 10, "steps": 5000,
                  "batch_size": 120, "lr": 1e-3, "decay_steps": 1000, "decay_rate": 0.5,
                  "eval_every": 100, "patience": 0, "retrain_rounds": 0,
                  "retrain_steps": 1000,
                  "flow": {"eta": 1e-6, "shrink": "divide", "tol": 1e-6, "max_steps": 50},
                  "eval_n": [30, 60, 120], "repeats": 10, "lipschitz": 1.0,
                  "lipschitz_samples": 8, "lipschitz_iterations": 30,
                  "branch_hidden": [100, 100, 100, 64], "trunk_hidden": [100, 100, 100, 64],
                  "width": 32},
    },
}


def _user_presets() -> dict[str, dict[str, Any]]:
    """Presets of user field problems: Darcy's sizes (Adam) with NtD's differential-evolution
    settings (used when the problem is not differentiable); the grid is the problem's."""
    out = {}
    for name in ("ci", "small", "paper"):
        p = copy.deepcopy(AMA_PRESETS["darcy"][name])
        p.pop("n")
        p["de"] = copy.deepcopy(AMA_PRESETS["ntd"][name]["de"])
        out[name] = p
    return out


class AMAStudyConfig(BaseModel):
    """Settings of one AMA study (every field may be set in a TOML file or by a flag)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    problem: str = Field("ntd", description="ntd | darcy | a user problem: 'pkg.mod:factory', "
                         "'file.py:factory' or an installed plugin name")
    problem_options: dict[str, Any] = Field(
        default_factory=dict, description="keyword options of a user problem's factory")
    bounds: Optional[list[float]] = Field(
        None, description="[low, high] search interval of theta for differential evolution "
                          "(user problems: default the meta-test means' range widened)")
    mean_range: Optional[list[float]] = Field(
        None, description="user field problems: [low, high] of the meta-test means (default "
                          "[0, 1])")
    preset: Literal["ci", "small", "paper"] = "ci"
    n: int = Field(12, description="grid nodes per side including the boundary (built-in "
                                   "problems; a user problem has its own grid)")
    n_modes: Optional[int] = Field(None, description="KLE modes (NtD: 1-D; Darcy: per side)")
    n_measures: int = Field(20, description="K meta-test measures")
    n_seen: int = 4
    n_unseen: int = 8
    family_seed: int = Field(0, description="seed of the meta-test family (fixed across repeats)")
    n_pool: Optional[int] = Field(
        None, description="burgers: rows of the labelled test pool (active-learning candidates, "
                          "Q fitted to them); n_seen + n_unseen more rows are held out and "
                          "scored (default 1843, the paper's)")
    compare: list[str] = Field(
        default_factory=list, description="active-learning baselines on the pool (burgers): "
                                          "any of qbc, coreset, random; each grows from "
                                          "eval_n[0] random pool rows through eval_n, "
                                          "repeats trials")
    n_train: int = Field(100, description="training samples N per AMA iteration")
    n_opt: int = Field(50, description="fixed samples of nu for part1 of J")
    iterations: int = 2
    model: str = Field("deeponet", description="deeponet | fno (needs wheretolearn[fno]) | a "
                       "user factory 'pkg.mod:factory' or 'file.py:factory' "
                       "(wheretolearn.models.registry)")
    model_options: dict[str, Any] = Field(
        default_factory=dict, description="init arguments of the model over its preset (fno: "
                                          "n_modes, hidden_channels, n_layers, ...)")
    branch_hidden: Optional[list[int]] = None
    trunk_hidden: Optional[list[int]] = None
    width: Optional[int] = Field(None, description="p, the DeepONet feature width")
    normalize: bool = Field(True, description="standardise the model's inputs and outputs "
                                              "pointwise with statistics of its training split "
                                              "(kept in model.pt)")
    steps: int = 300
    lr: float = 1e-3
    decay_steps: int = 1000
    decay_rate: float = 0.0
    batch_size: int = 50
    val_fraction: float = 0.2
    eval_every: int = 50
    patience: int = 0
    retrain_rounds: int = 1
    retrain_steps: int = 100
    warm_start: bool = True
    lipschitz: Union[Literal["auto"], float] = "auto"
    lipschitz_model: Optional[Union[Literal["auto"], float]] = Field(
        None, description="L' of the model; default: the same as lipschitz")
    safety: float = 1.5
    lipschitz_samples: int = 2
    lipschitz_iterations: int = 15
    update: Optional[Literal["de", "adam", "de+adam", "lbfgsb", "particles"]] = None
    family: Literal["single", "mixture"] = Field(
        "single", description="training family nu(theta): 'single' (one parametric field) or "
                              "'mixture' (a uniform mixture of K = n_measures fields of that "
                              "family, started at the Q_j's own parameters; built-in problems)")
    mixture_bound: Literal["component", "coupling"] = Field(
        "component", description="mixture family: J bounds each Q_j through its nearest "
                                 "component ('component') or the whole mixture with the "
                                 "mixture-coupling W2 bound ('coupling'); both upper bounds")
    theta_tol: float = Field(1e-4, description="stop when an update moves theta by less "
                                                "(max over components)")
    offset_sd: Optional[Union[Literal["family"], float]] = Field(
        None, description="Darcy: spread of the random constant offset of log a ('family' = "
                          "sd of the meta-test means, the default; 0 = none)")
    learn_spectrum: Optional[bool] = Field(
        None, description="Darcy: learn the KLE spectrum too (default true; false = the mean "
                          "only, no solves in the update)")
    de: dict[str, Any] = Field(default_factory=dict)
    adam: dict[str, Any] = Field(default_factory=dict)
    lbfgsb: dict[str, Any] = Field(default_factory=dict,
                                   description="L-BFGS-B update options (maxiter)")
    flow: dict[str, Any] = Field(
        default_factory=dict, description="radiative: particle gradient flow options eta, "
                                          "shrink ('divide' by 10, the authors' code, or "
                                          "'halve'), tol on ||eta grad||, max_steps")
    knudsen: Optional[float] = Field(
        None, description="radiative: Knudsen number eps (the paper's 0.125, 2, 8; default "
                          "0.125)")
    particle_start: Optional[Literal["paper", "mixture", "both"]] = Field(
        None, description="radiative: initial particles, 'paper' (1e-3 N(0, I)), 'mixture' "
                          "(samples of the mixture of the Q_k) or 'both' (two studies in one "
                          "run folder; default paper)")
    w2_samples: Optional[int] = Field(
        None, description="radiative: fixed samples of each Q_k for W2 (default n_train)")
    eval_n: list[int] = Field(default_factory=lambda: [100])
    repeats: int = 2
    seed: int = 0
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "float64"] = "float32"
    num_threads: Optional[int] = None
    cache_dir: Optional[str] = Field(None, description="labelled data sets (zarr); default memory")
    workers: int = Field(0, description="Dask workers for labelling (0: in process)")
    scheduler: Optional[str] = None
    cluster: Optional[dict[str, Any]] = Field(
        None, description="the online engine's [cluster] table; labelling runs there")

    @field_validator("problem")
    @classmethod
    def _known_problem(cls, v: str) -> str:
        from ..problems.plugins import canonical_spec, entry_point_problems, is_import_spec
        from .ama_problems import available_ama_problems

        if v in available_ama_problems():
            return v
        if is_import_spec(v):
            return canonical_spec(v)
        if v in entry_point_problems():
            return v
        raise ValueError(f"not an AMA problem; choose one of "
                         f"{', '.join(available_ama_problems())}, an installed plugin or an "
                         "import path 'package.module:factory' (docs/user_solver.md)")

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        from ..models.registry import MODELS
        from ..problems.plugins import canonical_spec, is_import_spec

        if v in MODELS:
            return v
        if is_import_spec(v):
            return canonical_spec(v)
        raise ValueError(f"not a model; choose one of {', '.join(MODELS)} or a factory by "
                         "import path 'package.module:factory' / 'file.py:factory'")

    @field_validator("compare")
    @classmethod
    def _known_strategies(cls, v: list[str]) -> list[str]:
        from .ama_compare import check_pool_baselines

        return check_pool_baselines(v)

    @field_validator("bounds", "mean_range")
    @classmethod
    def _interval(cls, v: Optional[list[float]]) -> Optional[list[float]]:
        if v is not None and (len(v) != 2 or not all(math.isfinite(x) for x in v)
                              or not v[0] < v[1]):
            raise ValueError("must be two finite numbers [low, high] with low < high")
        return v

    @field_validator("n")
    @classmethod
    def _grid(cls, v: int) -> int:
        if v < 5:
            raise ValueError("must be >= 5")
        return v

    @field_validator("n_measures", "n_seen", "n_unseen", "n_train", "n_opt", "steps",
                     "batch_size", "eval_every", "retrain_steps", "repeats", "decay_steps",
                     "lipschitz_samples", "lipschitz_iterations")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be a positive integer")
        return v

    @field_validator("iterations", "patience", "retrain_rounds", "seed", "family_seed", "workers")
    @classmethod
    def _nonnegative(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be a non-negative integer")
        return v

    @field_validator("lr", "safety")
    @classmethod
    def _positive_float(cls, v: float) -> float:
        if not math.isfinite(v) or v <= 0:
            raise ValueError("must be a finite number > 0")
        return v

    @field_validator("lipschitz", "lipschitz_model")
    @classmethod
    def _lipschitz(cls, v):
        if isinstance(v, float) and (not math.isfinite(v) or v < 0):
            raise ValueError("must be 'auto' or a finite number >= 0")
        return v

    @field_validator("eval_n")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if not v or any(n < 2 for n in v):
            raise ValueError("must be a non-empty list of sample sizes >= 2")
        return v

    @field_validator("num_threads")
    @classmethod
    def _threads(cls, v: Optional[int]) -> Optional[int]:
        if v is not None and v < 1:
            raise ValueError("must be a positive integer")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v == "cuda" and not torch.cuda.is_available():
            raise ValueError("cuda was asked for but torch sees no CUDA device")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "AMAStudyConfig":
        if self.update == "de" and self.problem == "darcy" and self.bounds is None:
            raise ValueError("update 'de' needs a bounded parameter: give bounds = [low, high] "
                             "for the Darcy mean")
        if self.problem != "darcy" and (self.offset_sd is not None
                                        or self.learn_spectrum is not None):
            raise ValueError("offset_sd and learn_spectrum are Darcy settings")
        if isinstance(self.offset_sd, float) and not (math.isfinite(self.offset_sd)
                                                      and self.offset_sd >= 0):
            raise ValueError("offset_sd must be 'family' or a finite number >= 0")
        builtin = self.problem in AMA_PRESETS
        if self.family == "mixture" and not builtin:
            raise ValueError("family 'mixture' is for the built-in problems (ntd, darcy)")
        if self.family == "mixture" and self.update not in (None, "adam"):
            raise ValueError("the mixture family is updated by Adam (update = 'adam')")
        if self.model != "deeponet" and (self.branch_hidden or self.trunk_hidden or self.width):
            raise ValueError(f"branch_hidden, trunk_hidden and width are DeepONet settings; "
                             f"give the {self.model!r} model's through model_options")
        if builtin and (self.problem_options or self.mean_range is not None):
            raise ValueError(f"problem_options and mean_range are for user problems, not "
                             f"{self.problem!r}")
        self._check_pool()
        self._check_particles()
        return self

    def _check_particles(self) -> None:
        """Settings of particle AMA (radiative transport)."""
        particles = self.problem == "radiative"
        if not particles:
            for key in ("knudsen", "particle_start", "w2_samples"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} is a setting of the radiative problem, not "
                                     f"{self.problem!r}")
            if self.flow:
                raise ValueError(f"flow is the particle update's setting (radiative), not "
                                 f"{self.problem!r}'s")
            return
        from .ama_particles import check_flow

        check_flow(dict(self.flow))
        if self.knudsen is not None and not (math.isfinite(self.knudsen) and self.knudsen > 0):
            raise ValueError(f"knudsen must be a finite number > 0, got {self.knudsen}")
        if self.w2_samples is not None and self.w2_samples < 1:
            raise ValueError(f"w2_samples must be a positive integer, got {self.w2_samples}")
        if self.update not in (None, "particles"):
            raise ValueError(f"radiative AMA moves particles (update = 'particles'), got "
                             f"{self.update!r}")
        if self.family != "single":
            raise ValueError("radiative AMA has one family (particles); family must be 'single'")
        if max(self.eval_n) > self.n_train:
            raise ValueError(f"radiative: eval_n must not exceed n_train = {self.n_train} (the "
                             f"number of particles; smaller N are subsets of them), got "
                             f"{self.eval_n}")

    def _check_pool(self) -> None:
        """Settings of problems whose test data is one labelled pool (burgers)."""
        from .ama_problems import POOL_AMA_PROBLEMS

        pooled = self.problem in POOL_AMA_PROBLEMS
        if self.compare and not pooled:
            raise ValueError(f"compare runs active learning on a labelled pool; only "
                             f"{', '.join(POOL_AMA_PROBLEMS)} has one, not {self.problem!r}")
        if self.n_pool is not None and not pooled:
            raise ValueError(f"n_pool is a setting of {', '.join(POOL_AMA_PROBLEMS)}")
        if not pooled:
            return
        if self.n_measures != 1:
            raise ValueError(f"{self.problem} has one test distribution (its pool): n_measures "
                             f"must be 1, got {self.n_measures}")
        pool = 1843 if self.n_pool is None else self.n_pool
        if pool < 2:
            raise ValueError(f"n_pool must be at least 2, got {pool}")
        if self.compare:
            if any(b <= a for a, b in zip(self.eval_n, self.eval_n[1:])):
                raise ValueError(f"compare: eval_n is the active-learning schedule and must be "
                                 f"strictly increasing, got {self.eval_n}")
            if self.eval_n[-1] > pool:
                raise ValueError(f"compare: the largest eval_n ({self.eval_n[-1]}) exceeds the "
                                 f"pool (n_pool = {pool})")


def resolve_ama_config(*layers: dict[str, Any] | None) -> AMAStudyConfig:
    """Merge layers (later wins) on top of the preset of the problem they name."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in (layer or {}).items() if v is not None})
    problem = merged.get("problem", "ntd")
    preset = merged.get("preset", "ci")
    presets = AMA_PRESETS.get(problem) if isinstance(problem, str) else None
    if presets is None:
        presets = _user_presets()       # a user problem (AMAStudyConfig checks the name)
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of ci, small, paper")
    base = copy.deepcopy(presets[preset])
    if merged.get("model", "deeponet") != "deeponet":
        for key in ("branch_hidden", "trunk_hidden", "width"):
            base.pop(key, None)        # a preset's DeepONet sizes are not another model's
    base.update(AMA_MODEL_TRAINING.get(merged.get("model"), {}).get(preset, {}))
    flow = {**base.get("flow", {})}
    for layer in layers:                # flow options merge key by key (--eta-shrink alone)
        flow.update((layer or {}).get("flow") or {})
    base.update(merged)
    if flow:
        base["flow"] = flow
    return AMAStudyConfig(**base)


# ----------------------------------------------------------------------------- pieces
def _ama_config(cfg: AMAStudyConfig, setup, repeat: int):
    from ..models.operator_training import TrainConfig
    from .ama import AMAConfig

    train = TrainConfig(steps=cfg.steps, lr=cfg.lr, decay_steps=cfg.decay_steps,
                        decay_rate=cfg.decay_rate, batch_size=cfg.batch_size,
                        val_fraction=cfg.val_fraction, eval_every=cfg.eval_every,
                        patience=cfg.patience)
    lip_model = cfg.lipschitz if cfg.lipschitz_model is None else cfg.lipschitz_model
    kw: dict[str, Any] = {}
    if cfg.de:
        kw["de"] = dict(cfg.de)
    if cfg.adam:
        kw["adam"] = dict(cfg.adam)
    if cfg.lbfgsb:
        kw["lbfgsb"] = dict(cfg.lbfgsb)
    if cfg.flow:
        kw["flow"] = dict(cfg.flow)
    return AMAConfig(n_train=cfg.n_train, iterations=cfg.iterations, n_opt=cfg.n_opt, train=train,
                     retrain_rounds=cfg.retrain_rounds, retrain_steps=cfg.retrain_steps,
                     warm_start=cfg.warm_start, lipschitz_true=cfg.lipschitz,
                     lipschitz_model=lip_model, safety=cfg.safety,
                     lipschitz_samples=cfg.lipschitz_samples,
                     lipschitz_iterations=cfg.lipschitz_iterations,
                     update=cfg.update or setup.update, seed=cfg.seed + repeat,
                     theta_tol=cfg.theta_tol, **kw)


def _model_grid(cfg: AMAStudyConfig, setup):
    from ..models.registry import ModelGrid

    return ModelGrid(tuple(setup.problem.input_shape), tuple(setup.problem.output_shape),
                     setup.points, cfg.problem)


def _model_init_args(cfg: AMAStudyConfig, grid) -> dict[str, Any]:
    """The model's preset init arguments, the study's normalisation and DeepONet sizes, then
    ``model_options`` (a user factory gets ``model_options`` alone)."""
    from ..models.registry import is_builtin_model, preset_init_args

    if not is_builtin_model(cfg.model):
        return dict(cfg.model_options)
    args = preset_init_args(cfg.model, cfg.preset, grid)
    args["normalize"] = cfg.normalize
    if cfg.model == "deeponet":
        args.update({k: v for k, v in (("branch_hidden", cfg.branch_hidden),
                                       ("trunk_hidden", cfg.trunk_hidden),
                                       ("width", cfg.width)) if v})
    args.update(cfg.model_options)
    return args


def _model_factory(cfg: AMAStudyConfig, setup):
    """``(seed -> fresh model, architecture record)`` through the model registry; the model
    is built once here so that a model that does not fit the problem, a missing extra or a
    bad option fails before any labelling."""
    from ..models.registry import build_model

    grid = _model_grid(cfg, setup)
    args = _model_init_args(cfg, grid)

    def factory(seed: int):
        return build_model(cfg.model, grid, seed=seed, dtype=cfg.dtype, **args).to(cfg.device)

    probe = factory(cfg.seed)
    arch = {"model": cfg.model, "init_args": args,
            "parameters": sum(p.numel() * (2 if p.is_complex() else 1)
                              for p in probe.parameters())}
    if cfg.model == "deeponet":
        arch.update(branch=probe.config["branch"], trunk=probe.config["trunk"],
                    normalize=cfg.normalize)
    return factory, arch


@contextlib.contextmanager
def _threads(n: Optional[int]):
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _labelling_backend(cfg: AMAStudyConfig):
    """``(cache_dir, workers, scheduler)``: in process, on a LocalCluster, at an address,
    or on the online engine's cluster layer (``[cluster]`` table, e.g. Slurm)."""
    with contextlib.ExitStack() as stack:
        dask = cfg.workers > 0 or cfg.scheduler is not None or cfg.cluster is not None
        cache = cfg.cache_dir
        if dask and cache is None:
            cache = stack.enter_context(tempfile.TemporaryDirectory(prefix="wtl-ama-"))
        scheduler = cfg.scheduler
        if cfg.cluster is not None and scheduler is None:
            from ..cluster import ClusterConfig, open_cluster

            handle = stack.enter_context(open_cluster(ClusterConfig(**cfg.cluster),
                                                      n_workers=max(1, cfg.workers)))
            handle.wait_for_workers(1, timeout=300)
            scheduler = handle.client.scheduler.address
        yield cache, (cfg.workers if dask else 0), scheduler


def run_ama_study(config: AMAStudyConfig | dict, out_dir: str | Path, *, progress: bool = True,
                  overwrite: bool = False, console=None) -> StudyResult:
    """Run ``repeats`` AMA runs and the baselines; write the run folder; return its
    :class:`~wheretolearn.report.runfolder.StudyResult` (config, summary, run folder).

    The folder appears only when everything succeeded.
    """
    from ..models.registry import save_model
    from ..report.runfolder import RunFolder
    from .ama_problems import ama_setup
    from .labelling import Labeller
    from .operator_metatest import MetaTestDraws, make_operator_metatest

    cfg = config if isinstance(config, AMAStudyConfig) else AMAStudyConfig(**config)
    run = RunFolder(out_dir, overwrite=overwrite)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    extra = ({"offset_sd": cfg.offset_sd, "learn_spectrum": cfg.learn_spectrum}
             if cfg.problem == "darcy" else {})
    if cfg.family != "single":
        extra.update(family=cfg.family, mixture_bound=cfg.mixture_bound)
    if cfg.n_pool is not None:
        extra["n_pool"] = cfg.n_pool
    starts = _particle_starts(cfg)

    def build_setup(start):
        more = {} if start is None else _particle_options(cfg, start)
        return ama_setup(cfg.problem, n=cfg.n, n_modes=cfg.n_modes,
                         problem_options=cfg.problem_options or None, bounds=cfg.bounds,
                         mean_range=cfg.mean_range, **extra, **more)

    setup = build_setup(starts[0])
    factory, arch = _model_factory(cfg, setup)
    with _threads(cfg.num_threads), _labelling_backend(cfg) as (cache, workers, scheduler), \
            run, ProgressBars(progress, console=console) as bar:
        run.write_config_toml(cfg.model_dump())
        labeller = Labeller(setup.problem, cache_dir=cache, workers=workers, scheduler=scheduler)
        if setup.metatest is not None:           # one labelled pool (burgers)
            adv = bar.task(f"label the pool {cfg.problem}", 1).advance
            metatest = setup.metatest(labeller, n_seen=cfg.n_seen, n_unseen=cfg.n_unseen,
                                      seed=cfg.family_seed, output_weights=setup.output_weights,
                                      progress=adv)
        else:
            measures, params = setup.family(cfg.n_measures, cfg.family_seed)
            adv = bar.task(f"label meta-test {cfg.problem}", len(measures)).advance
            draws = MetaTestDraws(cfg.n_seen, cfg.n_unseen, seed=cfg.family_seed)
            metatest = make_operator_metatest(labeller, measures, draws, params=params,
                                              output_weights=setup.output_weights, progress=adv)
        shared: dict = {}          # guard errors that do not depend on the start (mixture)
        per_start = {}
        for start in starts:
            w0, c0 = time.perf_counter(), time.process_time()
            st_setup = setup if start == starts[0] else build_setup(start)
            results = _run_repeats(cfg, st_setup, metatest, labeller, factory, bar, run, start)
            evaluation = _evaluate(cfg, st_setup, metatest, labeller, factory, results, bar, run,
                                   shared=shared, start=start)
            st_summary = _summary(cfg, st_setup, results, evaluation, arch, metatest, labeller)
            if start is not None:       # this start's AMA runs and guard (shared fits once)
                st_summary["seconds_start"] = time.perf_counter() - w0
                st_summary["cpu_seconds_start"] = time.process_time() - c0
            per_start[start] = (st_summary, results, st_setup)
        summary, results, setup = per_start[starts[0]]
        if starts[0] is not None:
            summary["starts"] = {st: {k: v for k, v in sm.items()
                                      if k not in ("history", "metatest", "architecture")}
                                 for st, (sm, _, _) in per_start.items()}
            summary["reductions"] = {st: sm["reductions"] for st, (sm, _, _) in per_start.items()}
            torch.save({st: [res.theta for res in rs] for st, (_, rs, _) in per_start.items()},
                       run.file("particles.pt"))
        if setup.metatest is not None:
            summary["compare"] = _compare(cfg, setup, metatest, factory, evaluation, bar, run)
        save_model(results[0].model, run.file("model.pt"))
        from ..report.ama_figures import plot_ama_figures

        summary["figures"] = plot_ama_figures(run, summary, setup, metatest, results[0])
        summary["seconds"] = time.perf_counter() - t_start
        summary["cpu_seconds"] = time.process_time() - cpu_start
        run.write_summary(summary)
    return StudyResult(cfg, summary, Path(run.out))


def _particle_starts(cfg: AMAStudyConfig) -> list:
    """The particle starts one study runs (``[None]`` for a parametric problem)."""
    if cfg.problem != "radiative":
        return [None]
    start = cfg.particle_start or "paper"
    return ["paper", "mixture"] if start == "both" else [start]


def _particle_options(cfg: AMAStudyConfig, start: str) -> dict:
    """``ama_setup`` options of the radiative problem for one start."""
    return {"knudsen": 0.125 if cfg.knudsen is None else cfg.knudsen, "particle_start": start,
            "n_particles": cfg.n_train, "w2_samples": cfg.w2_samples,
            "start_seed": cfg.family_seed}


def _run_repeats(cfg, setup, metatest, labeller, factory, bar, run, start) -> list:
    """``cfg.repeats`` AMA runs of one setup; every iteration's record goes to metrics.jsonl
    (with its ``start`` for particle AMA)."""
    from .ama import run_ama

    tag = {} if start is None else {"start": start}
    label = "" if start is None else f" ({start} start)"
    results = []
    for r in range(cfg.repeats):
        acfg = _ama_config(cfg, setup, r)
        adv = bar.task(f"AMA {cfg.problem}{label} repeat {r + 1}/{cfg.repeats}",
                       cfg.iterations + 1).advance

        def on_iteration(rec: dict, r=r, adv=adv) -> None:
            run.append_metrics({"repeat": r, **tag, **rec})
            adv(info=f"ood {rec['ood_error']:.4f}  J {rec['ama_loss']:.4g}")

        results.append(run_ama(setup, metatest, acfg, labeller, model_factory=factory,
                               callback=on_iteration))
    return results


def _compare(cfg, setup, metatest, factory, evaluation, bar, run) -> dict:
    """The per-N table of every method on a pool problem: the guard's distribution sources
    and the active-learning baselines ``cfg.compare`` (:mod:`.ama_compare`), each round
    also appended to ``compare.jsonl``."""
    from .ama_compare import ComparisonPlan, comparison_table, run_pool_comparison

    pool = {}
    if cfg.compare:
        schedule = list(cfg.eval_n)
        adv = bar.task(f"active learning {', '.join(cfg.compare)}",
                       len(cfg.compare) * cfg.repeats * len(schedule)).advance

        def on_round(name, trial, rec):
            run.append_metrics({"strategy": name, "trial": trial, "n": rec.n,
                                "error": rec.error, "errors": rec.errors,
                                "seconds_train": rec.train_seconds,
                                "seconds_query": rec.query_seconds}, name="compare.jsonl")
            adv(info=f"{name} N={rec.n}: {rec.error:.4f}")

        pool = run_pool_comparison(cfg.compare, setup=setup, metatest=metatest,
                                   model_factory=factory,
                                   train_config=_ama_config(cfg, setup, 0).train,
                                   plan=ComparisonPlan(schedule, trials=cfg.repeats,
                                                       seed=cfg.seed),
                                   on_round=on_round)
    table = comparison_table(list(cfg.eval_n), evaluation["unseen"], pool)
    table["trials"] = cfg.repeats
    table["labels"] = {"learned": "AMA-learned distribution, sampled and labelled by the solver",
                       "initial": "initial distribution",
                       "mixture": "the Gaussian fitted to the pool (K = 1)",
                       **{name: f"active learning on the pool: {name}" for name in pool}}
    return table


def _sources(cfg, setup, metatest, result) -> dict:
    """The distributions the guard compares: the learned ``nu``, the initial one, the W2
    barycenter of the ``Q_j`` (when the family is Gaussian on one basis) and their mixture
    (with one ``Q``, e.g. Burgers' fitted Gaussian, ``Q`` itself)."""
    from ..measures import Mixture
    from .ama_problems import barycenter_field

    out = {"learned": result.learned, "initial": setup.build(setup.theta0)}
    if getattr(setup, "basis", None) is not None:
        out["barycenter"] = barycenter_field(setup.basis, metatest.measures, center=setup.center)
    out["mixture"] = (Mixture(metatest.measures) if len(metatest.measures) > 1
                      else metatest.measures[0])
    return out


#: Guard sources that do not depend on the training distribution's start (reused across the
#: particle starts of one study).
_START_FREE = ("barycenter", "mixture")


def _evaluate(cfg, setup, metatest, labeller, factory, results, bar, run, *,
              shared: dict | None = None, start: str | None = None) -> dict:
    """The guard's data: fresh models (same ``N``, steps and seeds for every source) trained
    on each source, every repeat; errors on the *seen* samples (selection) and the unseen
    ones (report). Returns ``{split: {source: {N: [error per repeat]}}}``. ``shared`` keeps
    the start-independent sources' records across the starts of a particle study."""
    from ..models.operator_training import train_operator

    shared = {} if shared is None else shared
    tag = {} if start is None else {"start": start}
    names = list(_sources(cfg, setup, metatest, results[0]))
    adv = bar.task("guard: fresh models", len(names) * len(cfg.eval_n) * cfg.repeats).advance
    values = {split: {s: {n: [] for n in cfg.eval_n} for s in names}
              for split in ("unseen", "seen")}
    tcfg = _ama_config(cfg, setup, 0).train
    for r, res in enumerate(results):
        srcs = _sources(cfg, setup, metatest, res)
        for n in cfg.eval_n:
            for name in names:
                if (name, n, r) in shared:
                    rec = shared[(name, n, r)]
                    values["unseen"][name][n].append(rec["error"])
                    values["seen"][name][n].append(rec["seen_error"])
                    adv(info=f"{name} N={n}: {rec['error']:.4f} (shared)")
                    continue
                seed = 50_000 + 97 * r + n
                x, y = labeller.label(srcs[name], n, seed)
                model = factory(cfg.seed + 7 * r + 1)
                t0 = time.perf_counter()
                train_operator(model, x, y, config=tcfg, weights=setup.output_weights,
                               seed=seed)
                model.eval()
                sq = metatest.error_squared(model)
                seen = metatest.error(model, split="seen")
                rec = {"source": name, "n": n, "repeat": r, "error": math.sqrt(sq),
                       "error_squared": sq, "seen_error": seen,
                       "seconds": time.perf_counter() - t0, **tag}
                run.append_metrics(rec, name="evaluation.jsonl")
                if name in _START_FREE:
                    shared[(name, n, r)] = rec
                values["unseen"][name][n].append(rec["error"])
                values["seen"][name][n].append(seen)
                adv(info=f"{name} N={n}: {rec['error']:.4f}")
    return values


def recommend(seen: dict[str, list[float]], unseen: dict[str, list[float]] | None = None
              ) -> dict:
    """The guard's choice: the source with the lowest mean *seen* error over repeats.

    ``seen`` / ``unseen``: ``{source: [error per repeat]}``. Returns ``{"source",
    "seen_error", "runner_up", "margin"}`` (``margin`` = runner-up's mean seen error minus
    the best one's, >= 0), ``"learned_minus_best"`` (how much worse the learned ``nu`` is on
    seen samples; 0 when it is recommended) and, with ``unseen``, the recommended source's
    and the learned one's mean unseen errors.
    """
    if not seen:
        raise ValueError("the guard needs at least one evaluated source")
    means = {k: float(np.mean(v)) for k, v in seen.items()}
    order = sorted(means, key=means.get)
    best = order[0]
    out = {"source": best, "seen_error": means[best], "seen_errors": means,
           "runner_up": order[1] if len(order) > 1 else None,
           "margin": means[order[1]] - means[best] if len(order) > 1 else 0.0,
           "learned_minus_best": means.get("learned", means[best]) - means[best],
           "selected_on": "mean relative error on the seen samples of the Q_j"}
    if unseen is not None:
        out["unseen_error"] = float(np.mean(unseen[best]))
        if "learned" in unseen:
            out["learned_unseen_error"] = float(np.mean(unseen["learned"]))
    return out


def _ci(values) -> dict:
    from ..report.metrics import mean_ci95

    c = mean_ci95(values)
    return {"mean": c["mean"], "lo": c["lo"], "hi": c["hi"], "n": c["n"],
            "values": [float(v) for v in values]}


def _padded(hist: list[list[dict]]) -> list[list[dict]]:
    """Histories of equal length: a run that stopped early (theta converged) keeps its last
    record for the remaining iterations (its distribution and model no longer change)."""
    n = max(len(h) for h in hist)
    return [h + [h[-1]] * (n - len(h)) for h in hist]


def _learned(setup, results) -> dict:
    """The learned parameters: per repeat, their mean per component, and the natural
    parameters of each learned measure (particles: summaries of the particle sets, whose
    coordinates are in particles.pt)."""
    if setup.theta_summary is not None:
        return {"parameter": setup.parameter, "initial": setup.theta_summary(setup.theta0),
                "values": [setup.theta_summary(res.theta) for res in results], "mean": None,
                "measures": [res.learned.to_dict() for res in results],
                "stop_reason": [res.stop_reason for res in results],
                "iterations_run": [len(res.history) - 1 for res in results]}
    values = [res.theta for res in results]
    arr = np.array([np.atleast_1d(v) for v in values], dtype=np.float64)
    mean = arr.mean(0)
    init = setup.theta0
    return {"parameter": setup.parameter,
            "initial": [float(v) for v in init] if np.ndim(init) else float(init),
            "values": values,
            "mean": [float(v) for v in mean] if np.ndim(init) else float(mean[0]),
            "measures": [res.learned.to_dict() if hasattr(res.learned, "to_dict") else
                         repr(res.learned) for res in results],
            "stop_reason": [res.stop_reason for res in results],
            "iterations_run": [len(res.history) - 1 for res in results]}


def _guard(cfg, evaluation) -> dict:
    """``recommended`` per N and overall (at ``N = n_train`` when evaluated, else the
    largest N)."""
    per_n = {str(n): recommend({k: v[n] for k, v in evaluation["seen"].items()},
                               {k: v[n] for k, v in evaluation["unseen"].items()})
             for n in cfg.eval_n}
    main = cfg.n_train if cfg.n_train in cfg.eval_n else max(cfg.eval_n)
    return {**per_n[str(main)], "n": main, "per_n": per_n}


def _summary(cfg, setup, results, evaluation, arch, metatest, labeller) -> dict:
    hist = _padded([res.history for res in results])
    iters = len(hist[0])
    per_iter = lambda key: [[h[k][key] for h in hist] for k in range(iters)]  # noqa: E731
    ood, ood_sq, loss = per_iter("ood_error"), per_iter("ood_error_squared"), per_iter("ama_loss")
    rel_loss = [[h[k]["ama_loss"] / h[0]["ama_loss"] for h in hist] for k in range(iters)]
    timing = {key: float(np.mean([rec[key] for h in hist for rec in h[1:]] or [0.0]))
              for key in ("seconds_label", "seconds_train", "seconds_update")}
    timing["seconds_lipschitz"] = float(np.mean([h[0]["seconds_lipschitz"] for h in hist]))
    timing["seconds_initial_train"] = float(np.mean([h[0]["seconds_train"] for h in hist]))
    monotone = all(h[k + 1]["ama_loss"] <= h[k]["ama_loss"] * (1 + 1e-12)
                   for h in hist for k in range(iters - 1))
    moved = [sum(1 for rec in res.history[1:] if rec.get("theta_step", 0.0) > 0)
             for res in results]
    unseen = evaluation["unseen"]
    return {
        "problem": cfg.problem,
        "preset": cfg.preset,
        "grid": setup.options.get("n", cfg.n),
        "parameter": setup.parameter,
        "family": cfg.family,
        "mixture_bound": cfg.mixture_bound if cfg.family == "mixture" else None,
        "iterations": cfg.iterations,
        "n_train": cfg.n_train,
        "repeats": cfg.repeats,
        "norm": "quadrature L2 (trapezoid weights of the grid) for errors, m2, W2 and G(0)",
        "in_loop_note": "ood_error* and initial/final_ood_error are the IN-LOOP model's errors "
                        "(warm-started across iterations); compare sources only through "
                        "'baselines' (fresh models, same N, steps and seeds)",
        "ood_error": [float(np.mean(v)) for v in ood],
        "ood_error_ci": [_ci(v) for v in ood],
        "ood_error_squared": [float(np.mean(v)) for v in ood_sq],
        "ama_loss": [float(np.mean(v)) for v in loss],
        "relative_ama_loss": [float(np.mean(v)) for v in rel_loss],
        "relative_ama_loss_ci": [_ci(v) for v in rel_loss],
        "ama_loss_monotone": monotone,
        "theta_moved_iterations": moved,
        "initial_ood_error": float(np.mean(ood[0])),
        "final_ood_error": float(np.mean(ood[-1])),
        "initial_ood_error_squared": float(np.mean(ood_sq[0])),
        "final_ood_error_squared": float(np.mean(ood_sq[-1])),
        "eval_n": list(cfg.eval_n),
        "baselines": {name: {str(n): float(np.mean(v)) for n, v in by_n.items()}
                      for name, by_n in unseen.items()},
        "baselines_ci": {name: {str(n): _ci(v) for n, v in by_n.items()}
                         for name, by_n in unseen.items()},
        "baselines_seen_ci": {name: {str(n): _ci(v) for n, v in by_n.items()}
                              for name, by_n in evaluation["seen"].items()},
        "recommended": _guard(cfg, evaluation),
        "lipschitz": {"true": [res.lipschitz_true.to_dict() for res in results],
                      "model": [res.lipschitz_model.to_dict() for res in results],
                      "g0_true_norm": math.sqrt(setup.g0_true_sq()),
                      "g0_model_norm": [math.sqrt(res.g0_model_sq) for res in results],
                      "safety_true": 1.0 if getattr(setup, "linear", False) else cfg.safety,
                      "safety_note": "safety factors are a heuristic (max over samples for the "
                                     "sup over inputs); 1 for a map known to be linear"},
        "learned": _learned(setup, results),
        "family_options": {k: v for k, v in setup.options.items()},
        "metatest": {"n_measures": cfg.n_measures, "n_seen": cfg.n_seen,
                     "n_unseen": cfg.n_unseen, "family_seed": cfg.family_seed,
                     "params": metatest.params},
        "architecture": arch,
        "timing_per_iteration": timing,
        "labelled_samples": labeller.n_labelled,
        "seconds_labelling": labeller.seconds,
        "history": [res.history for res in results],
        **(_particle_summary(setup, results, evaluation) if setup.update == "particles" else {}),
    }


def _reduction(before: float, after: float) -> float:
    """``1 - after / before`` (the fraction of ``before`` removed)."""
    return 1.0 - after / before if before > 0 else float("nan")


def _particle_summary(setup, results, evaluation) -> dict:
    """Particle AMA's extra keys: ``knudsen``, ``particle_start``, the flow's ``J`` trajectory
    (``particle_j[repeat][iteration]``: ``J`` after every accepted step of that iteration's
    flow, its start first; the model is retrained between iterations, so each list starts
    at the new model's ``J``) with the step size per iteration, and the reductions of the
    relative OOD error.

    ``reductions.in_loop``: the AMA model at the last iteration against iteration 0 (paper
    Fig. 5: the error of the model along the AMA iterations), from mean errors over repeats,
    ``squared`` (paper F.19, the paper's 82 / 85 / 88 %) and ``root``. ``reductions.fresh``:
    per N, fresh models on the learned particles against fresh models on the start
    (``squared``, ``root``), and the learned error over the mixture-of-Q error
    (``learned_over_mixture``, root errors; <= 1 matches or beats the mixture).
    """
    hist = _padded([res.history for res in results])
    sq0 = float(np.mean([h[0]["ood_error_squared"] for h in hist]))
    sq1 = float(np.mean([h[-1]["ood_error_squared"] for h in hist]))
    r0 = float(np.mean([h[0]["ood_error"] for h in hist]))
    r1 = float(np.mean([h[-1]["ood_error"] for h in hist]))
    unseen = evaluation["unseen"]
    fresh = {}
    for n in unseen["learned"]:
        lr, ir = np.asarray(unseen["learned"][n]), np.asarray(unseen["initial"][n])
        mx = np.asarray(unseen["mixture"][n])
        fresh[str(n)] = {"squared": _reduction(float(np.mean(ir ** 2)), float(np.mean(lr ** 2))),
                         "root": _reduction(float(ir.mean()), float(lr.mean())),
                         "learned": float(lr.mean()), "initial": float(ir.mean()),
                         "mixture": float(mx.mean()),
                         "learned_over_mixture": float(lr.mean() / mx.mean())}
    flows = [[rec.get("flow", {}) for rec in res.history[1:]] for res in results]
    traj = [[f.get("j_trajectory", []) for f in fl] for fl in flows]
    return {"knudsen": setup.options["knudsen"], "particle_start": setup.options["particle_start"],
            "particles": setup.options["n_particles"],
            "particle_j": traj,
            "particle_eta": [[f.get("eta") for f in fl] for fl in flows],
            "particle_flow_steps": [[f.get("steps") for f in fl] for fl in flows],
            "seconds_per_particle_gradient": float(np.mean(
                [f["seconds_per_gradient"] / setup.options["n_particles"]
                 for fl in flows for f in fl if "seconds_per_gradient" in f] or [float("nan")])),
            "reductions": {"in_loop": {"squared": _reduction(sq0, sq1), "root": _reduction(r0, r1),
                                       "initial_squared": sq0, "final_squared": sq1,
                                       "initial_root": r0, "final_root": r1},
                           "fresh": fresh,
                           "note": "squared: 1 - E_sq(after) / E_sq(before), the relative OOD "
                                   "error squared (paper F.19, the paper's 82/85/88 %); root: "
                                   "the same for the root error; the denominator of the "
                                   "relative error sums over every Q_k"}}
