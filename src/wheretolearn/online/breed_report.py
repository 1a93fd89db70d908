"""Diagnostics of a Breed run in its run folder (issue 13, item 5).

:func:`write_breed_report` writes ``sampler.json`` (the sampler's
:meth:`~wheretolearn.online.breed.BreedSampler.diagnostics`) and three figures:

* ``figures/breed_params.png`` -- per parameter, the density histogram of the sampled values
  of each generation against the uniform density ``1 / (high - low)`` (dashed);
* ``figures/breed_fitness.png`` -- fitness (loss deviation) against each parameter, bred
  simulations marked;
* ``figures/breed_schedule.png`` -- bred fraction R, the parent weights' ESS fraction and
  the importance weights' ESS fraction over training batches (from ``metrics.jsonl``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["write_breed_report"]


def write_breed_report(diagnostics: dict, history: Sequence[dict], run_dir: str | Path) -> None:
    """Write ``sampler.json`` and ``figures/breed_*.png`` into ``run_dir``.

    Parameters
    ----------
    diagnostics : dict from ``BreedSampler.diagnostics()``
    history : the metrics records (dicts) of the run; those with ``sampler_r`` are plotted
    run_dir : the run folder
    """
    from ..report.runfolder import to_jsonable

    run_dir = Path(run_dir)
    tmp = run_dir / ".sampler.json.tmp"
    tmp.write_text(json.dumps(to_jsonable(diagnostics), allow_nan=False) + "\n")
    os.replace(tmp, run_dir / "sampler.json")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir = run_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    for name, draw in (("breed_params.png", _params_figure),
                       ("breed_fitness.png", _fitness_figure),
                       ("breed_schedule.png", _schedule_figure)):
        fig = draw(plt, diagnostics, history)
        fig.tight_layout()
        fig.savefig(fig_dir / name, dpi=90)
        plt.close(fig)


def _draws(diag: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    d = diag["draws"]
    bounds = np.asarray(diag["bounds"], dtype=np.float64)
    params = np.asarray(d["params"], dtype=np.float64).reshape(-1, bounds.shape[0])
    fit = np.array([np.nan if f is None else f for f in d["fitness"]], dtype=np.float64)
    return params, np.asarray(d["generation"], dtype=np.int64), np.asarray(d["bred"], bool), fit


def _params_figure(plt: Any, diag: dict, history: Sequence[dict]) -> Any:
    params, gen, _, _ = _draws(diag)
    bounds = np.asarray(diag["bounds"], dtype=np.float64)
    dim = bounds.shape[0]
    fig, axes = plt.subplots(1, dim, figsize=(3 * dim, 2.8), squeeze=False)
    edges_n = 10
    for j, ax in enumerate(axes[0]):
        lo, hi = bounds[j]
        edges = np.linspace(lo, hi, edges_n + 1)
        for g in np.unique(gen):
            x = params[gen == g, j]
            if len(x):
                ax.hist(x, bins=edges, density=True, histtype="step",
                        label=f"gen {g} ({len(x)})")
        ax.axhline(1.0 / (hi - lo), color="k", ls="--", lw=1, label="uniform")
        ax.set(xlabel=f"parameter {j}", ylabel="density" if j == 0 else None)
    axes[0][0].legend(fontsize=6)
    fig.suptitle("sampled parameters per generation vs uniform")
    return fig


def _fitness_figure(plt: Any, diag: dict, history: Sequence[dict]) -> Any:
    params, _, bred, fit = _draws(diag)
    dim = params.shape[1]
    ok = np.isfinite(fit)
    fig, axes = plt.subplots(1, dim, figsize=(3 * dim, 2.8), squeeze=False)
    for j, ax in enumerate(axes[0]):
        ax.scatter(params[ok & ~bred, j], fit[ok & ~bred], s=6, label="base")
        ax.scatter(params[ok & bred, j], fit[ok & bred], s=6, marker="x", label="bred")
        ax.set(xlabel=f"parameter {j}", ylabel="fitness (loss deviation)" if j == 0
               else None)
    axes[0][0].legend(fontsize=6)
    return fig


def _schedule_figure(plt: Any, diag: dict, history: Sequence[dict]) -> Any:
    rows = [r for r in history if "sampler_r" in r]
    fig, ax = plt.subplots(figsize=(6, 3))
    if rows:
        b = [r["batch"] for r in rows]
        for key, label in (("sampler_r", "bred fraction R"),
                           ("sampler_fitness_ess", "parent-weight ESS / candidates"),
                           ("sampler_weight_ess", "importance-weight ESS / N")):
            ax.plot(b, [np.nan if r.get(key) is None else r[key] for r in rows], label=label)
        ax.legend(fontsize=7)
    ax.set(xlabel="batch", ylim=(0, 1.05), title="Breed schedule")
    return fig
