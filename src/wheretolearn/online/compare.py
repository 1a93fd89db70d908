"""Compare parameter samplers of the online study at the same simulation budget (issue 13).

``wheretolearn online compare CONFIG.toml --samplers uniform,breed,breed-weighted --seeds 5
--out DIR`` runs, for every sampler and seed, the study of ``CONFIG.toml`` and measures the
per-sample relative L2 error ``||y_hat - y|| / ||y||`` on one validation set shared by all
runs, then reports mean, median, P95, P99 and max with their spread over seeds and their
ratio to uniform (``uniform / method``: > 1 is better, as in OGAS).

Lockstep engine. Comparisons run the study's components (problem, sampler, buffer, trainer,
validation) in one process in lockstep instead of on Dask: simulations are launched in waves
of ``[executor] workers`` (each asked from the sampler just before it starts, as the engine
does), their steps enter the buffer, then ``batches_per_simulation`` training batches per
simulation of the wave are trained (every batch told to the sampler), then the next wave.
After the last wave the buffer is closed and drained as in the engine (a reservoir serves
every stored sample once more). With threads, how many batches a simulation overlaps
depends on machine load; in lockstep it does not, so two samplers differ only by where they
simulate (same seed: same initial network, same buffer randomness, same base draws). The
default heat study trains about 4.75 batches per simulation on 2 cores
(``benchmarks/results/bench_online.json``: 950 batches for 200 simulations).

Validation set (``box_validation_set``): the ``2^d`` corners of the box, ``n_edge`` points
with a random half of their coordinates on a bound (edges and faces) and ``n_interior``
scrambled Sobol points, drawn once with their own seed. Heat solutions are hardest at the
corners and edges (largest contrasts between initial and wall temperatures).

Sampler names: ``uniform``, ``halton``, ``sobol``, ``lhs``, ``breed`` and Breed variants
``breed-weighted`` (importance-weighted training loss), ``breed-nrmse`` (nRMSE fitness),
``breed-nrmse-weighted``, ``breed-ess`` (ESS trigger), ``breed-step`` (step-baseline fitness),
in any combination (``breed-nrmse-step``); the other Breed options come from the
configuration's ``[sampler]`` table.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .config import OnlineStudyConfig, SamplerSection

__all__ = ["box_validation_set", "sampler_config", "lockstep_study", "compare_samplers",
           "summarise_comparison", "comparison_table", "write_comparison"]

_METRICS = ("mean", "median", "p95", "p99", "max")
_VARIANTS = {"weighted", "nrmse", "mse", "ess", "step"}


def box_validation_set(bounds: Any, *, n_edge: int = 64, n_interior: int = 64,
                       seed: int = 2024) -> tuple[np.ndarray, np.ndarray]:
    """Validation parameters covering the whole box, shape ``(2^d + n_edge + n_interior, d)``.

    Rows: every corner of the box, then ``n_edge`` Sobol points with each coordinate snapped
    to its nearer bound with probability 1/2 (points on edges and faces), then
    ``n_interior`` Sobol points. Returns ``(params, group)`` with ``group`` 0 / 1 / 2 for
    corner / edge / interior rows.
    """
    from scipy.stats import qmc

    b = np.asarray(bounds, dtype=np.float64)
    d = b.shape[0]
    rng = np.random.default_rng(seed)
    corners = np.array(np.meshgrid(*[[0.0, 1.0]] * d, indexing="ij")).reshape(d, -1).T
    sob = qmc.Sobol(d, scramble=True, rng=rng).random(n_edge + n_interior)
    edge = sob[:n_edge].copy()
    snap = rng.random(edge.shape) < 0.5
    edge[snap] = np.round(edge[snap])
    unit = np.concatenate([corners, edge, sob[n_edge:]])
    group = np.concatenate([np.zeros(len(corners), np.int64), np.ones(n_edge, np.int64),
                            np.full(n_interior, 2, np.int64)])
    return b[:, 0] + unit * (b[:, 1] - b[:, 0]), group


def _validation_arrays(problem: Any, params: np.ndarray, bounds: np.ndarray,
                       chunk: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(V * T, F)`` and float32 fields ``(V * T, O)`` of the validation set."""
    from .trainer import heat_features

    n_steps = int(problem.n_steps)
    y = np.concatenate([np.asarray(problem(params[i:i + chunk]), dtype=np.float32)
                        .reshape(len(params[i:i + chunk]) * n_steps, -1)
                        for i in range(0, len(params), chunk)])
    x = heat_features(np.repeat(params, n_steps, axis=0), np.tile(np.arange(n_steps),
                      len(params)), bounds=bounds, n_steps=n_steps)
    return x, y


