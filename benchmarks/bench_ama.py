"""Time per AMA iteration of each ``small`` study, split into labelling, training,
Lipschitz estimation and the distribution update; and one DeepONet training step at the
Darcy ``small`` and ``paper`` sizes, measured side by side (SPEC §4).

The studies run in this process, one after the other, with 1 torch thread. Wall time on a
shared machine is noisy: the script records CPU time next to wall time (for one thread CPU
time approximates the wall time on a quiet machine) and the load average at the start.

Usage::

    python benchmarks/bench_ama.py [--problems ntd darcy] [--repeats 1] [--out PATH]
    python benchmarks/bench_ama.py --from-results   # time split of the committed README runs
    python benchmarks/bench_ama.py --problems burgers --from-results   # + Burgers unit costs

With ``burgers`` among the problems the script also measures the Burgers update's unit costs
(one J evaluation with its exact gradient at the small size; one solve and one solve plus
adjoint per sample at the paper's 8192 points and 2000 steps) and, from the results file, the
active-learning comparison's seconds per trial of each method.

With ``radiative`` among the problems the script also measures the particle update's unit
costs per particle (radiative solve, its adjoint, the DeepONet forward and backward, and
the exact OT of W2 against each ``Q_k``, next to one whole ``J`` with its first-variation
gradient) at the ``small`` and ``paper`` sizes; ``--from-results`` reads the per-iteration
split (labelling, training, update) of every ``ama_small_radiative_eps*.json``.

``--from-results`` does not rerun the studies: it reads the per-iteration timings recorded by
``benchmarks/ama_results.py run`` in ``benchmarks/results/ama_small_<problem>.json`` (same
preset, measured in those runs) and measures only the training steps.
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

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_ama.json"


def training_step(n: int, branch_hidden: list[int], trunk_hidden: list[int], p: int,
                  batch: int, steps: int = 20) -> dict:
    """Seconds per Adam step of a DeepONet on an n x n Darcy grid (wall and CPU)."""
    from wheretolearn.design.ama_problems import ama_setup
    from wheretolearn.models import DeepONet, relative_l2_loss

    s = ama_setup("darcy", n=n)
    model = DeepONet([n * n, *branch_hidden, p], [2, *trunk_hidden, p], s.points,
                     output_shape=(n, n), seed=0)
    x = torch.randn(batch, n, n)
    y = torch.randn(batch, n, n)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    w = s.output_weights

    def step():
        loss = relative_l2_loss(model(x), y, w)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return {"n": n, "branch": [n * n, *branch_hidden, p], "trunk": [2, *trunk_hidden, p],
            "batch": batch, "steps": steps,
            "wall_ms_per_step": 1e3 * (time.perf_counter() - w0) / steps,
            "cpu_ms_per_step": 1e3 * (time.process_time() - c0) / steps}


def study_timing(problem: str, repeats: int) -> dict:
    from wheretolearn.design.ama_study import resolve_ama_config, run_ama_study

    cfg = resolve_ama_config({"problem": problem, "preset": "small", "repeats": repeats,
                              "num_threads": 1})
    with tempfile.TemporaryDirectory() as tmp:
        w0, c0 = time.perf_counter(), time.process_time()
        summary = run_ama_study(cfg, Path(tmp) / "run", progress=False).summary
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    hist = [rec for h in summary["history"] for rec in h[1:]]
    keys = ("seconds_label", "seconds_train", "seconds_update")
    per_iter = {k.removeprefix("seconds_"): sum(r[k] for r in hist) / len(hist) for k in keys}
    per_iter["lipschitz (once per run)"] = summary["timing_per_iteration"]["seconds_lipschitz"]
    per_iter["initial training (iteration 0)"] = \
        summary["timing_per_iteration"]["seconds_initial_train"]
    return {"problem": problem, "preset": "small", "repeats": repeats,
            "iterations": summary["iterations"], "seconds_per_iteration": per_iter,
            "study_wall_s": wall, "study_cpu_s": cpu,
            "ood_error": summary["ood_error"], "ama_loss_monotone": summary["ama_loss_monotone"]}


def burgers_unit_costs() -> dict:
    """Seconds of one ``J`` evaluation with its gradient (small preset: n = 128, n_opt = 100,
    DeepONet ``small``) and of the solver per sample at the paper size (forward alone and
    forward + discrete adjoint, 4 samples)."""
    from wheretolearn.design.ama import AMAObjective
    from wheretolearn.design.ama_problems import ama_setup
    from wheretolearn.design.ama_study import _model_factory, resolve_ama_config
    from wheretolearn.design.labelling import Labeller

    cfg = resolve_ama_config({"problem": "burgers", "preset": "small"})
    setup = ama_setup("burgers", n=cfg.n, n_pool=cfg.n_pool)
    mt = setup.metatest(Labeller(setup.problem), n_seen=cfg.n_seen, n_unseen=cfg.n_unseen,
                        seed=0, output_weights=setup.output_weights)
    model = _model_factory(cfg, setup)[0](0)
    nu = setup.build(setup.theta0)
    xi = nu.sample_coefficients(cfg.n_opt, torch.Generator().manual_seed(0))
    obj = AMAObjective(setup, mt, model, xi, 2.0, 2.0, setup.g0_true_sq(), 0.1)
    theta = torch.tensor(setup.theta0, dtype=torch.float64, requires_grad=True)
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(3):
        obj(theta).value.backward()
    j_grad = {"wall_s": (time.perf_counter() - w0) / 3, "cpu_s": (time.process_time() - c0) / 3}
    big = ama_setup("burgers", n=8192, n_pool=2)
    u = big.build(big.theta0).sample(4, generator=0)
    w0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        big.problem(u)
    fwd = {"wall_s": (time.perf_counter() - w0) / 4, "cpu_s": (time.process_time() - c0) / 4}
    x = u.clone().requires_grad_(True)
    w0, c0 = time.perf_counter(), time.process_time()
    (big.problem(x) ** 2).sum().backward()
    both = {"wall_s": (time.perf_counter() - w0) / 4, "cpu_s": (time.process_time() - c0) / 4}
    return {"j_and_gradient_small": {"n": cfg.n, "n_opt": cfg.n_opt, **j_grad},
            "paper_solve_per_sample": {"n": 8192, "n_steps": big.problem.n_steps, **fwd},
            "paper_solve_and_adjoint_per_sample": {"n": 8192, **both},
            "paper_j_gradient_projection_s": both["wall_s"] * 1843,
            "note": "paper projection: one J gradient solves and differentiates the 1843 "
                    "fixed draws (n_opt = N = 1843), model cost excluded"}


def _seconds(fn, repeats: int = 3) -> dict:
    """Mean wall and CPU seconds of ``fn()`` over ``repeats`` calls."""
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    return {"wall_s": (time.perf_counter() - w0) / repeats,
            "cpu_s": (time.process_time() - c0) / repeats}


def radiative_unit_costs(knudsen: float = 0.125) -> dict:
    """Per-particle costs of one step of the particle gradient flow (mixture start, so the
    fields are those of the Q_k), at the ``small`` and ``paper`` sizes: solve, adjoint,
    model forward + backward, W2 by ``ot.emd`` (all K), and one whole ``J`` with its
    first-variation gradient (what the flow pays per accepted step)."""
    from types import SimpleNamespace

    from wheretolearn.design.ama import AMAObjective
    from wheretolearn.design.ama_particles import first_variation_gradient
    from wheretolearn.design.ama_problems import ama_setup
    from wheretolearn.design.ama_study import _model_factory, resolve_ama_config

    out = {}
    for preset in ("small", "paper"):
        cfg = resolve_ama_config({"problem": "radiative", "preset": preset, "knudsen": knudsen})
        setup = ama_setup("radiative", n=cfg.n, n_modes=cfg.n_modes, knudsen=knudsen,
                          particle_start="mixture", n_particles=cfg.n_train)
        measures, _ = setup.family(cfg.n_measures, 0)
        mt = SimpleNamespace(measures=measures)
        theta = setup.initial_theta(mt)
        model = _model_factory(cfg, setup)[0](0)
        obj = AMAObjective(setup, mt, model, None, 1.0, 1.0, setup.g0_true_sq(), 0.01)
        nu = setup.build(theta)
        a = nu.fields().detach()
        m = a.shape[0]

        def solve():
            with torch.no_grad():
                setup.problem(a)

        def solve_adjoint():
            x = a.clone().requires_grad_(True)
            setup.problem(x).sum().backward()

        def model_fb():
            x = a.clone().requires_grad_(True)
            model(x).double().sum().backward()

        def w2():
            c = theta.clone().requires_grad_(True)
            nu_c = setup.build(c)
            torch.stack([nu_c.w2_squared_to(q) for q in measures]).sum().backward()

        def j_grad():
            c = theta.clone().requires_grad_(True)
            first_variation_gradient(obj(c), c)

        w2()                                         # draws the fixed samples of every Q_k
        costs = {"solve": _seconds(solve, 2), "solve_and_adjoint": _seconds(solve_adjoint, 2),
                 "model_forward_backward": _seconds(model_fb, 3),
                 "w2_all_q_emd_and_gradient": _seconds(w2, 3),
                 "j_and_gradient": _seconds(j_grad, 2)}
        out[preset] = {"n": cfg.n, "n_modes": cfg.n_modes, "particles": m,
                       "w2_samples_per_q": m, "n_q": len(measures), "knudsen": knudsen,
                       "per_particle_ms": {k: {kk: 1e3 * v / m for kk, v in c.items()}
                                           for k, c in costs.items()},
                       "per_step_s": costs}
    out["note"] = ("one accepted flow step costs j_and_gradient (M solves, M adjoints, the "
                   "model, K exact OT problems of size M x M); a rejected step costs the "
                   "forward part only")
    return out


def _radiative_results() -> list[dict]:
    """The per-iteration split of every stored radiative study (each start)."""
    rows = []
    for path in sorted(DEFAULT_OUT.parent.glob("ama_small_radiative_eps*.json")):
        s = json.loads(path.read_text())
        for start, st in (s.get("starts") or {s["particle_start"]: s}).items():
            t = st["timing_per_iteration"]
            rows.append({"problem": "radiative", "knudsen": s["knudsen"], "start": start,
                         "source": path.name, "repeats": s["repeats"],
                         "iterations": s["iterations"],
                         "seconds_per_iteration": {
                             "label": t["seconds_label"], "train": t["seconds_train"],
                             "update": t["seconds_update"],
                             "lipschitz (once per run)": t["seconds_lipschitz"],
                             "initial training (iteration 0)": t["seconds_initial_train"]},
                         "gradient_flow_seconds_per_particle_per_step":
                             st.get("seconds_per_particle_gradient"),
                         "start_wall_s": st.get("seconds_start"),
                         "start_cpu_s": st.get("cpu_seconds_start")})
    return rows


def from_results(problem: str) -> dict:
    path = DEFAULT_OUT.parent / f"ama_small_{problem}.json"
    s = json.loads(path.read_text())
    t = s["timing_per_iteration"]
    per_iter = {"label": t["seconds_label"], "train": t["seconds_train"],
                "update": t["seconds_update"], "lipschitz (once per run)": t["seconds_lipschitz"],
                "initial training (iteration 0)": t["seconds_initial_train"]}
    out = {"problem": problem, "preset": "small", "repeats": s["repeats"],
           "iterations": s["iterations"], "seconds_per_iteration": per_iter,
           "study_wall_s": s["seconds"], "source": path.name,
           "ood_error": s["ood_error"], "ama_loss_monotone": s["ama_loss_monotone"]}
    if s.get("compare", {}).get("seconds"):
        t = s["compare"]
        out["active_learning_seconds_per_trial"] = {k: v / t["trials"]
                                                    for k, v in t["seconds"].items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", nargs="+", default=["ntd", "darcy"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--from-results", action="store_true",
                    help="take the study timings from benchmarks/results/ama_small_*.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "torch": torch.__version__, "threads": 1,
                          "load_average_at_start": os.getloadavg()},
              "note": "shared 2-core machine, other jobs running; wall and CPU time both given",
              "training_step": {
                  "darcy_small": training_step(24, [128, 128], [128, 128], 64, batch=100),
                  "darcy_paper": training_step(64, [256, 256, 128], [128, 128, 128], 200,
                                               batch=200, steps=10)},
              "studies": [from_results(p) if args.from_results else study_timing(p, args.repeats)
                          for p in args.problems if p != "radiative"]}
    if "burgers" in args.problems:
        result["burgers_units"] = burgers_unit_costs()
    if "radiative" in args.problems:
        result["studies"] += (_radiative_results() if args.from_results
                              else [study_timing("radiative", args.repeats)])
        result["radiative_units"] = radiative_unit_costs()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
