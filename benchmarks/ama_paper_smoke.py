"""Smoke run of the ``paper`` AMA presets on this machine, and what a full run would cost.

The ``paper`` presets (SPEC §4 sizes: NtD on a 128 x 128 grid with N = 1000, Darcy on
64 x 64 with N = 200, the paper's DeepONets, 10 AMA iterations, 5000 Adam steps per
training) take hours on two CPU cores. This script runs each of them end to end --
meta-test family labelled at the paper's sizes, the paper's architecture, Lipschitz
estimates with the paper's sample counts, one AMA iteration, the baselines at the smallest
``eval_n``, figures and run folder -- with only the *counts* cut down (training steps,
iterations, repeats, update rounds), and records the cost of one unit of each part:

* ``train_s_per_step``: one Adam step at the paper's batch size (timed directly);
* ``update_s_per_unit``: one evaluation of J on the paper's ``n_opt`` draws (NtD,
  differential evolution) or one Adam step on theta, J and its gradient through model
  and adjoint solver (Darcy), timed directly;
* ``label_s``: labelling the meta-test family and one training set;
* ``lipschitz_s``: the two Lipschitz estimates (once per repeat).

From these it projects one paper repeat: ``(iterations + 1) x steps`` training steps (plus
retrain rounds, at most ``retrain_rounds x retrain_steps`` per iteration), the update
(Darcy: at most ``rounds x steps`` Adam steps per iteration; NtD: ``popsize x
(generations + 1)`` evaluations per iteration, stated for 100 generations since SciPy stops
on ``tol``), the baselines (3 sources x ``eval_n`` fits of ``steps`` steps). The projection is
a cost model, not a measurement of a full run.

Usage::

    python benchmarks/ama_paper_smoke.py [--problems ntd darcy] [--steps 20] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "ama_paper_smoke.json"


def smoke(problem: str, steps: int, device: str) -> dict:
    from wheretolearn.design.ama_study import AMA_PRESETS, resolve_ama_config, run_ama_study

    paper = AMA_PRESETS[problem]["paper"]
    cut = {"problem": problem, "preset": "paper", "repeats": 1, "iterations": 1,
           "steps": steps, "retrain_rounds": 0, "eval_n": [min(paper["eval_n"])],
           "device": device}
    if problem == "ntd":
        cut["de"] = {**paper["de"], "maxiter": 1}
    else:
        cut["adam"] = {**paper["adam"], "steps": 2, "rounds": 1}
    cfg = resolve_ama_config(cut)
    with tempfile.TemporaryDirectory() as tmp:
        w0, c0 = time.perf_counter(), time.process_time()
        s = run_ama_study(cfg, Path(tmp) / "run", progress=False).summary
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        figures = [f for f in s["figures"] if (Path(tmp) / "run" / f).exists()]
    h0, h1 = s["history"][0][0], s["history"][0][1]
    train_steps = h0["train_steps"] + h1["train_steps"]
    train_ms = 1e3 * (h0["seconds_train"] + h1["seconds_train"]) / train_steps
    return {"problem": problem, "grid": s["grid"], "architecture": s["architecture"],
            "n_train": paper["n_train"], "batch_size": paper["batch_size"],
            "cut": cut, "wall_s": wall, "cpu_s": cpu, "figures_written": len(figures),
            "ama_loss_monotone": s["ama_loss_monotone"], "ood_error": s["ood_error"],
            "lipschitz": {"true": s["lipschitz"]["true"][0]["value"],
                          "model": s["lipschitz"]["model"][0]["value"]},
            "smoke_train_ms_per_step_with_overheads": train_ms,
            "smoke_update_s": h1["seconds_update"], "label_s": s["seconds_labelling"],
            "lipschitz_s": h0["seconds_lipschitz"]}


def unit_costs(problem: str, device: str, repeats: int = 3) -> dict:
    """Seconds of one training step (paper batch) and one update unit, timed directly:
    NtD one J evaluation on ``n_opt`` fixed draws; Darcy one J evaluation with its gradient
    through model and adjoint solver (one Adam step on theta)."""
    from types import SimpleNamespace

    from wheretolearn.design.ama import AMAObjective
    from wheretolearn.design.ama_problems import ama_setup
    from wheretolearn.design.ama_study import (AMA_PRESETS, _model_factory,
                                               resolve_ama_config)
    from wheretolearn.models import relative_l2_loss

    paper = AMA_PRESETS[problem]["paper"]
    cfg = resolve_ama_config({"problem": problem, "preset": "paper", "device": device})
    setup = ama_setup(problem, n=cfg.n)
    model = _model_factory(cfg, setup)[0](0)
    g = torch.Generator().manual_seed(0)
    nu = setup.build(setup.theta0)
    x = nu.sample(paper["batch_size"], generator=g).float()
    y = torch.randn(paper["batch_size"], *setup.problem.output_shape, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    w = setup.output_weights.to(device)
    xd, yd = x.to(device), y.to(device)

    def step():
        loss = relative_l2_loss(model(xd), yd, w)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    train_s = (time.perf_counter() - t0) / repeats
    measures, _ = setup.family(paper["n_measures"], 0)
    xi = nu.sample_coefficients(paper["n_opt"], g)
    obj = AMAObjective(setup, SimpleNamespace(measures=measures), model, xi, 1.0, 1.0,
                       setup.g0_true_sq())
    t0 = time.perf_counter()
    for _ in range(repeats):
        if problem == "ntd":
            obj.value(setup.theta0)
        else:
            t = torch.tensor(setup.theta0, dtype=torch.float64, requires_grad=True)
            obj(t).value.backward()
    update_s = (time.perf_counter() - t0) / repeats
    return {"train_s_per_step": train_s, "update_s_per_unit": update_s,
            "update_unit": "J evaluation" if problem == "ntd" else "J + gradient (Adam step)",
            "batch_size": paper["batch_size"], "n_opt": paper["n_opt"]}


def project(row: dict, paper: dict, de_generations: int = 100) -> dict:
    """Hours for one repeat of the full paper preset from the smoke's unit costs."""
    it = paper["iterations"]
    unit = row["unit_costs"]
    step_s = unit["train_s_per_step"]
    train = (it + 1) * paper["steps"] * step_s
    retrain = it * paper["retrain_rounds"] * paper["retrain_steps"] * step_s
    fits = 3 * len(paper["eval_n"]) * paper["steps"] * step_s      # batch <= N: an upper bound
    if row["problem"] == "ntd":
        de = paper["de"]
        update = it * de["popsize"] * (de_generations + 1) * unit["update_s_per_unit"]
        note = f"differential evolution: {de_generations} generations assumed per iteration"
    else:
        a = paper["adam"]
        update = it * a["steps"] * a["rounds"] * unit["update_s_per_unit"]
        note = "Adam: every round run to its end (an upper bound)"
    hours = {"training": train / 3600, "retraining_worst": retrain / 3600,
             "update": update / 3600, "baselines": fits / 3600,
             "lipschitz": row["lipschitz_s"] / 3600}
    hours["total_per_repeat"] = sum(hours.values())
    hours["repeats"] = paper["repeats"]
    hours["total_all_repeats"] = hours["total_per_repeat"] * paper["repeats"]
    hours["note"] = note
    return hours