def sampler_config(config: OnlineStudyConfig, name: str) -> OnlineStudyConfig:
    """``config`` with sampler ``name`` (a registry name or a Breed variant such as
    ``breed-weighted``); a non-Breed sampler drops the Breed options."""
    base, *variant = name.split("-")
    unknown = set(variant) - _VARIANTS
    if unknown or (variant and base != "breed"):
        raise ValueError(f"unknown sampler variant {name!r}; use a sampler name or breed-"
                         f"followed by any of {sorted(_VARIANTS)} joined with '-'")
    s = config.sampler
    if base != "breed":
        section = SamplerSection(name=base, seed=s.seed, bounds=s.bounds)
    else:
        data = s.model_dump()
        data["name"] = "breed"
        if "weighted" in variant:
            data["weighted"] = True
        if "nrmse" in variant:
            data["fitness_loss"] = "nrmse"
        if "mse" in variant:
            data["fitness_loss"] = "mse"
        if "ess" in variant:
            data["trigger"] = "ess"
        if "step" in variant:
            data["fitness_baseline"] = "step"
        section = SamplerSection.model_validate(data)
    return config.model_copy(update={"sampler": section})


def lockstep_study(config: OnlineStudyConfig, *, x_val: np.ndarray, y_val: np.ndarray,
                   batches_per_simulation: float = 5.0,
                   progress: Callable[[int], None] | None = None) -> dict:
    """Run the study of ``config`` in lockstep (module docstring); return the errors.

    Returns
    -------
    dict with ``errors`` ``(V,)`` per-sample relative L2 errors on ``(x_val, y_val)``,
    ``summary`` (mean, median, P95, P99, max), ``batches``, ``simulations``, ``seconds`` and,
    for Breed, ``generations``, ``bred``, ``copies``.
    """
    import torch

    from ..models.mlp import MLP
    from ..problems import get_problem
    from .buffers import Sample, make_buffer
    from .samplers import make_sampler
    from .trainer import OnlineTrainer, heat_features, target_scaling_from_bounds

    t0 = time.perf_counter()
    cfg = config
    problem = get_problem(cfg.study.problem, **cfg.study.problem_options())
    n_steps = int(problem.n_steps)
    bounds = (np.asarray(cfg.sampler.bounds, dtype=np.float64) if cfg.sampler.bounds
              else np.asarray(problem.parameter_bounds, dtype=np.float64))
    seed = cfg.study.seed
    sampler = make_sampler(cfg.sampler.name, bounds, seed=(
        cfg.sampler.seed if cfg.sampler.seed is not None else seed + 1),
        **cfg.sampler.options(n_steps=n_steps, capacity=cfg.buffer.capacity,
                              watermark=cfg.buffer.watermark))
    buffer = make_buffer(cfg.buffer.kind, cfg.buffer.capacity, watermark=cfg.buffer.watermark,
                         seed=seed + 2, **cfg.buffer.options())
    torch.manual_seed(seed)
    t = cfg.training
    model = MLP(x_val.shape[1], y_val.shape[1], hidden=tuple(t.hidden))
    shift, scale = target_scaling_from_bounds(bounds)
    trainer = OnlineTrainer(model, lr=t.lr, weight_decay=t.weight_decay,
                            milestones=tuple(t.milestones), gamma=t.gamma, y_shift=shift,
                            y_scale=scale)
    adaptive = getattr(sampler, "adaptive", False)
    key = "per_sample_nrmse" if cfg.sampler.fitness_loss == "nrmse" else "per_sample_loss"
    weighted = cfg.sampler.weighted and hasattr(sampler, "weights_for")
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
    launched, credit = 0, 0.0
    steps = np.arange(n_steps)
    while launched < n_sims:
        ids = list(range(launched, min(n_sims, launched + conc)))
        params = np.stack([sampler.ask(1, sim_ids=[i])[0] for i in ids])
        fields = np.asarray(problem(params), dtype=np.float32).reshape(len(ids), n_steps, -1)
        for j, sim in enumerate(ids):
            x = heat_features(np.repeat(params[j:j + 1], n_steps, axis=0), steps,
                              bounds=bounds, n_steps=n_steps)
            for step in range(n_steps):
                while not buffer.put(Sample(sim, step, x[step], fields[j, step]), timeout=0):
                    train_one()          # a FIFO / FIRO buffer is full: train to make room
            sampler.simulation_finished(sim)
        launched += len(ids)
        credit += batches_per_simulation * len(ids)
        while credit >= 1.0:
            credit -= 1.0
            if not train_one():
                credit = 0.0
        if progress is not None:
            progress(launched)
    while (t.min_batches is not None and trainer.batches_seen < t.min_batches
           and train_one()):
        pass
    buffer.close()
    while train_one():
        pass
    val = trainer.validate(x_val, y_val, return_errors=True)
    out = {"errors": val["errors"], "summary": {k: float(val[k]) for k in _METRICS},
           "batches": trainer.batches_seen, "simulations": launched,
           "seconds": time.perf_counter() - t0}
    if hasattr(sampler, "diagnostics"):
        m = sampler.metrics()
        out.update(generations=int(m["sampler_generation"]), bred=int(m["sampler_bred"]),
                   copies=int(m["sampler_copies"]))
    return out


