"""The package's operator models at equal training time (issue 26 item 4).

Darcy ``small`` preset (24 x 24 grid, N = 200 samples of the mixture of the meta-test
measures ``Q_j``, drawn with the AMA guard's seeds), each model built from the registry with
its preset (``wheretolearn.models.registry.MODEL_PRESETS``) and trained by
:func:`~wheretolearn.models.train_operator` (relative L2 loss, Adam, best held-out weights
restored) with the study's training settings (``resolve_ama_config`` and the model's own
training overrides, ``AMA_MODEL_TRAINING``) for a fixed budget of seconds. Reported: the
relative OOD error on the *unseen* samples of the ``Q_j`` (the guard's ``error``), per seed
and budget, and the steps each model took.

Models: DeepONet plain (``normalize=False``) and normalised (``normalize=True``), and the FNO
(neuraloperator; ``pip install 'wheretolearn[fno]'``).

Budget: *CPU seconds of this process* with one torch thread. On a quiet machine that is the
wall time; on a shared one (as here, where other benchmarks ran at the same time) it is the
time the model actually computed, so the models get equal work whatever the load. The
number of steps that fits the budget is measured on copies of the model first (short probe
runs, :func:`train_for`); the CPU and wall seconds actually spent are recorded next to the
budget.

Usage::

    python benchmarks/bench_models.py [--budgets 5 60] [--seeds 2] [--preset small]
        [--models deeponet-plain deeponet fno] [--out PATH]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_models.json"

#: Variant name -> (registry model, init arguments over the preset).
VARIANTS = {"deeponet-plain": ("deeponet", {"normalize": False}),
            "deeponet": ("deeponet", {"normalize": True}),
            "fno": ("fno", {})}

PROBE_STEPS = 20


def study_pieces(problem: str, preset: str):
    """``(cfg, setup, labeller, metatest)`` as ``run_ama_study`` builds them."""
    from wheretolearn.design.ama_problems import ama_setup
    from wheretolearn.design.ama_study import resolve_ama_config
    from wheretolearn.design.labelling import Labeller
    from wheretolearn.design.operator_metatest import MetaTestDraws, make_operator_metatest

    cfg = resolve_ama_config({"problem": problem, "preset": preset, "num_threads": 1})
    extra = ({"offset_sd": cfg.offset_sd, "learn_spectrum": cfg.learn_spectrum}
             if problem == "darcy" else {})
    setup = ama_setup(problem, n=cfg.n, n_modes=cfg.n_modes, **extra)
    labeller = Labeller(setup.problem)
    measures, params = setup.family(cfg.n_measures, cfg.family_seed)
    metatest = make_operator_metatest(labeller, measures,
                                      MetaTestDraws(cfg.n_seen, cfg.n_unseen, cfg.family_seed),
                                      params=params, output_weights=setup.output_weights)
    return cfg, setup, labeller, metatest


def build_variant(variant: str, cfg, setup, seed: int):
    """The variant's model, its training config and architecture record, as the study
    builds them for ``cfg`` with the variant's model (its training overrides included)."""
    from wheretolearn.design.ama_study import _ama_config, _model_factory, resolve_ama_config

    model, extra = VARIANTS[variant]
    vcfg = resolve_ama_config({"problem": cfg.problem, "preset": cfg.preset,
                               "num_threads": 1, "model": model, **extra})
    factory, arch = _model_factory(vcfg, setup)
    return factory(seed), _ama_config(vcfg, setup, 0).train, arch


def train_for(model, x, y, tcfg, *, weights, seed: int, budget: float) -> dict:
    """Train ``model`` for about ``budget`` CPU seconds in one :func:`train_operator` call
    (so the learning-rate schedule, the held-out split and the best-weight restore are those
    of a normal run). The steps that fit come from two probe runs on copies of the model,
    ``k`` and ``3 k`` steps: their difference gives the seconds per step, free of the fixed
    cost of a call (first evaluation, normalisation statistics, warm-up), which is then
    charged to the budget too."""
    from wheretolearn.models import train_operator

    def probe(steps: int) -> float:
        c0 = time.process_time()
        train_operator(copy.deepcopy(model), x, y, config=dataclasses.replace(tcfg, steps=steps),
                       weights=weights, seed=seed)
        return time.process_time() - c0

    probe(PROBE_STEPS)                                     # warm-up (first calls of ops)
    t1, t3 = probe(PROBE_STEPS), probe(3 * PROBE_STEPS)
    per_step = max(t3 - t1, 1e-9) / (2 * PROBE_STEPS)
    fixed = max(t1 - PROBE_STEPS * per_step, 0.0)
    steps = max(1, int((budget - fixed) / per_step))
    w0, c0 = time.perf_counter(), time.process_time()
    res = train_operator(model, x, y, config=dataclasses.replace(tcfg, steps=steps),
                         weights=weights, seed=seed)
    return {"steps": res.steps, "cpu_seconds": time.process_time() - c0,
            "seconds": time.perf_counter() - w0, "best_val_loss": res.best_val_loss,
            "best_step": res.best_step, "probe_seconds_per_step": per_step,
            "probe_fixed_seconds": fixed}