def main() -> None:
    from wheretolearn.design.ama_study import AMA_PRESETS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", nargs="+", default=["ntd", "darcy"])
    ap.add_argument("--steps", type=int, default=20, help="training steps per fit in the smoke")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for p in args.problems:
        row = smoke(p, args.steps, args.device)
        row["unit_costs"] = unit_costs(p, args.device)
        row["projection_hours"] = project(row, AMA_PRESETS[p]["paper"])
        rows.append(row)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "torch": torch.__version__, "threads": torch.get_num_threads(),
                          "device": args.device, "load_average_at_start": os.getloadavg()},
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'problem':8} {'grid':>5} {'smoke s':>8} {'step ms':>8} {'update unit s':>14} "
          f"{'label s':>8} {'lip s':>7} {'paper h/repeat':>15} {'h all repeats':>14}")
    for r in rows:
        h, u = r["projection_hours"], r["unit_costs"]
        print(f"{r['problem']:8} {r['grid']:>5} {r['wall_s']:8.1f} "
              f"{1e3 * u['train_s_per_step']:8.1f} {u['update_s_per_unit']:14.2f} "
              f"{r['label_s']:8.1f} {r['lipschitz_s']:7.1f} {h['total_per_repeat']:15.2f} "
              f"{h['total_all_repeats']:14.1f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