def compare_samplers(config: OnlineStudyConfig, samplers: Sequence[str], *, seeds: int = 5,
                     batches_per_simulation: float = 5.0, n_edge: int = 64,
                     n_interior: int = 64, val_seed: int = 2024,
                     progress: Callable[[str], None] | None = None,
                     on_run: Callable[[dict], None] | None = None) -> dict:
    """Run every sampler with seeds ``0..seeds-1`` at the same budget; return the results.

    ``progress(label)`` is called before each run, ``on_run(record)`` after it.

    Seed ``s`` sets ``[study] seed`` (network initialisation, buffer) and the sampler seed
    ``s + 1`` for every sampler, so runs of one seed are paired.
    """
    from ..problems import get_problem

    samplers = list(samplers)
    if not samplers:
        raise ValueError("samplers must name at least one sampler")
    if "uniform" not in samplers:
        raise ValueError(f"samplers must include 'uniform' (the reference), got {samplers}")
    cfgs = {name: sampler_config(config, name) for name in samplers}   # validate all first
    seeds = int(seeds)
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    problem = get_problem(config.study.problem, **config.study.problem_options())
    bounds = (np.asarray(config.sampler.bounds, dtype=np.float64) if config.sampler.bounds
              else np.asarray(problem.parameter_bounds, dtype=np.float64))
    params, group = box_validation_set(bounds, n_edge=n_edge, n_interior=n_interior,
                                       seed=val_seed)
    x_val, y_val = _validation_arrays(problem, params, bounds)
    n_steps = int(problem.n_steps)
    runs = []
    for seed in range(seeds):
        for name in samplers:
            cfg = cfgs[name].with_overrides(**{"study.seed": seed, "sampler.seed": seed + 1})
            if progress is not None:
                progress(f"{name} seed {seed}")
            res = lockstep_study(cfg, x_val=x_val, y_val=y_val,
                                 batches_per_simulation=batches_per_simulation)
            err = res.pop("errors")
            by_group = {g: _tail(err.reshape(len(params), n_steps)[group == i])
                        for i, g in enumerate(("corner", "edge", "interior"))}
            runs.append({"sampler": name, "seed": seed, **res, "by_group": by_group,
                         "errors": err})
            if on_run is not None:
                on_run(runs[-1])
    return {"samplers": samplers, "seeds": seeds, "batches_per_simulation":
            batches_per_simulation, "n_simulations": config.study.n_simulations,
            "validation": {"n_simulations": len(params), "corners": int((group == 0).sum()),
                           "edge": int((group == 1).sum()),
                           "interior": int((group == 2).sum()), "seed": val_seed,
                           "samples": int(len(params) * n_steps)},
            "runs": runs}


