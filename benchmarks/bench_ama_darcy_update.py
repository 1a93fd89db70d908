"""Unit costs of the Darcy AMA update after issue 21, and a projected ``paper`` repeat.

Times, at the ``small`` (n = 24, n_opt = 40) and ``paper`` (n = 64, n_opt = 200) sizes:

* ``adam_step_spectrum_s``: one evaluation of ``J`` and its gradient in the full vector
  ``theta = (m, log sigma, log tau, log alpha)``: ``n_opt`` solves of the KLE parts (the
  shift identity removes the mean), adjoint solves reusing the forward LU factors;
* ``adam_step_mean_only_s``: the same with the spectrum frozen (``--mean-only``): the KLE
  solves are cached once and ``G*(m + s eta + v) = exp(-m - s eta) G*(v)`` gives the truth
  and its derivative in ``m`` with no solve;
* ``train_step_s``: one DeepONet Adam step at the preset's batch;
* ``lipschitz_s_per_sample_iteration``: one power iteration of the solver on one sample.

The projection of one ``paper`` repeat adds ``(iterations + 1) x steps`` training steps, the
worst-case retraining, every Adam round run to its end, 4 guard fits per ``N`` and the
Lipschitz estimate (``(K + 1) x lipschitz_samples`` samples). One torch thread; wall and
CPU time on a shared machine (load average recorded).

Usage::

    python benchmarks/bench_ama_darcy_update.py [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from types import SimpleNamespace

import torch

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_ama_darcy_update.json"


def _timed(fn, repeats: int) -> dict:
    fn()
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    return {"wall_s": (time.perf_counter() - w0) / repeats,
            "cpu_s": (time.process_time() - c0) / repeats}


def unit_costs(preset: str, repeats: int = 3) -> dict:
    """Unit costs at one preset's sizes (see the module docstring)."""
    from wheretolearn.design.ama import AMAObjective
    from wheretolearn.design.ama_bound import LipschitzOptions, estimate_lipschitz
    from wheretolearn.design.ama_problems import ama_setup
    from wheretolearn.design.ama_study import AMA_PRESETS, _model_factory, resolve_ama_config
    from wheretolearn.models import relative_l2_loss

    p = AMA_PRESETS["darcy"][preset]
    cfg = resolve_ama_config({"problem": "darcy", "preset": preset})
    out = {"preset": preset, "n": p["n"], "n_opt": p["n_opt"], "batch_size": p["batch_size"]}
    for learn in (True, False):
        setup = ama_setup("darcy", n=p["n"], offset_sd=0.19, learn_spectrum=learn)
        model = _model_factory(cfg, setup)[0](0)
        measures, _ = setup.family(p["n_measures"], 0)
        theta = setup.theta0
        xi = setup.build(theta).sample_coefficients(p["n_opt"], torch.Generator().manual_seed(0))
        obj = AMAObjective(setup, SimpleNamespace(measures=measures), model, xi, 1.0, 1.0,
                           setup.g0_true_sq(), g0_model_sq=1.0)
        mask = torch.tensor(setup.mask)

        def adam_step():
            t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
            obj(torch.where(mask, t, t.detach())).value.backward()

        key = "adam_step_spectrum" if learn else "adam_step_mean_only"
        out[key] = _timed(adam_step, repeats)
    x = setup.build(theta).sample(p["batch_size"], generator=0).float()
    y = torch.randn(p["batch_size"], p["n"], p["n"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train_step():
        loss = relative_l2_loss(model(x), y, setup.output_weights)
        opt.zero_grad()
        loss.backward()
        opt.step()

    out["train_step"] = _timed(train_step, repeats)
    samples = x[:2].double()
    t0 = time.perf_counter()
    estimate_lipschitz(setup.problem, samples, input_weights=setup.input_weights.double(),
                       output_weights=setup.output_weights.double(),
                       options=LipschitzOptions(iterations=2, jvp="fd"))
    out["lipschitz_s_per_sample_iteration"] = (time.perf_counter() - t0) / 4
    return out


def project(unit: dict, p: dict, key: str, clock: str = "wall_s") -> dict:
    """Hours of one paper repeat (upper bounds: every Adam round and retrain round run);
    ``clock``: "wall_s" (this loaded machine) or "cpu_s" (about a quiet machine's wall)."""
    step = unit["train_step"][clock]
    it, a = p["iterations"], p["adam"]
    hours = {"training": (it + 1) * p["steps"] * step / 3600,
             "retraining_worst": it * p["retrain_rounds"] * p["retrain_steps"] * step / 3600,
             "update": it * a["steps"] * a["rounds"] * unit[key][clock] / 3600,
             "guard_fits": 4 * len(p["eval_n"]) * p["steps"] * step / 3600,
             "lipschitz": (p["n_measures"] + 1) * p["lipschitz_samples"]
             * p["lipschitz_iterations"] * unit["lipschitz_s_per_sample_iteration"] / 3600}
    hours["total_per_repeat"] = sum(hours.values())
    return hours


def main() -> None:
    from wheretolearn.design.ama_study import AMA_PRESETS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()
    rows = {preset: unit_costs(preset) for preset in ("small", "paper")}
    paper = AMA_PRESETS["darcy"]["paper"]
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "torch": torch.__version__, "threads": 1,
                          "load_average_at_start": load},
              "note": "shared 2-core machine, other jobs running; wall and CPU time both given",
              "units": rows,
              "paper_adam": paper["adam"],
              "paper_projection_hours": {
                  f"{name}_{clock.split('_')[0]}": project(rows["paper"], paper, key, clock)
                  for name, key in (("learned_spectrum", "adam_step_spectrum"),
                                    ("mean_only", "adam_step_mean_only"))
                  for clock in ("wall_s", "cpu_s")}}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