def run(problem: str, preset: str, variants: list[str], budgets: list[float],
        seeds: int) -> list[dict]:
    from wheretolearn.measures import Mixture

    cfg, setup, labeller, metatest = study_pieces(problem, preset)
    source = Mixture(metatest.measures)                    # the guard's "mixture" source
    n = cfg.n_train
    records = []
    for r in range(seeds):
        data_seed = 50_000 + 97 * r + n                     # the guard's seeds (repeat r)
        x, y = labeller.label(source, n, data_seed)
        for variant in variants:
            for budget in budgets:
                model, tcfg, arch = build_variant(variant, cfg, setup, cfg.seed + 7 * r + 1)
                rec = train_for(model, x, y, tcfg, weights=setup.output_weights,
                                seed=data_seed, budget=budget)
                model.eval()
                rec.update(problem=problem, preset=preset, variant=variant, budget=budget,
                           seed=r, n_train=n, architecture=arch,
                           batch_size=tcfg.batch_size, lr=tcfg.lr,
                           unseen_error=metatest.error(model, split="unseen"),
                           seen_error=metatest.error(model, split="seen"),
                           parameters=sum(p.numel() * (2 if p.is_complex() else 1)
                                          for p in model.parameters()))
                records.append(rec)
                print(f"{variant:15s} budget {budget:5.0f} s seed {r}: unseen "
                      f"{rec['unseen_error']:.4f} seen {rec['seen_error']:.4f} "
                      f"({rec['steps']} steps, {rec['cpu_seconds']:.1f} s CPU, "
                      f"{rec['seconds']:.1f} s wall)", flush=True)
    return records


def table(records: list[dict]) -> tuple[list[dict], str]:
    """Rows (mean over seeds per variant and budget) and a markdown table."""
    variants = list(dict.fromkeys(r["variant"] for r in records))
    budgets = sorted({r["budget"] for r in records})
    rows = []
    for v in variants:
        for b in budgets:
            rs = [r for r in records if r["variant"] == v and r["budget"] == b]
            rows.append({"variant": v, "budget": b,
                         "unseen_error": [r["unseen_error"] for r in rs],
                         "unseen_error_mean": float(np.mean([r["unseen_error"] for r in rs])),
                         "steps_mean": float(np.mean([r["steps"] for r in rs])),
                         "cpu_seconds_mean": float(np.mean([r["cpu_seconds"] for r in rs])),
                         "parameters": rs[0]["parameters"]})
    head = "| model | parameters | " + " | ".join(
        f"{b:g} s: unseen error per seed (mean) | steps" for b in budgets) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(budgets))]
    for v in variants:
        cells = []
        for b in budgets:
            row = next(r for r in rows if r["variant"] == v and r["budget"] == b)
            per = " / ".join(f"{e:.4f}" for e in row["unseen_error"])
            cells += [f"{per} ({row['unseen_error_mean']:.4f})", f"{row['steps_mean']:.0f}"]
        params = next(r for r in rows if r["variant"] == v)["parameters"]
        lines.append(f"| {v} | {params} | " + " | ".join(cells) + " |")
    return rows, "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", default="darcy")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--models", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--budgets", nargs="+", type=float, default=[5.0, 60.0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    records = run(args.problem, args.preset, args.models, args.budgets, args.seeds)
    rows, md = table(records)
    print()
    print(md)
    import neuralop

    result = {"what": "operator models at equal CPU-time budgets, trained on the mixture of the "
                      "Q_j as the AMA guard trains a fresh model; relative OOD error on the "
                      "unseen meta-test samples",
              "problem": args.problem, "preset": args.preset, "budget_clock": "process CPU "
              "seconds, 1 torch thread", "torch_threads": 1, "load_average_start": load,
              "load_average_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
              "seconds_total": time.perf_counter() - t0,
              "torch": torch.__version__, "neuraloperator": neuralop.__version__,
              "python": platform.python_version(), "markdown": md, "rows": rows,
              "records": records}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
