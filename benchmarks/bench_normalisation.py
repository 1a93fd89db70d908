"""DeepONet with and without input/output normalisation (issue 26) at the AMA presets.

For each problem: the meta-test family of the study (``family_seed``), one training set per
seed drawn from a source (default the mixture of the ``Q_j``, as the guard draws it), and a
fresh DeepONet trained on it exactly as the guard trains one (``_evaluate`` in
:mod:`wheretolearn.design.ama_study`: same factory, ``TrainConfig``, seeds and quadrature
weights), once with ``normalize=True`` and once with ``normalize=False``. Reported: the
relative OOD error on the unseen samples of the ``Q_j`` (the study's ``error``, root of the
mean squared relative error, paper F.19), the error on the seen samples, and the training
seconds (wall and CPU; one torch thread).

The ``ci`` presets are trained the same way; since a whole training lasts about a second
and the machine may be shared, the cost of the normalisation is also measured per Adam step
(``step_timing``: the preset's model and batch size, normalize on and off interleaved, the
minimum CPU time over several blocks of steps).

Usage::

    python benchmarks/bench_normalisation.py [--problems darcy ntd] [--seeds 2]
        [--sources mixture initial] [--presets small ci] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from bench_models import (
    study_pieces as _study_pieces,  # the study's pieces, built once there
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_normalisation.json"


def _source(name: str, setup, metatest):
    from wheretolearn.measures import Mixture

    if name == "mixture":
        return Mixture(metatest.measures)
    if name == "initial":
        return setup.build(setup.theta0)
    raise ValueError(f"source must be mixture or initial, got {name!r}")


def run_case(problem: str, preset: str, source: str, seeds: int) -> list[dict]:
    """One record per (seed, normalize): errors and training seconds."""
    from wheretolearn.design.ama_study import _ama_config, _model_factory
    from wheretolearn.models.operator_training import train_operator

    cfg, setup, labeller, metatest = _study_pieces(problem, preset)
    tcfg = _ama_config(cfg, setup, 0).train
    n = cfg.n_train
    src = _source(source, setup, metatest)
    out = []
    for r in range(seeds):
        seed = 50_000 + 97 * r + n                       # the guard's seeds (repeat r)
        x, y = labeller.label(src, n, seed)
        for normalize in (False, True):
            factory, _ = _model_factory(cfg.model_copy(update={"normalize": normalize}), setup)
            model = factory(cfg.seed + 7 * r + 1)
            t0, c0 = time.perf_counter(), time.process_time()
            res = train_operator(model, x, y, config=tcfg, weights=setup.output_weights,
                                 seed=seed)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            model.eval()
            rec = {"problem": problem, "preset": preset, "source": source, "n_train": n,
                   "seed": r, "normalize": normalize,
                   "unseen_error": math.sqrt(metatest.error_squared(model)),
                   "seen_error": metatest.error(model, split="seen"),
                   "best_val_loss": res.best_val_loss, "steps": res.steps,
                   "seconds": wall, "cpu_seconds": cpu}
            out.append(rec)
            print(f"{problem:6s} {preset:6s} {source:8s} seed {r} normalize={normalize!s:5s} "
                  f"unseen {rec['unseen_error']:.4f} seen {rec['seen_error']:.4f} "
                  f"{wall:6.1f} s", flush=True)
    return out


def step_timing(problem: str, preset: str, steps: int = 100, blocks: int = 7) -> dict:
    """CPU seconds per Adam step (forward, relative L2 loss, backward, step) of the preset's
    DeepONet on a random batch, with and without normalisation (minimum over ``blocks``)."""
    from wheretolearn.design.ama_problems import ama_setup
    from wheretolearn.design.ama_study import _model_factory, resolve_ama_config
    from wheretolearn.models import relative_l2_loss

    cfg = resolve_ama_config({"problem": problem, "preset": preset})
    setup = ama_setup(problem, n=cfg.n)
    g = torch.Generator().manual_seed(0)
    shape_in, shape_out = setup.problem.input_shape, setup.problem.output_shape
    x = torch.randn(cfg.batch_size, *shape_in, generator=g)
    y = torch.randn(cfg.batch_size, *shape_out, generator=g)
    models, opts = {}, {}
    for normalize in (False, True):
        factory, _ = _model_factory(cfg.model_copy(update={"normalize": normalize}), setup)
        models[normalize] = factory(0)
        if normalize:
            models[normalize].fit_normalization(x, y)
        opts[normalize] = torch.optim.Adam(models[normalize].parameters(), lr=1e-3)
    best = {False: float("inf"), True: float("inf")}
    for _ in range(blocks):
        for normalize in (False, True):
            m, opt = models[normalize], opts[normalize]
            c0 = time.process_time()
            for _ in range(steps):
                loss = relative_l2_loss(m(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            best[normalize] = min(best[normalize], (time.process_time() - c0) / steps)
    out = {"problem": problem, "preset": preset, "batch_size": cfg.batch_size,
           "cpu_seconds_per_step_plain": best[False], "cpu_seconds_per_step_normalized": best[True],
           "ratio": best[True] / best[False]}
    print(f"{problem:6s} {preset:6s} step: plain {1e3 * best[False]:.3f} ms, normalised "
          f"{1e3 * best[True]:.3f} ms (x{out['ratio']:.3f})", flush=True)
    return out


def summarise(records: list[dict]) -> list[dict]:
    """Mean over seeds per (problem, preset, source, normalize)."""
    keys = sorted({(r["problem"], r["preset"], r["source"], r["normalize"]) for r in records})
    rows = []
    for k in keys:
        rs = [r for r in records if (r["problem"], r["preset"], r["source"], r["normalize"]) == k]
        rows.append({"problem": k[0], "preset": k[1], "source": k[2], "normalize": k[3],
                     "n_train": rs[0]["n_train"],
                     "unseen_error": [r["unseen_error"] for r in rs],
                     "unseen_error_mean": float(np.mean([r["unseen_error"] for r in rs])),
                     "seen_error_mean": float(np.mean([r["seen_error"] for r in rs])),
                     "seconds_mean": float(np.mean([r["seconds"] for r in rs])),
                     "cpu_seconds_mean": float(np.mean([r["cpu_seconds"] for r in rs]))})
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", nargs="+", default=["darcy", "ntd"])
    ap.add_argument("--presets", nargs="+", default=["small", "ci"])
    ap.add_argument("--sources", nargs="+", default=["mixture"])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    records = []
    for preset in args.presets:
        for problem in args.problems:
            for source in args.sources:
                records += run_case(problem, preset, source, args.seeds)
    timings = [step_timing(problem, preset) for preset in args.presets
               for problem in args.problems]
    rows = summarise(records)
    print("\nproblem preset source    N   normalize  unseen error (per seed)        mean   "
          "train s")
    for r in rows:
        per = " ".join(f"{e:.4f}" for e in r["unseen_error"])
        print(f"{r['problem']:7s} {r['preset']:6s} {r['source']:8s} {r['n_train']:4d} "
              f"{r['normalize']!s:9s}  {per:28s}  {r['unseen_error_mean']:.4f}  "
              f"{r['seconds_mean']:6.1f}")
    from wheretolearn.models.deeponet import STD_FLOOR

    result = {"what": "fresh DeepONet, normalize on vs off, trained as the AMA guard trains one",
              "std_floor": STD_FLOOR, "torch_threads": 1, "load_average_start": load,
              "torch": torch.__version__, "python": platform.python_version(),
              "rows": rows, "step_timing": timings, "records": records}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