def _tail(errors: np.ndarray) -> dict:
    from ..report.metrics import tail_summary

    return tail_summary(errors)


def summarise_comparison(result: dict) -> dict:
    """Per sampler and metric: mean and std over seeds of the value and of the per-seed ratio
    ``uniform / sampler`` (paired by seed)."""
    runs = result["runs"]
    ref = {r["seed"]: r["summary"] for r in runs if r["sampler"] == "uniform"}
    table = {}
    for name in result["samplers"]:
        rows = [r for r in runs if r["sampler"] == name]
        entry = {}
        for m in _METRICS:
            v = np.array([r["summary"][m] for r in rows])
            ratio = np.array([ref[r["seed"]][m] / r["summary"][m] for r in rows])
            entry[m] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1
                        else 0.0, "ratio": float(ratio.mean()),
                        "ratio_std": float(ratio.std(ddof=1)) if len(v) > 1 else 0.0,
                        "ratio_min": float(ratio.min()), "ratio_max": float(ratio.max())}
        entry["batches"] = float(np.mean([r["batches"] for r in rows]))
        entry["seconds"] = float(np.mean([r["seconds"] for r in rows]))
        table[name] = entry
    return table


def comparison_table(summary: dict, *, seeds: int) -> str:
    """Markdown table: value mean +- std over seeds, and ratio uniform / sampler (+- std)."""
    head = ("| sampler | " + " | ".join(m.upper() if m.startswith("p") else m
                                       for m in _METRICS) + " |")
    lines = [head, "|" + "---|" * (len(_METRICS) + 1)]
    for name, e in summary.items():
        cells = [f"{e[m]['mean']:.4f} ± {e[m]['std']:.4f} (×{e[m]['ratio']:.2f} ± "
                 f"{e[m]['ratio_std']:.2f})" for m in _METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Per-sample relative L2 error, mean ± std over {seeds} seeds; (×r ± s): "
                 "ratio uniform / sampler per seed (> 1 is better), mean ± std.")
    return "\n".join(lines)


def _figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in result["samplers"]:
        err = np.sort(np.concatenate([r["errors"] for r in result["runs"]
                                      if r["sampler"] == name]))
        surv = 1.0 - np.arange(len(err)) / len(err)
        ax[0].loglog(err, surv, label=name)
        p99 = [r["summary"]["p99"] for r in result["runs"] if r["sampler"] == name]
        ax[1].scatter([name] * len(p99), p99, s=18)
    ax[0].axhline(0.01, color="k", lw=0.5, ls=":")
    ax[0].set(xlabel="per-sample relative L2 error", ylabel="fraction of samples above",
              title="error distribution (all seeds)")
    ax[0].legend(fontsize=8)
    ax[1].set(ylabel="P99 per seed", title="P99 over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_comparison(result: dict, out: str | Path, *, config_path: str | None = None) -> dict:
    """Write ``compare.json``, ``compare.md``, ``errors.npz`` and
    ``figures/compare_errors.png`` into the new folder ``out`` (staged, then renamed, so a
    failure leaves nothing); return the summary table."""
    from ..report.runfolder import to_jsonable

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"output folder {str(out)!r} already exists; choose another --out")
    summary = summarise_comparison(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        runs = [{k: v for k, v in r.items() if k != "errors"} for r in result["runs"]]
        payload = {**{k: v for k, v in result.items() if k != "runs"}, "config": config_path,
                   "summary": summary, "runs": runs}
        (stage / "compare.json").write_text(json.dumps(to_jsonable(payload), indent=1,
                                                       allow_nan=False) + "\n")
        (stage / "compare.md").write_text(comparison_table(summary, seeds=result["seeds"])
                                          + "\n")
        np.savez_compressed(stage / "errors.npz", **{
            f"{r['sampler']}_seed{r['seed']}": r["errors"].astype(np.float32)
            for r in result["runs"]})
        (stage / "figures").mkdir()
        _figure(result, stage / "figures" / "compare_errors.png")
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return summary

