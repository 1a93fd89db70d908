"""Online vs offline training of the heat surrogate for the same simulation budget (SPEC §5).

Three runs, each in its own subprocess (so peak memory is measured per run):

* ``online``: ``run_online_study`` -- simulations stream through a Dask LocalCluster into a
  reservoir buffer while the MLP trains (the example config, or ``--quick`` sizes);
* ``offline-batches``: generate every trajectory first (batched solver, all in memory),
  then train the same MLP for the same number of batches as the online run;
* ``offline-wall``: the same, but training stops when generation + training reach the
  online run's wall time ("same wall time").

With ``--wall S`` both the online run and ``offline-wall`` get a fixed wall budget of S
seconds: the online run keeps training on its buffer after the ensemble
(``min_batches``) until ``max_seconds = S``.

Offline runs use as many torch threads as the online trainer got (``--offline-threads``
overrides; on a shared 2-core machine more threads than free cores slow a batch down
30-fold). Reported per run: wall time, peak RSS of the training process (``ru_maxrss``; Dask worker
processes of the online run are not included -- they hold one time step each), the bytes
of training data held (buffer capacity vs whole data set), trainer samples per second
(samples trained / trainer wall time after the watermark), trainer idle fraction and the
validation error tail (per-sample relative L2: mean, median, P95, P99, max) on the same 10
held-out simulations, compared statistic by statistic (``tail_ratios``: offline / online,
above 1 where online is better). The online row also carries the trainer's wall-time split
(``trainer_time``: training steps, validation, checkpoint, waiting, other).

Targets (issues): online peak memory bounded by the buffer, not the data set; training
steps >= 90 % of the trainer's wall time once past the watermark; online at least as
accurate as offline for the same wall time, on each of the five statistics.

Usage::

    python benchmarks/bench_online.py [--quick] [--config examples/heat_online.toml]
                                      [--out benchmarks/results/bench_online.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _config(args: argparse.Namespace):
    from wheretolearn.online.config import OnlineStudyConfig, load_online_config

    cfg = load_online_config(args.config)
    if args.quick:
        cfg = OnlineStudyConfig.model_validate({
            **cfg.model_dump(),
            "study": {**cfg.study.model_dump(), "n": 32, "n_steps": 50, "n_simulations": 60},
            "buffer": {**cfg.buffer.model_dump(), "capacity": 1000, "watermark": 200},
            "validation": {**cfg.validation.model_dump(), "every_batches": 200},
            "checkpoint": {"every_batches": 100000}})
    return cfg


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------ one run (child)
def run_online(args: argparse.Namespace) -> dict:
    from wheretolearn.online.study import run_online_study

    cfg = _config(args)
    if args.wall is not None:
        # fixed wall budget: after the ensemble, keep training on the reservoir until it ends
        cfg = cfg.with_overrides(**{"training.min_batches": 10**9})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = run_online_study(cfg, Path(tmp) / "run", max_seconds=args.wall).summary
        wall = time.perf_counter() - t0
    item = cfg.study.n * cfg.study.n * 4
    return {"mode": "online", "wall_seconds": wall, "peak_rss_mb": _peak_rss_mb(),
            "data_bytes_held": cfg.buffer.capacity * item,
            "batches": s["batches"], "samples_trained": s["samples_trained"],
            "trainer_samples_per_second": s["trainer_samples_per_second"],
            "trainer_idle_fraction": s["trainer_idle_fraction"], "val_error": s["val_error"],
            "trainer_time": s["trainer_time"],
            "simulations_completed": s["simulations_completed"],
            "samples_duplicated": s["samples_duplicated"], "torch_threads": s["torch_threads"]}


def run_offline(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from wheretolearn.models.mlp import MLP
    from wheretolearn.online.sampler_registry import make_sampler
    from wheretolearn.online.study import validation_set
    from wheretolearn.online.trainer import (OnlineTrainer, normalised_step_features,
                                             target_scaling)
    from wheretolearn.problems import get_problem

    cfg = _config(args)
    t0 = time.perf_counter()
    problem = get_problem(cfg.study.problem, **cfg.study.problem_options())
    bounds = np.asarray(problem.parameter_bounds, dtype=np.float64)
    T, S = problem.n_steps, cfg.study.n_simulations
    # Same parameters as the online run's sampler, same validation set and initial weights.
    params = make_sampler(cfg.sampler.name, bounds, seed=cfg.study.seed + 1).ask(S)
    _, x_val, y_val = validation_set(problem, bounds, n_val=cfg.validation.n_val,
                                     seed=cfg.validation.seed)
    y = np.empty((S * T, cfg.study.n * cfg.study.n), dtype=np.float32)
    chunk = 20
    for i in range(0, S, chunk):  # the whole data set is generated and held in memory
        y[i * T:(i + chunk) * T] = problem(params[i:i + chunk]).reshape(-1, y.shape[1])
    x = normalised_step_features(np.repeat(params, T, axis=0), np.tile(np.arange(T), S),
                                 bounds=bounds, n_steps=T)
    t_gen = time.perf_counter() - t0
    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(cfg.study.seed)
    model = MLP(x.shape[1], y.shape[1], hidden=tuple(cfg.training.hidden))
    shift, scale = target_scaling(problem, bounds, y_val)
    t = cfg.training
    trainer = OnlineTrainer(model, t.adam_schedule(), y_shift=shift, y_scale=scale)
    rng = np.random.default_rng(cfg.study.seed)
    bs = cfg.training.batch_size
    t_train0 = time.perf_counter()
    batches = 0
    while True:
        order = rng.permutation(len(x))
        for i in range(0, len(order) - bs + 1, bs):
            if args.max_batches is not None and batches >= args.max_batches:
                break
            if args.max_wall is not None and time.perf_counter() - t0 >= args.max_wall:
                break
            idx = order[i:i + bs]
            trainer.train_arrays(x[idx], y[idx])
            batches += 1
        else:
            continue
        break
    t_train = time.perf_counter() - t_train0
    val = trainer.validate(x_val, y_val)
    return {"mode": args.mode, "wall_seconds": time.perf_counter() - t0,
            "generate_seconds": t_gen, "peak_rss_mb": _peak_rss_mb(),
            "data_bytes_held": int(y.nbytes + x.nbytes), "batches": batches,
            "samples_trained": batches * bs,
            "trainer_samples_per_second": batches * bs / t_train if t_train > 0 else 0.0,
            "trainer_idle_fraction": 0.0, "torch_threads": args.torch_threads,
            "val_error": {k: float(val[k]) for k in ("mean", "median", "p95", "p99", "max")},
            "simulations_completed": S, "samples_duplicated": 0}


# ------------------------------------------------------------------------ driver (parent)
def _child(args: argparse.Namespace, mode: str, **extra: float | int | None) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result_path = fh.name
    cmd = [sys.executable, __file__, "--child", mode, "--result", result_path,
           "--config", args.config] + (["--quick"] if args.quick else [])
    for key, value in extra.items():
        if value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    subprocess.run(cmd, check=True, cwd=ROOT)
    result = json.loads(Path(result_path).read_text())
    os.unlink(result_path)
    return result


_TAILS = ("mean", "median", "p95", "p99", "max")


def _table(rows: list[dict]) -> str:
    head = (f"{'run':<16}{'wall s':>9}{'peak RSS MB':>13}{'data MB':>10}{'batches':>9}"
            f"{'samples/s':>11}{'idle':>7}" + "".join(f"{t:>9}" for t in _TAILS))
    lines = [head, "-" * len(head)]
    for r in rows:
        v = r["val_error"]
        lines.append(f"{r['mode']:<16}{r['wall_seconds']:>9.1f}{r['peak_rss_mb']:>13.0f}"
                     f"{r['data_bytes_held'] / 2**20:>10.1f}{r['batches']:>9d}"
                     f"{r['trainer_samples_per_second']:>11.0f}"
                     f"{r['trainer_idle_fraction']:>7.3f}"
                     + "".join(f"{v[t]:>9.4f}" for t in _TAILS))
    split = rows[0].get("trainer_time")
    if split:
        f = split["fractions"]
        lines.append(f"online trainer wall {split['wall_seconds']:.1f} s: "
                     + ", ".join(f"{k} {100 * f[k]:.1f} %" for k in f))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "examples" / "heat_online.toml"))
    p.add_argument("--quick", action="store_true", help="32x32, 50 steps, 60 simulations")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_online.json"))
    p.add_argument("--offline-threads", type=int, default=None,
                   help="torch threads of the offline runs (default: as many as the online "
                        "trainer gets, for a like-for-like throughput comparison)")
    p.add_argument("--wall", type=float, default=None,
                   help="fixed wall budget (s): the online run keeps training on its buffer "
                        "after the ensemble until then; offline-wall gets the same budget")
    p.add_argument("--child", dest="mode", default=None, help=argparse.SUPPRESS)
    p.add_argument("--torch-threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--max-batches", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--max-wall", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.mode is not None:
        result = run_online(args) if args.mode == "online" else run_offline(args)
        Path(args.result).write_text(json.dumps(result))
        return

    online = _child(args, "online", wall=args.wall)
    threads = args.offline_threads or online["torch_threads"]
    same_batches = _child(args, "offline-batches", max_batches=online["batches"],
                          torch_threads=threads)
    same_wall = _child(args, "offline-wall", max_wall=args.wall or online["wall_seconds"],
                       torch_threads=threads)
    rows = [online, same_batches, same_wall]
    print(_table(rows))
    checks = {
        "online_memory_below_offline": online["peak_rss_mb"] < same_batches["peak_rss_mb"],
        "online_data_held_bounded_by_buffer": online["data_bytes_held"] < same_batches["data_bytes_held"],
        "trainer_steps_at_least_90_percent":
            online["trainer_time"]["fractions"]["train"] >= 0.90,
        **{f"online_{t}_at_most_offline_same_wall": (online["val_error"][t]
                                                     <= same_wall["val_error"][t])
           for t in _TAILS},
        **{f"online_{t}_at_most_offline_same_batches": (online["val_error"][t]
                                                        <= same_batches["val_error"][t])
           for t in _TAILS},
    }
    ratios = {f"{name}_over_online": {t: other["val_error"][t] / online["val_error"][t]
                                      for t in _TAILS}
              for name, other in (("offline_same_batches", same_batches),
                                  ("offline_same_wall", same_wall))}
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"python": platform.python_version(),
                                           "cpus": os.cpu_count(), "node": platform.node()},
                               "load_average_at_end": os.getloadavg(),
                               "quick": args.quick, "config": args.config, "runs": rows,
                               "tail_ratios": ratios, "checks": checks}, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
